"""The report's interpretation, on hand-computed tables: best values per row, why values are n/a and panels black,
the generated comparison with the paper."""

import numpy as np
import torch

from captum_mm.study.notes import PAPER_AUC, best_columns, direction_caption, missing_sizes, paper_comparison, vanished_panels
from captum_mm.study.report import html_report, table

AUC = table({"Neg. img": {"ours": 70.004, "rollout": 70.0, "Grad-CAM": 60.0},
             "Pos. img": {"ours": 40.0, "rollout": 30.0, "Grad-CAM": 50.0},
             "Neg. text": {"ours": 55.0, "rollout": 50.0, "Grad-CAM": 45.0},
             "Pos. text": {"ours": 20.0, "rollout": 25.0, "Grad-CAM": 20.0}},
            ["ours", "rollout", "Grad-CAM"], "m: AUC", "m_auc",
            {"Neg. img": "higher", "Pos. img": "lower", "Neg. text": "higher", "Pos. text": "lower"})


def test_the_best_value_of_a_row_is_its_highest_or_lowest_as_shown_ties_all_best_and_na_never():
    assert best_columns({"a": 1.004, "b": 1.0, "c": 0.5}, "higher") == ["a", "b"]  # both shown as 1.00
    assert best_columns({"a": 1.004, "b": 1.0, "c": 0.5}, "lower") == ["c"]
    assert best_columns({"a": -1.0, "b": 0.0}, "lower") == ["b"] and best_columns({"a": -1.0}, "higher") == []
    assert direction_caption({"x": "higher", "y": "lower", "z": "higher"}) == (
        "Bold: the best value in each row (ties all bold); higher is better for x, z; lower is better for y.")


def test_the_html_table_bolds_each_rows_best_and_names_its_csv_and_direction():
    page = html_report({"m": {"tables": [AUC], "figures": {}}}, {"seed": "0"})
    assert page.count("<td class='best'>") == 6  # two tied on Neg. img and on Pos. text, one on each other row
    assert "<td class='best'><b>30.00</b></td>" in page and "<td>50.00</td>" in page
    assert "lower is better for Pos. img, Pos. text. CSV: m_auc.csv" in page


def test_black_panels_are_named_with_where_and_why():
    text = torch.zeros(2, 3)
    relevance = {"ours": (text, torch.tensor([[1.0, 0.0], [0.0, 2.0]])),
                 "Grad-CAM": (text, torch.tensor([[0.0, 0.0], [1.0, 0.0]])),
                 "odd": (text, torch.tensor([[-1.0, 0.0], [-2.0, 0.0]]))}
    note = vanished_panels(relevance)
    assert note.startswith("Black panels (no positive image relevance): Grad-CAM (column 1): Grad-CAM keeps the positive")
    assert note.endswith("; odd (every column): the reason is not diagnosed.") and "ours" not in note
    assert vanished_panels({"ours": relevance["ours"]}) == ""


def test_na_rows_are_explained_by_the_objects_sizes():
    note = missing_sizes([100.0, 2000.0, 5000.0], ["AP_large", "AR_large"])
    assert note.startswith("n/a (AP_large, AR_large): pycocotools scores -1")
    assert "1 small (< 32² px), 2 medium (32² to 96² px) and 0 large" in note
    assert note.endswith("the largest covers 5000 px².") and missing_sizes([100.0], []) == ""


def test_the_comparison_with_the_paper_is_generated_from_the_table():
    assert paper_comparison("lxmert-easyvqa", AUC) == (
        f"The paper (LXMERT pretrained on VQA, supplementary Table 3) finds ours best of {len(PAPER_AUC)} methods in 4 of 4 "
        "settings. Here ours is best in 3 of 4: Neg. img 70.00 (rank 1 of 3, tied with 1 other, paper 63.24); Pos. img 40.00 "
        "(rank 2 of 3, best rollout 30.00, paper 51.10); Neg. text 55.00 (rank 1 of 3, paper 48.70); Pos. text 20.00 "
        "(rank 1 of 3, tied with 1 other, paper 21.61).")
    assert "(it reports no numbers for other-model). Here" in paper_comparison("other-model", AUC)
    assert paper_comparison("m", table(AUC["rows"], ["rollout"], "t", "n", AUC["better"])) == ""
    text_only = {"Neg. text": {"ours": 1.0}, "Pos. text": {"ours": 2.0}}
    assert paper_comparison("bert-x", table(text_only, ["ours"], "t", "n", {"Neg. text": "higher", "Pos. text": "lower"})) == (
        "The paper reports no study of bert-x's kind (a text-only model); its tables above have no paper counterpart.")
    rows = {row: {"ours": 10.0, "x": 5.0} for row in ("AP", "AP_medium", "AR", "AR_medium")}
    rows.update({row: {"ours": -1.0, "x": -1.0} for row in ("AP_large", "AR_large")})
    detr = paper_comparison("detr", table(rows, ["ours", "x"], "detr: segmentation", "d", {r: "higher" for r in rows}))
    assert detr.startswith("The paper (DETR pretrained on COCO, supplementary Table 1, ours): AP 13.1, AP_medium 14.4, ")
    assert detr.endswith("Here (segmentation), ours: AP 10.00 (rank 1 of 2); AP_medium 10.00 (rank 1 of 2); AP_large n/a; "
                         "AR 10.00 (rank 1 of 2); AR_medium 10.00 (rank 1 of 2); AR_large n/a.")


def test_a_detection_duplicates_an_earlier_one_of_its_class_whose_box_it_overlaps():
    from captum_mm.study.detr import duplicates

    # centre x, centre y, width, height: 0 and 1 overlap by IoU 0.81 / 1.0 = 0.81, 2 is 1's class elsewhere, 3 is 0's
    # box in another class; 4 overlaps 0 by IoU 0.03 / 0.05 = 0.6, under the 0.7 limit
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.18, 0.18], [0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2],
                          [0.55, 0.5, 0.2, 0.2]])
    assert duplicates(boxes, [1, 1, 1, 2, 1]) == [None, 0, None, None, None]
    assert duplicates(boxes, [1, 1, 1, 2, 1], overlap=0.3) == [None, 0, None, None, 0]


def test_the_masks_figure_has_two_rows_per_method_and_a_column_per_detection():
    from captum_mm.visualization import methods_masks_figure

    image = np.zeros((16, 16, 3), np.uint8)
    maps, masks = [np.random.rand(4, 4)] * 3, [np.ones((16, 16), bool)] * 3
    figure = methods_masks_figure(image, {"ours": (maps, masks), "rollout": (maps, masks)}, ["a", "b", "c (duplicate)"])
    panels = figure.axes[:12]
    assert [axis.get_ylabel() for axis in panels[::3]] == ["ours\nrelevance", "ours\nmask (Algorithm 1)",
                                                           "rollout\nrelevance", "rollout\nmask (Algorithm 1)"]
    assert [axis.get_title() for axis in panels[:3]] == ["a", "b", "c (duplicate)"] and len(figure.axes) == 14
