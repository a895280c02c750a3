"""The main job's text classifier step: plausibility scores by hand, the step on a small random BERT, its heat maps."""

import pytest
import torch
from matplotlib.colors import to_rgba

from captum_mm.attr.catalog import select_methods
from captum_mm.study import Options
from captum_mm.study.notes import vanished_panels
from captum_mm.study.text import TEXT_STEPS, evidence_scores, text_study
from captum_mm.visualization import text_heatmaps
from captum_mm.zoo.recipes import recipe
from captum_mm.zoo.train_bert import bert_model


def test_evidence_scores_by_hand():
    relevance = torch.tensor([[9.0, 3.0, 1.0, -2.0, 0.0, 5.0],   # [CLS] and [SEP] (9, 5) are not words
                              [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],    # no positive relevance: points nowhere
                              [0.0, 1.0, 2.0, 2.0, 0.0, 0.0]], dtype=torch.float64)  # a tie: the earlier first
    words = torch.tensor([[False, True, True, True, True, False]] * 3)
    evidence = torch.tensor([[False, False, True, True, False, False],
                             [False, True, False, False, False, False],
                             [False, False, False, True, False, False]])
    scores = evidence_scores(relevance, evidence, words)
    # row 0: positive word relevance 3 + 1 = 4, 1 of it on evidence; the top word (3) is no evidence; of the top 2
    # words (3, 1) one is evidence of positive relevance; row 2: 2 of 5 on evidence, top word index 2 (tie, earlier)
    assert scores == [(0.25, 0.0, 0.5), (0.0, 0.0, 0.0), (0.4, 0.0, 0.0)]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    bert_model().save_pretrained(folder)
    return str(folder)


def test_the_step_runs_every_method_it_is_given(small_checkpoint, tmp_path):
    names = ["ours", "AttnLRP", "w/o norm."]
    options = Options(output=tmp_path, models=["bert-reviews"], methods=names, samples=5, gallery=2, progress=False,
                      checkpoints={"bert-reviews": small_checkpoint})
    study = text_study(recipe("bert-reviews"), options, select_methods(names))
    tables = study["tables"]
    assert [t["name"] for t in tables] == ["bert_auc", "bert_ablations_auc", "bert_plausibility", "bert_infidelity"]
    assert [t["columns"] for t in tables] == [["ours", "AttnLRP"], ["ours", "w/o norm."], names, names]
    assert list(tables[2]["rows"]) == ["on evidence %", "pointing %", "top-k precision %"]
    assert list(tables[3]["rows"]) == ["text infid."] and study["summary"][0].startswith("Which method to trust")
    methods = study["numbers"]["methods"]
    for label, setting in (("Neg. text", "negative text"), ("Pos. text", "positive text")):
        assert tables[0]["rows"][label]["AttnLRP"] == methods["AttnLRP"][setting]["auc"]
        assert tables[1]["rows"][label]["w/o norm."] == methods["w/o norm."][setting]["auc"]
    assert study["numbers"]["steps"]["positive text"] == list(TEXT_STEPS)
    assert all(0 <= v <= 100 for t in tables for row in t["rows"].values() for v in row.values())
    assert list(study["figures"]) == ["curves", "heatmaps"] and "heatmaps" in study["notes"]
    for name in ("results.json", "curves.png", "heatmaps.png"):
        assert (tmp_path / "bert-reviews" / name).stat().st_size > 0


def test_a_checkpoint_that_does_not_fit_the_reviews_is_refused(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    BertForSequenceClassification(BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=8, num_labels=3)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"does not fit the synthetic movie reviews: labels 3 \(expected 2\); "
                                         r"vocabulary size 40 \(expected at least 58\)\.$"):
        recipe("bert-reviews").load(str(tmp_path))


def test_heat_maps_shade_wrap_and_frame_the_tokens():
    tokens = [["[CLS]"] + ["word"] * 60 + ["[SEP]"], ["[CLS]", "great", "film", "[SEP]"]]
    relevance = {"a": torch.zeros(2, 62), "b": torch.zeros(2, 62)}
    relevance["a"][1, :4] = torch.tensor([0.0, 2.0, 1.0, -1.0])
    figure = text_heatmaps(tokens, relevance, ["long", "short"], [[False] * 62, [False, True, False, False]])
    texts = figure.axes[0].texts
    assert len(texts) == 2 + 2 * 2 + 2 * (62 + 4)  # titles, method names, every token of every line
    short = [t for t in texts if t.get_text() in ("great", "film", "[SEP]")][-6:-3]  # method "a"'s line of "short"
    assert [t.get_bbox_patch().get_facecolor()[:3] for t in short] == [(1.0, 0.0, 0.0), (1.0, 0.5, 0.5), (1.0, 1.0, 1.0)]
    assert short[0].get_fontweight() == "bold" and short[0].get_bbox_patch().get_edgecolor() == to_rgba("green")
    lines = {round(t.get_position()[1], 3) for t in texts if t.get_text() == "word"}
    assert len(lines) == 4 and max(t.get_position()[0] for t in texts) < figure.get_size_inches()[0]  # 60 words: 2 lines


def test_white_lines_of_the_heat_maps_are_named():
    relevance = {"ours": (torch.tensor([[0.0, 1.0], [0.0, 0.0]]), None), "Grad-CAM": (torch.zeros(2, 2), None)}
    note = vanished_panels(relevance, ["review 4", "review 9"], "text")
    assert note.startswith("White lines (no positive text relevance): ours (review 9): the reason is not diagnosed; ")
    assert note.endswith("Grad-CAM (every text): Grad-CAM keeps the positive part after the head mean, which erases a "
                         "readout row whose gradient-weighted heads sum to a negative value.")
