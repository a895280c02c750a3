"""The main job runs end to end on a tiny sample and writes every output file."""

import html
import json
import re

import pytest

from captum_mm.cli import main
from captum_mm.study import CAPTIONS, Options
from captum_mm.study.notes import best_columns, number
from captum_mm.zoo.recipes import recipe


def test_reproduce_writes_every_output(tmp_path, capsys):
    output = tmp_path / "study"
    main(["reproduce", "--output", str(output), "--samples", "4", "--images", "2", "--gallery", "2",
          "--methods", "ours", "rollout", "without-aggregation", "ours-without-sinks", "lig-captum", "--threads", "1"])
    captured = capsys.readouterr()
    printed = captured.out
    assert "AUC of every method" in printed and "segmentation, IoU 0.20:0.05:0.95" in printed
    assert "torch threads: 1 (as asked)" in printed and "Loading weights" not in captured.err
    steps = [line for line in printed.splitlines() if line.startswith("Step ")]
    assert steps == [
        "Step 1 of 5: lxmert-easyvqa: perturbation tests, plausibility, gallery",
        "Step 2 of 5: visualbert-easyvqa: perturbation tests, plausibility, gallery",
        "Step 3 of 5: detr-shapes: weakly-supervised segmentation, mask figures",
        "Step 4 of 5: llava-easyvqa: perturbation tests on generated answers, plausibility, gallery",
        "Step 5 of 5: bert-reviews: perturbation tests on text tokens, plausibility against evidence keywords, heat maps",
    ]
    for name in ("report.html", "results.json"):
        assert (output / name).stat().st_size > 0
    tables = json.loads((output / "results.json").read_text())["tables"]
    assert len(tables) == 17  # LXMERT, VisualBERT, BERT: methods, ablations, plausibility, infidelity; the VLM the first three; DETR two
    names = [f"{model}_{test}" for model in ("lxmert", "visualbert") for test in ("auc", "ablations_auc", "plausibility", "infidelity")]
    names[8:] = ["detr_segmentation_iou50", "detr_segmentation_iou20", "llava_auc", "llava_ablations_auc", "llava_plausibility",
                 "bert_auc", "bert_ablations_auc", "bert_plausibility", "bert_infidelity"]
    assert [table["name"] for table in tables] == names and not list(output.glob("table_*.csv"))
    for table in tables:
        assert (output / f"{table['name']}.csv").read_text().startswith("setting,ours,")
    for model in ("lxmert-easyvqa", "visualbert-easyvqa", "llava-easyvqa"):
        for name in ("results.json", "curves.png", "gallery.png"):
            assert (output / model / name).stat().st_size > 0
    for name in ("results.json", "curves.png", "heatmaps.png"):
        assert (output / "bert-reviews" / name).stat().st_size > 0
    assert len(list((output / "detr-shapes").glob("masks_*.png"))) == 1 and (output / "detr-shapes" / "segmentation.json").exists()
    report = (output / "report.html").read_text()
    assert report.count("<img src='data:image/png;base64,") == 9  # curves, gallery x3; masks; curves, heat maps
    assert report.count("<figcaption>") == 10 and report.count('<div class="cmm-view"') == 1  # the VLM's one gallery question, interactive
    assert "img{max-width:100%;height:auto}" in report
    for caption in CAPTIONS.values():
        assert html.escape(caption) in report
    for setting in ("<th>captum_mm</th><td>0.1.0</td>", "<th>seed</th><td>0</td>", "<th>threads</th><td>1 torch threads</td>",
                    "<th>methods</th><td>ours, rollout, w/o aggregation, ours w/o sinks, LIG (Captum)</td>", "4 easy-VQA test questions per VQA model (1 for the generative VLM, whose every perturbed forward generates), 2 in the gallery",
                    "2 scenes from the synthetic shapes", "<th>reviews</th><td>4 synthetic review test sentences", "<th>run time</th><td>", "<th>date</th><td>20"):
        assert setting in report
    _check_interpretation(report, tables)
    _check_faithfulness(report, tables)
    main(["reproduce", "--output", str(output), "--models", "detr-shapes", "--images", "3", "--methods", "ours", "--threads", "1"])
    assert len(json.loads((output / "scenes" / "val.json").read_text())["images"]) == 3  # not the 2 written before


