"""The main job's study of DETR on synthetic shape scenes (or a user's COCO-format data) (:func:`detr_study`):
weakly-supervised segmentation (Algorithm 1) on both IoU grids (supplementary Table 1), per-query mask figures
(every method, one column per detection, duplicates labelled).
It returns the study's ``numbers`` (for ``results.json``), its ``tables`` and ``figures``.
"""

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

import numpy as np
import torch
from matplotlib.figure import Figure

from captum_mm.attr.catalog import BEYOND_PAPER, with_reference_detr
from captum_mm.datasets import write_shapes_coco
from captum_mm.metrics.segmentation import IOU_GRIDS, SegmentationEvaluator, relevance_to_masks
from captum_mm.study.notes import missing_sizes
from captum_mm.study.options import Options
from captum_mm.study.report import table
from captum_mm.visualization.figures import methods_masks_figure
from captum_mm.zoo.model_recipe import Recipe
from captum_mm.zoo.train_detr import DETR_IMAGE_SIZE, DETR_SPLITS

SEGMENTATION_ROWS = ("AP", "AP_medium", "AP_large", "AR", "AR_medium", "AR_large")
#: Why the methods beside the paper's are not run on DETR.
NOT_ON_DETR = ("Not run on DETR: {} (the comparison beside the paper's methods runs on the VQA models' perturbation tests; "
               "AttnLRP's rules refuse DETR, whose LRP starts elsewhere than at the logits, and Captum's baselines would need "
               "an integration or ablation pass per detected query).")
#: The box IoU above which a detection of the same class is labelled a duplicate in the mask figures.
DUPLICATE_IOU = 0.7


def detr_study(recipe: "Recipe", options: "Options", methods: Dict[str, Callable]) -> Dict[str, Any]:
    r"""
    Weakly-supervised segmentation and per-query mask figures of DETR on shape scenes or the user's COCO data.

    Args:
        recipe (Recipe): The model's recipe.
        options (Options): The main job's options (DETR's checkpoint, the scene count, the user's COCO data, the
                    gallery size setting the mask figures, the output folder).
        methods (dict): Method name to explainer factory (the reference Eq. 8-9 variant is added to them; those of
                    :data:`~captum_mm.attr.catalog.BEYOND_PAPER` are not run, as a table note says).

    Returns:
        *dict*: The segmentation scores as ``numbers``, a table per IoU grid, the mask figures.
    """
    name = recipe.name
    model = recipe.load(options.checkpoints.get(name))
    processor = recipe.load_processor(options.checkpoints.get(name))
    if options.images_dir and options.annotations:
        images, annotations = Path(options.images_dir), Path(options.annotations)
    else:
        folder = Path(options.output) / "scenes"
        count, seed = DETR_SPLITS["val"]
        annotations, wanted = folder / "val.json", min(count, options.images)
        if not annotations.exists() or len(json.loads(annotations.read_text())["images"]) != wanted:
            write_shapes_coco(folder, wanted, seed, DETR_IMAGE_SIZE, "val")
        images = folder / "val"
    evaluator = SegmentationEvaluator(model, processor, images, annotations)
    image_ids = evaluator.image_ids(limit=options.images)
    skipped = [method for method in methods if method in BEYOND_PAPER]
    methods = with_reference_detr({method: factory for method, factory in methods.items() if method not in skipped})
    scores = cast(Dict[str, Dict[str, Dict[str, float]]], evaluator.evaluate(methods, image_ids, progress=options.progress))
    tables = []
    areas = [a["area"] for a in json.loads(Path(annotations).read_text())["annotations"] if a["image_id"] in image_ids]
    for grid in IOU_GRIDS:
        rows = {row: {m: 100 * scores[m][grid][row] for m in scores} for row in SEGMENTATION_ROWS}
        label = "0.50:0.05:0.95" if grid == "coco" else "0.20:0.05:0.95"
        tables.append(table(rows, list(scores), f"{name}: segmentation, IoU {label} (as supplementary Table 1)",
                            f"{name.split('-')[0]}_segmentation_iou{label[2:4]}", {row: "higher" for row in rows}))
        missing = missing_sizes(areas, [row for row, values in rows.items() if min(values.values()) < 0])
        tables[-1]["notes"] += [missing] if missing else []
        tables[-1]["notes"] += [NOT_ON_DETR.format(", ".join(skipped))] if skipped else []
    out = Path(options.output) / name
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    for image_id in image_ids[: max(1, options.gallery // 2)]:
        figures[f"masks of scene {image_id}"] = figure = _detr_masks(model, evaluator, image_id, methods)
        figure.savefig(out / f"masks_{image_id}.png", dpi=110, bbox_inches="tight")
    (out / "segmentation.json").write_text(json.dumps(scores, indent=2))
    return {"numbers": scores, "tables": tables, "figures": figures}


def _detr_masks(model, evaluator: SegmentationEvaluator, image_id: int, methods) -> Figure:
    """Per-query relevance and masks of every method on one scene, one column per detection (most confident first)."""
    image = evaluator.load_images([image_id])[0]
    inputs = evaluator.processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        output = model(**inputs)
    scores, labels = output.logits.softmax(-1)[..., :-1].max(-1)
    keep = scores[0] > evaluator.threshold
    size = (image.height, image.width)
    kept = sorted(torch.nonzero(keep).flatten().tolist(), key=lambda q: -float(scores[0, q]))
    explained: Dict[str, Tuple[Sequence, Sequence]] = {}
    for name, factory in methods.items():
        relevance = evaluator.relevance(factory(model), inputs["pixel_values"], inputs["pixel_mask"], keep[None])[0]
        masks = relevance_to_masks(relevance, keep, tuple(inputs["pixel_values"].shape[-2:]), size, size)
        explained[name] = ([relevance[q] for q in kept], [masks[q] for q in kept])
    classes = [int(labels[0, q]) for q in kept]
    originals = duplicates(output.pred_boxes[0, kept], classes)
    names = [f"{model.config.id2label.get(c, c)} (query {q}" + (")" if first is None else f", duplicate of query {kept[first]})")
             for q, c, first in zip(kept, classes, originals)]
    return methods_masks_figure(np.array(image), explained, names)


def duplicates(boxes: torch.Tensor, classes: List[int], overlap: float = DUPLICATE_IOU) -> List[Optional[int]]:
    r"""
    Which detections duplicate an earlier one: same class and boxes overlapping by more than ``overlap`` (IoU).

    Args:
        boxes (Tensor): ``[N, 4]`` DETR's boxes (centre x, centre y, width, height), most confident first.
        classes (list of int): Each detection's class.
        overlap (float, optional): The IoU above which a detection duplicates. Default: :data:`DUPLICATE_IOU`

    Returns:
        *list*: Per detection, the index of the first earlier detection it duplicates, or None.
    """
    corners = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
    low, high = torch.maximum(corners[:, None, :2], corners[None, :, :2]), torch.minimum(corners[:, None, 2:], corners[None, :, 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    area = (corners[:, 2:] - corners[:, :2]).prod(-1)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-12)
    return [next((j for j in range(i) if classes[j] == classes[i] and iou[i, j] > overlap), None) for i in range(len(classes))]
