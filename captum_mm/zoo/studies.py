"""The main job's evaluations of the shipped models, named by their recipes (:mod:`captum_mm.zoo.recipes`).

* :func:`vqa_study`: a VQA model on easy-VQA test: positive/negative perturbation of image
  regions and text tokens for every method and ablation (supplementary Tables 2-3,
  Figures 2-3), plausibility against the shapes' ground-truth masks, a Figure 1-style gallery.
* :func:`detr_study`: DETR on synthetic shape scenes (or a user's COCO-format data):
  weakly-supervised segmentation (Algorithm 1) on both IoU grids (supplementary Table 1),
  per-query mask figures.

Each returns the study's ``numbers`` (for ``results.json``), its ``tables`` and ``figures``.
"""

import json
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, cast

import numpy as np
import torch
from matplotlib.figure import Figure

from captum_mm.attr.catalog import ABLATIONS, PAPER_METHODS, with_reference_detr
from captum_mm.datasets import write_shapes_coco
from captum_mm.datasets.easy_vqa import GRID, EasyVQA, tokenizer
from captum_mm.metrics.segmentation import IOU_GRIDS, SegmentationEvaluator, relevance_to_masks
from captum_mm.metrics.study import (
    KeywordModel,
    StudyResult,
    attention_method,
    pad_collate,
    run_perturbation_study,
    vqa_settings,
)
from captum_mm.visualization import plot_perturbation_curves, save_perturbation_study
from captum_mm.visualization.figures import detection_masks_figure, relevance_gallery
from captum_mm.zoo.train_detr import DETR_IMAGE_SIZE, DETR_SPLITS

if TYPE_CHECKING:
    from captum_mm.reproduce import Options
    from captum_mm.zoo.recipes import EasyVQAInputs, Recipe

SETTING_ROWS = {"negative image": "Neg. img", "positive image": "Pos. img", "negative text": "Neg. text", "positive text": "Pos. text"}
SEGMENTATION_ROWS = ("AP", "AP_medium", "AP_large", "AR", "AR_medium", "AR_large")


def table(rows: Dict[str, Dict[str, float]], columns: List[str], title: str) -> Dict[str, Any]:
    """``rows[row][column]`` as a printable/HTML/CSV table."""
    return {"title": title, "columns": columns, "rows": rows}


class Plausibility:
    """Per method: share of image relevance on the shape (coverage-weighted) and the pointing game."""

    def __init__(self, dataset: EasyVQA) -> None:
        self.dataset = dataset
        self.share: Dict[str, List[float]] = {}
        self.hits: Dict[str, List[float]] = {}

    def __call__(self, method: str, indices: List[int], relevance: Dict[str, torch.Tensor]) -> None:
        coverage = self.dataset.region_coverage(indices).double()
        image = relevance["image"].detach().double().clamp(min=0)
        total = image.sum(1)
        share = torch.where(total > 0, (image * coverage).sum(1) / total.clamp(min=1e-12), torch.zeros_like(total))
        hits = coverage.gather(1, image.argmax(1, keepdim=True))[:, 0] > 0
        self.share.setdefault(method, []).extend(share.tolist())
        self.hits.setdefault(method, []).extend(hits.double().tolist())

    def table(self, title: str) -> Dict[str, Any]:
        methods = list(self.share)
        rows = {
            "on shape %": {m: 100 * sum(self.share[m]) / len(self.share[m]) for m in methods},
            "pointing %": {m: 100 * sum(self.hits[m]) / len(self.hits[m]) for m in methods},
        }
        return table(rows, methods, title)


def vqa_study(recipe: "Recipe", options: "Options", methods: Dict[str, Callable]) -> Dict[str, Any]:
    """Perturbation tests, plausibility and the gallery of a VQA model on easy-VQA test."""
    name, inputs = recipe.name, cast("EasyVQAInputs", recipe.easy_vqa)  # VQA recipes carry their inputs
    model = recipe.load(options.checkpoints.get(name))
    dataset = EasyVQA("test")

    def collate(items):
        batch, scores = pad_collate(items)
        return inputs.convert(batch), scores

    settings = vqa_settings(inputs.text, inputs.image, inputs.text_steps, inputs.image_steps)
    plausibility = Plausibility(dataset)
    relevance_methods = {method: attention_method(factory, model) for method, factory in methods.items()}
    result = cast(StudyResult, run_perturbation_study(  # one process: the whole result
        model, dataset, collate, relevance_methods, settings, num_samples=options.samples, seed=options.seed,
        progress=options.progress, on_relevance=plausibility,
    ))
    folder = Path(options.output) / name
    save_perturbation_study(result, folder, f"{name}: perturbation tests on {len(result.samples)} easy-VQA test questions")
    tables = vqa_tables(name, result, plausibility)
    gallery = _vqa_gallery(model, dataset, inputs.convert, relevance_methods, result.samples[: options.gallery])
    gallery.savefig(folder / "gallery.png", dpi=110, bbox_inches="tight")
    figures = {"curves": plot_perturbation_curves(result), "gallery": gallery}
    return {"numbers": result.to_dict(), "tables": tables, "figures": figures}


def vqa_tables(name: str, result: StudyResult, plausibility: Plausibility) -> List[Dict[str, Any]]:
    def auc_table(columns, title):
        columns = [c for c in columns if c in result.scores]
        rows = {label: {c: result.auc(c, setting) for c in columns} for setting, label in SETTING_ROWS.items()}
        return table(rows, columns, title)

    tables = [auc_table(list(PAPER_METHODS), f"{name}: AUC of every method (as supplementary Table 3)")]
    ablation_columns = ["ours"] + list(ABLATIONS)
    if any(c in result.scores for c in ABLATIONS):
        tables.append(auc_table(ablation_columns, f"{name}: AUC of the ablations (as supplementary Table 2)"))
    tables.append(plausibility.table(f"{name}: plausibility against the ground-truth shape masks"))
    return tables


def _vqa_gallery(model, dataset, convert, relevance_methods, indices) -> Figure:
    batch, _ = pad_collate([dataset[i] for i in indices])
    inputs = convert(batch)
    with torch.no_grad():
        predictions = KeywordModel(model, ())(**inputs).argmax(-1)
    vocabulary = tokenizer()
    tokens = [vocabulary.convert_ids_to_tokens(dataset[i]["input_ids"].tolist()) for i in indices]
    relevance = {}
    for method, relevance_of in relevance_methods.items():
        values = relevance_of(inputs, predictions)
        relevance[method] = (values["text"].detach(), values["image"].detach())
    answers = [dataset.answers[p] for p in predictions.tolist()]
    titles = [f"{textwrap.fill(dataset.questions[i], 24)}\n→ {answer}" for i, answer in zip(indices, answers)]
    return relevance_gallery([dataset.image(i) for i in indices], tokens, relevance, (GRID, GRID), titles)


def detr_study(recipe: "Recipe", options: "Options", methods: Dict[str, Callable]) -> Dict[str, Any]:
    """Weakly-supervised segmentation and per-query mask figures of DETR on shape scenes or the user's COCO data."""
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
    for grid in IOU_GRIDS:
        rows = {row: {m: 100 * scores[m][grid][row] for m in scores} for row in SEGMENTATION_ROWS}
        label = "0.50:0.05:0.95" if grid == "coco" else "0.20:0.05:0.95"
        tables.append(table(rows, list(scores), f"{name}: segmentation, IoU {label} (as supplementary Table 1)"))
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
