"""DETR weakly-supervised segmentation: Algorithm 1 step by step, COCO scoring, the evaluator."""

import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from captum_mm.attr import GenericAttention, RawAttention
from captum_mm.datasets import write_shapes_coco
from captum_mm.metrics.segmentation import (
    SegmentationEvaluator,
    detections,
    evaluate_masks,
    format_table,
    otsu_foreground,
    relevance_to_masks,
    scale_to_uint8,
    upsample_masks,
)
from helpers import detr, lxmert


def test_min_max_to_uint8_truncates():
    assert scale_to_uint8(torch.tensor([[0.0, 1.0], [2.0, 4.0]])).tolist() == [[0, 63], [127, 255]]
    assert scale_to_uint8(torch.full((2, 2), 3.0)).tolist() == [[0, 0], [0, 0]]


def test_otsu_keeps_the_bright_cluster():
    image = np.array([[0, 10], [200, 250]], dtype=np.uint8)
    assert otsu_foreground(image).tolist() == [[0.0, 0.0], [255.0, 255.0]]
    assert not otsu_foreground(np.full((2, 2), 7, dtype=np.uint8)).any()


def test_bilinear_sigmoid_crop_nearest():
    # bilinear 2x2 -> 4x4 gives 255 * a_r * a_c with a = [1, .75, .25, 0]: positive except the last row/column
    maps = torch.tensor([[[255.0, 0.0], [0.0, 0.0]]])
    full = upsample_masks(maps, (4, 4), (4, 4), (4, 4))
    assert full[0].long().tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    # crop to the image's 2 x 4 area, then nearest to its original 4 x 8 size
    assert upsample_masks(maps, (4, 4), (2, 4), (4, 8))[0].long().tolist() == [[1, 1, 1, 1, 1, 1, 0, 0]] * 4


def test_queries_not_kept_get_empty_masks():
    relevance = torch.rand(3, 2, 2)
    masks = relevance_to_masks(relevance, torch.tensor([False, True, False]), (8, 8), (8, 8), (8, 8))
    assert masks.shape == (3, 8, 8) and not masks[0].any() and not masks[2].any() and masks[1].any()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    return folder, write_shapes_coco(folder, 6, seed=100, size=96)


def scored(coco, relevance_of):
    """Detections whose relevance comes from ``relevance_of(mask, index)``, one per ground-truth object."""
    results, image_ids = [], sorted(coco.getImgIds())
    for index, annotation in enumerate(coco.loadAnns(coco.getAnnIds())):
        mask = torch.from_numpy(coco.annToMask(annotation)).float()
        relevance = relevance_of(mask, index)[None]  # at pixel resolution: Algorithm 1 then reproduces it
        masks = relevance_to_masks(relevance, torch.tensor([True]), (96, 96), (96, 96), (96, 96))
        results += detections(annotation["image_id"], masks, torch.ones(1), torch.tensor([annotation["category_id"]]))
    return evaluate_masks(coco, results, image_ids)


def test_ground_truth_relevance_scores_near_one_and_shuffled_clearly_lower(shapes):
    _, annotations = shapes
    coco = COCO(str(annotations))
    truth = scored(coco, lambda mask, index: mask)
    assert truth["coco"]["AP"] > 0.99 and truth["paper"]["AP"] > 0.99 and truth["coco"]["AR"] > 0.99
    masks = [torch.from_numpy(coco.annToMask(a)).float() for a in coco.loadAnns(coco.getAnnIds())]
    shuffled = scored(coco, lambda mask, index: masks[(index + 1) % len(masks)])
    assert shuffled["coco"]["AP"] < truth["coco"]["AP"] - 0.5
    assert evaluate_masks(coco, [], coco.getImgIds())["coco"]["AP"] == 0.0


def processor():
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    return DetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})


def test_evaluator_end_to_end_on_a_random_detr(shapes):
    folder, annotations = shapes
    model = detr(num_queries=6)
    evaluator = SegmentationEvaluator(model, processor(), folder / "val", annotations, threshold=0.0)
    scores = evaluator.evaluate({"ours": GenericAttention, "raw": RawAttention}, image_ids=[1, 2, 3], batch_size=2, progress=False)
    assert set(scores) == {"ours", "raw"} and set(scores["ours"]) == {"coco", "paper"}
    assert all(-1.0 <= value <= 1.0 for value in scores["ours"]["paper"].values())
    table = format_table(scores)
    assert "IoU 0.20:0.05:0.95 (paper)" in table and "AR_large" in table
    results = evaluator.detections(GenericAttention(model), [1, 2])
    assert len(results) == 2 * 6 and {r["image_id"] for r in results} == {1, 2}


def test_bad_input(shapes, tmp_path):
    folder, annotations = shapes
    with pytest.raises(FileNotFoundError, match="image folder"):
        SegmentationEvaluator(detr(), processor(), tmp_path / "nowhere", annotations)
    with pytest.raises(FileNotFoundError, match="annotations file"):
        SegmentationEvaluator(detr(), processor(), folder, tmp_path / "missing.json")
    with pytest.raises(TypeError, match="needs a DetrForObjectDetection, got a LxmertForQuestionAnswering"):
        SegmentationEvaluator(lxmert(), processor(), folder, annotations)
    evaluator = SegmentationEvaluator(detr(), processor(), folder / "val", annotations)
    with pytest.raises(ValueError, match=r"Image ids \[99\] are not in the annotations"):
        evaluator.image_ids([1, 99])
    broken = json.loads(annotations.read_text())
    broken["images"][0]["file_name"] = "gone.png"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(FileNotFoundError, match="is annotated but its file"):
        SegmentationEvaluator(detr(), processor(), folder / "val", tmp_path / "broken.json").detections(GenericAttention(detr()), [1])


def test_one_query_per_pass_gives_the_same_detections(shapes):
    folder, annotations = shapes
    model = detr(num_queries=6)
    together = SegmentationEvaluator(model, processor(), folder / "val", annotations, threshold=0.0)
    apart = SegmentationEvaluator(model, processor(), folder / "val", annotations, threshold=0.0, queries_per_pass=1)
    explainer = GenericAttention(model)
    assert together.detections(explainer, [1, 2]) == apart.detections(explainer, [1, 2])
