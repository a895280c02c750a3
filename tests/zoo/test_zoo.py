"""The shipped checkpoints: offline loading, size, and the quality recorded when they were trained."""

import contextlib
import io
import json

import pytest
from pycocotools.coco import COCO

from captum_mm import zoo
from captum_mm.cli import main
from captum_mm.datasets import write_shapes_coco
from captum_mm.datasets.easy_vqa import EasyVQA
from captum_mm.zoo import model_recipe
from captum_mm.zoo.recipes import RECIPES, recipe
from captum_mm.zoo.train_detr import DETR_CHECK_SCENES, DETR_IMAGE_SIZE, DETR_SPLITS, detr_box_ap
from captum_mm.zoo.train_vqa import VQA_CHECK_QUESTIONS, vqa_accuracy

MARGIN = 1.0  # accuracy points (VQA) / hundredths of AP50 (DETR): the same subset, the same model, one CPU


def test_all_checkpoints_together_fit_in_30_megabytes():
    size = sum(path.stat().st_size for path in zoo.CHECKPOINTS.rglob("*") if path.is_file())
    assert size <= 30 * 2**20


@pytest.mark.parametrize("name", ["lxmert-easyvqa", "visualbert-easyvqa"])
def test_vqa_checkpoint_reaches_its_recorded_accuracy(name):
    model = zoo.load(name)
    recorded = zoo.quality(name)
    accuracy = vqa_accuracy(recipe(name), model, EasyVQA("test"), range(VQA_CHECK_QUESTIONS))
    assert accuracy >= recorded["check_subset_accuracy"] - MARGIN


def test_llava_checkpoint_generates_answers_with_its_recorded_exact_match():
    from captum_mm.zoo.train_llava import CHECK_QUESTIONS, exact_match

    match = exact_match(zoo.load("llava-easyvqa"), EasyVQA("test"), range(CHECK_QUESTIONS))
    assert match >= zoo.quality("llava-easyvqa")["check_subset_exact_match"] - MARGIN


def test_bert_checkpoint_reaches_its_recorded_accuracy():
    from captum_mm.datasets.reviews import SyntheticReviews
    from captum_mm.zoo.train_bert import CHECK_REVIEWS
    from captum_mm.zoo.training import classifier_accuracy

    accuracy = classifier_accuracy(zoo.load("bert-reviews"), SyntheticReviews("test"), range(CHECK_REVIEWS))
    assert accuracy >= zoo.quality("bert-reviews")["check_subset_accuracy"] - MARGIN


def test_detr_checkpoint_reaches_its_recorded_ap50(tmp_path):
    count, seed = DETR_SPLITS["val"]
    annotations = write_shapes_coco(tmp_path, DETR_CHECK_SCENES, seed, DETR_IMAGE_SIZE, "val")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotations))
    scores = detr_box_ap(zoo.load("detr-shapes"), coco, tmp_path / "val", zoo.load_processor("detr-shapes"))
    assert scores["bbox_AP50"] >= zoo.quality("detr-shapes")["check_subset_AP50"] - MARGIN / 100


def test_unknown_or_missing_checkpoint():
    with pytest.raises(ValueError, match="Unknown model 'gpt'; shipped: lxmert-easyvqa"):
        zoo.load("gpt")


def test_missing_checkpoint_says_how_to_retrain(tmp_path, monkeypatch):
    monkeypatch.setattr(model_recipe, "CHECKPOINTS", tmp_path)
    with pytest.raises(FileNotFoundError, match="retrain it with `captum-mm train detr-shapes`"):
        zoo.load("detr-shapes")


def test_recorded_quality_meets_the_goals():
    """The measured quality in quality.json (written by the training run) meets the project's goals."""
    for name, entry in RECIPES.items():
        key, minimum = entry.goal
        assert zoo.quality(name)[key] >= minimum and zoo.quality(name).get("limit") is None
    assert {entry.goal for entry in RECIPES.values()} == {
        ("easy_vqa_test_accuracy", 90.0), ("bbox_AP50", 0.5), ("easy_vqa_test_exact_match", 90.0), ("reviews_test_accuracy", 95.0)}


@pytest.mark.parametrize("name, limit", [("lxmert-easyvqa", 64), ("detr-shapes", 4), ("llava-easyvqa", 64), ("bert-reviews", 64)])
def test_training_command_runs_the_recipe_on_a_few_items(name, limit, tmp_path, capsys):
    before = zoo.load(name).state_dict()
    main(["train", name, "--epochs", "1", "--limit", str(limit), "--output", str(tmp_path / name)])
    assert "epoch 1/1" in capsys.readouterr().out
    quality = json.loads((tmp_path / name / "quality.json").read_text())
    assert quality["limit"] == limit and quality["epochs"] == 1 and quality["train_seconds"] > 0
    retrained = type(zoo.load(name)).from_pretrained(tmp_path / name).state_dict()
    assert retrained.keys() == before.keys()