def _check_interpretation(report, tables):
    """Each row's best values bold, every n/a and black panel explained, the comparisons' numbers the tables'."""
    bold = sum(len(best_columns(values, table["better"][row])) for table in tables for row, values in table["rows"].items())
    assert report.count("<td class='best'><b>") == bold > len(tables)
    assert "higher is better for Neg. img, Neg. text; lower is better for Pos. img, Pos. text." in report
    assert report.count("CSV: ") == len(tables) and "CSV: lxmert_auc.csv" in report
    with_na = [table for table in tables if any(v < 0 for values in table["rows"].values() for v in values.values())]
    assert len(with_na) == 2 and report.count("n/a (AP_large, AR_large): pycocotools scores -1") == 2  # no large shapes
    assert "0 large (&gt; 96² px) objects" in report
    lxmert = report.split("<h2>lxmert-easyvqa</h2>")[1].split("<h2>")[0]
    assert "w/o aggregation (every column): without aggregation, Eq. 11" in lxmert  # collapses on the shipped LXMERT
    for model, table in (("lxmert-easyvqa", tables[0]), ("visualbert-easyvqa", tables[4]), ("detr-shapes", tables[8]),
                         ("llava-easyvqa", tables[10])):
        section = report.split(f"<h2>{model}</h2>")[1].split("<h2>")[0]
        comparison = html.unescape(re.search(r"<p class='comparison'>(.*?)</p>", section).group(1))
        quoted = dict(re.findall(r"(\w[\w. ]*?) (\d+\.\d\d|n/a)(?: \(rank|;|\.$)", comparison.split("Here")[1]))
        assert quoted == {row: number(values["ours"]) for row, values in table["rows"].items()}
    assert "The paper reports no study of bert-reviews" in report.split("<h2>bert-reviews</h2>")[1]


def _check_faithfulness(report, tables):
    """The new methods in the compared tables (not DETR's, as its note says), each model's winners and sinks' effect."""
    for table in tables:
        compared = not table["name"].startswith("detr") and "ablations" not in table["name"]
        assert ("LIG (Captum)" in table["columns"]) == compared
    assert report.count("Not run on DETR: ours w/o sinks, LIG (Captum)") == 2
    assert report.count("Which method to trust (the best value of each of 8 tests") == 2  # the VQA models: 4 + 2 + 2
    assert report.count("Which method to trust (the best value of each of 6 tests") == 2  # the VLM (no infidelity) and BERT: 2 + 3 + 1
    assert report.count("Attention sinks left out") == 4 and "Infidelity is not computed here" in report


def test_reproduce_takes_a_users_checkpoints_and_coco_data(tmp_path, capsys):
    from helpers import detr
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    from captum_mm import zoo
    from captum_mm.datasets import write_shapes_coco

    zoo.load("lxmert-easyvqa").save_pretrained(tmp_path / "lxmert")
    detr(num_queries=4).save_pretrained(tmp_path / "detr")
    DetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(tmp_path / "detr")
    annotations = write_shapes_coco(tmp_path / "scenes", 2, seed=3, size=64)
    output = tmp_path / "study"
    main(["reproduce", "--output", str(output), "--models", "lxmert-easyvqa", "detr-shapes", "--samples", "2",
          "--gallery", "1", "--methods", "ours", "--checkpoint", f"lxmert-easyvqa={tmp_path / 'lxmert'}",
          "--checkpoint", f"detr-shapes={tmp_path / 'detr'}", "--images-dir", str(tmp_path / "scenes" / "val"),
          "--annotations", str(annotations), "--threads", "1"])
    assert "lxmert-easyvqa: AUC of every method" in capsys.readouterr().out
    assert not (output / "scenes").exists()  # the given scenes were used, not generated ones
    assert list(json.loads((output / "detr-shapes" / "segmentation.json").read_text())) == ["ours", "ours (reference Eq. 8-9)"]


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(models=["gpt"]), r"Unknown models \['gpt'\]; the main job runs lxmert-easyvqa"),
        (dict(models=["detr-shapes"], checkpoints={"lxmert-easyvqa": "x"}), r"Checkpoints given for \['lxmert-easyvqa'\]"),
        (dict(images_dir="val"), "Give both images_dir and annotations"),
        (dict(samples=-5), "samples, images and gallery must be positive counts"),
        (dict(models=["lxmert-easyvqa"], images_dir="val", annotations="val.json"), "detr-shapes is not run"),
        (dict(methods=["ours", "lrp"]), r"Unknown methods \['lrp'\]"),
    ],
)
def test_reproduce_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        Options(**options)


def test_a_checkpoint_that_does_not_fit_easy_vqa_is_refused(tmp_path):
    from helpers import lxmert, visual_bert

    visual_bert().save_pretrained(tmp_path / "visual_bert")
    lxmert().save_pretrained(tmp_path / "lxmert")
    with pytest.raises(ValueError, match="is a 'visual_bert' model; expected 'lxmert'"):
        recipe("lxmert-easyvqa").load(str(tmp_path / "visual_bert"))
    with pytest.raises(ValueError, match=r"does not fit captum_mm.datasets.easy_vqa: answers \d+ \(expected 13\); region feature size"):
        recipe("lxmert-easyvqa").load(str(tmp_path / "lxmert"))


def test_the_old_path_of_the_main_job_still_works_and_says_where_it_moved():
    import importlib
    import sys

    import captum_mm.study

    sys.modules.pop("captum_mm.reproduce", None)
    with pytest.warns(FutureWarning, match="captum_mm.reproduce moved to captum_mm.study: import from there"):
        old = importlib.import_module("captum_mm.reproduce")
    assert (old.Options, old.reproduce, old.CAPTIONS) == (captum_mm.study.Options, captum_mm.study.reproduce, CAPTIONS)
