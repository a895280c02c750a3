"""The shipped checkpoints: offline loading, size, and the quality recorded when they were trained."""

import contextlib
import io

import pytest
from pycocotools.coco import COCO

from captum_mm import zoo
from captum_mm.datasets import write_shapes_coco
from captum_mm.datasets.easy_vqa import EasyVQA
from captum_mm.zoo.train import DETR_CHECK_SCENES, DETR_IMAGE_SIZE, DETR_SPLITS, VQA_CHECK_QUESTIONS, detr_box_ap, vqa_accuracy

MARGIN = 1.0  # accuracy points (VQA) / hundredths of AP50 (DETR): the same subset, the same model, one CPU


def test_all_checkpoints_together_fit_in_30_megabytes():
    size = sum(path.stat().st_size for path in zoo.CHECKPOINTS.rglob("*") if path.is_file())
    assert size <= 30 * 2**20


@pytest.mark.parametrize("name", ["lxmert-easyvqa", "visualbert-easyvqa"])
def test_vqa_checkpoint_reaches_its_recorded_accuracy(name):
    model = zoo.load(name)
    recorded = zoo.quality(name)
    accuracy = vqa_accuracy(name, model, EasyVQA("test"), range(VQA_CHECK_QUESTIONS))
    assert accuracy >= recorded["check_subset_accuracy"] - MARGIN
    assert recorded["easy_vqa_test_accuracy"] >= 50.0


def test_detr_checkpoint_reaches_its_recorded_ap50(tmp_path):
    count, seed = DETR_SPLITS["val"]
    annotations = write_shapes_coco(tmp_path, DETR_CHECK_SCENES, seed, DETR_IMAGE_SIZE, "val")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotations))
    scores = detr_box_ap(zoo.load("detr-shapes"), coco, tmp_path / "val", zoo.load_processor())
    assert scores["bbox_AP50"] >= zoo.quality("detr-shapes")["check_subset_AP50"] - MARGIN / 100


def test_unknown_or_missing_checkpoint():
    with pytest.raises(ValueError, match="Unknown model 'gpt'; shipped: lxmert-easyvqa"):
        zoo.load("gpt")
