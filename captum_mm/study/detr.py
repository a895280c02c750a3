"""The main job's study of DETR on synthetic shape scenes (or a user's COCO-format data) (:func:`detr_study`):
weakly-supervised segmentation (Algorithm 1) on both IoU grids (supplementary Table 1), per-query mask figures.
It returns the study's ``numbers`` (for ``results.json``), its ``tables`` and ``figures``.
"""

import json
from pathlib import Path
from typing import Any, Callable, Dict, cast

import numpy as np
import torch
from matplotlib.figure import Figure

from captum_mm.attr.catalog import with_reference_detr
from captum_mm.datasets import write_shapes_coco
from captum_mm.metrics.segmentation import IOU_GRIDS, SegmentationEvaluator, relevance_to_masks
from captum_mm.study.notes import missing_sizes
from captum_mm.study.options import Options
from captum_mm.study.report import table
from captum_mm.visualization.figures import detection_masks_figure
from captum_mm.zoo.model_recipe import Recipe
from captum_mm.zoo.train_detr import DETR_IMAGE_SIZE, DETR_SPLITS

SEGMENTATION_ROWS = ("AP", "AP_medium", "AP_large", "AR", "AR_medium", "AR_large")


def detr_study(recipe: "Recipe", options: "Options", methods: Dict[str, Callable]) -> Dict[str, Any]:
    r"""
    Weakly-supervised segmentation and per-query mask figures of DETR on shape scenes or the user's COCO data.

    Args:
        recipe (Recipe): The model's recipe.
        options (Options): The main job's options (DETR's checkpoint, the scene count, the user's COCO data, the
                    gallery size setting the mask figures, the output folder).
        methods (dict): Method name to explainer factory (the reference Eq. 8-9 variant is added to them).

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
    methods = with_reference_detr(methods)
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
    out = Path(options.output) / name
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    for image_id in image_ids[: max(1, options.gallery // 2)]:
        figures[f"masks of scene {image_id}"] = figure = _detr_masks(model, evaluator, image_id, methods)
        figure.savefig(out / f"masks_{image_id}.png", dpi=110, bbox_inches="tight")
    (out / "segmentation.json").write_text(json.dumps(scores, indent=2))
    return {"numbers": scores, "tables": tables, "figures": figures}


def _detr_masks(model, evaluator: SegmentationEvaluator, image_id: int, methods) -> Figure:
    """Per-query relevance and masks of the first method ("ours" by default) on one scene."""
    name, factory = next(iter(methods.items()))
    explainer = factory(model)
    image = evaluator.load_images([image_id])[0]
    inputs = evaluator.processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    scores, labels = logits.softmax(-1)[..., :-1].max(-1)
    keep = scores[0] > evaluator.threshold
    relevance = evaluator.relevance(explainer, inputs["pixel_values"], inputs["pixel_mask"], keep[None])[0]
    size = (image.height, image.width)
    masks = relevance_to_masks(relevance, keep, tuple(inputs["pixel_values"].shape[-2:]), size, size)
    kept = torch.nonzero(keep).flatten().tolist()
    names = [f"{name}: {model.config.id2label.get(int(labels[0, q]), labels[0, q])} (query {q})" for q in kept]
    return detection_masks_figure(np.array(image), [relevance[q] for q in kept], [masks[q] for q in kept], names)
