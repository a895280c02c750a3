"""The main job: the paper's study on the shipped models (``captum-mm reproduce``).

* LXMERT and VisualBERT on easy-VQA test: positive/negative perturbation of image
  regions and text tokens for every method and ablation (supplementary Tables 2-3,
  Figures 2-3), plus plausibility against the shapes' ground-truth masks.
* DETR on synthetic shape scenes: weakly-supervised segmentation (Algorithm 1) for
  every method and ablation, on both IoU grids (supplementary Table 1).
* A Figure 1-style gallery, DETR per-query masks, and a self-contained HTML report;
  the numbers as JSON and CSV.
"""

import base64
import datetime
import html
import io
import json
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from matplotlib.figure import Figure

from captum_mm.attr.catalog import ABLATIONS, PAPER_METHODS, select_methods, with_reference_detr
from captum_mm.datasets.easy_vqa import (
    EASY_VQA_VOCABULARY,
    FEATURES,
    GRID,
    VISUAL_BERT_FEATURES,
    EasyVQA,
    for_visual_bert,
    tokenizer,
)
from captum_mm.metrics import (
    DEFAULT_STEPS,
    LXMERT_IMAGE,
    LXMERT_TEXT,
    VISUAL_BERT_IMAGE,
    VISUAL_BERT_IMAGE_STEPS,
    VISUAL_BERT_TEXT,
)
from captum_mm.metrics.segmentation import IOU_GRIDS, SegmentationEvaluator, format_table
from captum_mm.metrics.study import (
    KeywordModel,
    StudyResult,
    attention_method,
    pad_collate,
    run_perturbation_study,
    vqa_settings,
)
from captum_mm.visualization import plot_perturbation_curves
from captum_mm.visualization.figures import detection_masks_figure, relevance_gallery

SETTING_ROWS = {"negative image": "Neg. img", "positive image": "Pos. img", "negative text": "Neg. text", "positive text": "Pos. text"}
SEGMENTATION_ROWS = ("AP", "AP_medium", "AP_large", "AR", "AR_medium", "AR_large")


# What the main job does with each model, for its stage indicator.
STUDY_STEPS = {
    "lxmert-easyvqa": "perturbation tests, plausibility, gallery",
    "visualbert-easyvqa": "perturbation tests, plausibility, gallery",
    "detr-shapes": "weakly-supervised segmentation, mask figures",
}

# The transformers model type each study expects of a checkpoint.
MODEL_TYPES = {"lxmert-easyvqa": "lxmert", "visualbert-easyvqa": "visual_bert", "detr-shapes": "detr"}


@dataclass
class Options:
    """What ``captum-mm reproduce`` runs (defaults finish in minutes on 2 CPU cores)."""

    output: Path = Path("captum_mm_output")
    models: Sequence[str] = ("lxmert-easyvqa", "visualbert-easyvqa", "detr-shapes")
    methods: Optional[Sequence[str]] = None
    samples: int = 256
    images: int = 100
    gallery: int = 4
    seed: int = 0
    checkpoints: Dict[str, str] = field(default_factory=dict)
    images_dir: Optional[str] = None
    annotations: Optional[str] = None
    progress: bool = True

    def __post_init__(self) -> None:
        counts = {"samples": self.samples, "images": self.images, "gallery": self.gallery}
        if any(count < 1 for count in counts.values()):
            raise ValueError(f"samples, images and gallery must be positive counts, got {counts}.")
        unknown = [name for name in self.models if name not in MODEL_TYPES]
        if unknown:
            raise ValueError(f"Unknown models {unknown}; the main job runs {', '.join(MODEL_TYPES)}.")
        select_methods(self.methods)
        stray = [name for name in self.checkpoints if name not in self.models]
        if stray:
            raise ValueError(f"Checkpoints given for {stray}, which are not among the models run ({', '.join(self.models)}).")
        if (self.images_dir is None) != (self.annotations is None):
            raise ValueError("Give both images_dir and annotations (a COCO-format dataset for DETR), or neither.")
        if self.images_dir is not None and "detr-shapes" not in self.models:
            raise ValueError("images_dir/annotations are for the DETR segmentation test, but detr-shapes is not run.")


def _load(name: str, options: Options):
    from captum_mm import zoo

    if name not in options.checkpoints:
        return zoo.load(name)
    from transformers import AutoConfig, DetrForObjectDetection, LxmertForQuestionAnswering, VisualBertForQuestionAnswering

    path = options.checkpoints[name]
    config = AutoConfig.from_pretrained(path)
    if config.model_type != MODEL_TYPES[name]:
        raise ValueError(f"The checkpoint for {name} at {path} is a {config.model_type!r} model; expected {MODEL_TYPES[name]!r}.")
    if name != "detr-shapes":
        _check_easy_vqa_config(name, path, config)
    classes = {"lxmert": LxmertForQuestionAnswering, "visual_bert": VisualBertForQuestionAnswering, "detr": DetrForObjectDetection}
    return classes[config.model_type].from_pretrained(path).eval()


def _check_easy_vqa_config(name: str, path: str, config) -> None:
    """A user's VQA checkpoint must take easy-VQA's inputs and give its answers."""
    import easy_vqa

    lxmert = name == "lxmert-easyvqa"
    found = {
        "answers": config.num_qa_labels if lxmert else config.num_labels,
        "region feature size": config.visual_feat_dim if lxmert else config.visual_embedding_dim,
    }
    expected = {"answers": len(easy_vqa.get_answers()), "region feature size": FEATURES if lxmert else VISUAL_BERT_FEATURES}
    wrong = [f"{key} {found[key]} (expected {expected[key]})" for key in found if found[key] != expected[key]]
    if config.vocab_size < len(EASY_VQA_VOCABULARY):
        wrong.append(f"vocabulary size {config.vocab_size} (expected at least {len(EASY_VQA_VOCABULARY)})")
    if wrong:
        raise ValueError(
            f"The checkpoint for {name} at {path} does not fit captum_mm.datasets.easy_vqa: " + "; ".join(wrong) + "."
        )


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(rows: Dict[str, Dict[str, float]], columns: List[str], title: str) -> Dict[str, Any]:
    """``rows[row][column]`` as a printable/HTML/CSV table."""
    return {"title": title, "columns": columns, "rows": rows}


def _number(value: float) -> str:
    """Two decimals; pycocotools' -1 (no object of that size) as n/a."""
    return "n/a" if value < 0 else f"{value:.2f}"


def _text_table(table: Dict[str, Any]) -> str:
    columns, width = table["columns"], max([10] + [len(c) for c in table["columns"]]) + 2
    lines = [table["title"], " " * 12 + "".join(c.rjust(width) for c in columns)]
    for row, values in table["rows"].items():
        lines.append(row.ljust(12) + "".join(_number(values[c]).rjust(width) for c in columns))
    return "\n".join(lines)


def _html_table(table: Dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table["columns"])
    body = "".join(
        f"<tr><th>{html.escape(row)}</th>" + "".join(f"<td>{_number(values[c])}</td>" for c in table["columns"]) + "</tr>"
        for row, values in table["rows"].items()
    )
    return f"<h3>{html.escape(table['title'])}</h3><table><tr><th></th>{head}</tr>{body}</table>"


def _csv(table: Dict[str, Any]) -> str:
    lines = [",".join(["setting"] + table["columns"])]
    lines += [",".join([row] + [f"{values[c]:.4f}" for c in table["columns"]]) for row, values in table["rows"].items()]
    return "\n".join(lines) + "\n"


class Plausibility:
    """Per method: share of image relevance on the shape (coverage-weighted) and the pointing game."""

    def __init__(self, dataset: EasyVQA) -> None:
        self.dataset, self.share, self.hits = dataset, {}, {}

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
        return _table(rows, methods, title)


def _vqa_study(name: str, options: Options, methods: Dict[str, Callable]) -> Dict[str, Any]:
    model = _load(name, options)
    dataset = EasyVQA("test")
    visual_bert = name == "visualbert-easyvqa"
    convert = for_visual_bert if visual_bert else (lambda batch: batch)

    def collate(items):
        batch, scores = pad_collate(items)
        return convert(batch), scores

    settings = vqa_settings(
        VISUAL_BERT_TEXT if visual_bert else LXMERT_TEXT, VISUAL_BERT_IMAGE if visual_bert else LXMERT_IMAGE,
        DEFAULT_STEPS, VISUAL_BERT_IMAGE_STEPS if visual_bert else DEFAULT_STEPS,
    )
    plausibility = Plausibility(dataset)
    relevance_methods = {method: attention_method(factory, model) for method, factory in methods.items()}
    result = run_perturbation_study(
        model, dataset, collate, relevance_methods, settings, num_samples=options.samples, seed=options.seed,
        progress=options.progress, on_relevance=plausibility,
    )
    folder = Path(options.output) / name
    result.write(folder, f"{name}: perturbation tests on {len(result.samples)} easy-VQA test questions")
    tables = _vqa_tables(name, result, plausibility)
    gallery = _vqa_gallery(model, dataset, convert, relevance_methods, result.samples[: options.gallery])
    gallery.savefig(folder / "gallery.png", dpi=110, bbox_inches="tight")
    return {"result": result, "tables": tables, "figures": {"curves": plot_perturbation_curves(result), "gallery": gallery}}


def _vqa_tables(name: str, result: StudyResult, plausibility: Plausibility) -> List[Dict[str, Any]]:
    def auc_table(columns, title):
        columns = [c for c in columns if c in result.scores]
        rows = {label: {c: result.auc(c, setting) for c in columns} for setting, label in SETTING_ROWS.items()}
        return _table(rows, columns, title)

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


def _detr_study(options: Options, methods: Dict[str, Callable]) -> Dict[str, Any]:
    from captum_mm import zoo
    from captum_mm.datasets import write_shapes_coco
    from captum_mm.zoo.train import DETR_IMAGE_SIZE, DETR_SPLITS

    model = _load("detr-shapes", options)
    processor = zoo.load_processor("detr-shapes") if "detr-shapes" not in options.checkpoints else _processor(options)
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
    scores = evaluator.evaluate(methods, image_ids, progress=options.progress)
    tables = []
    for grid in IOU_GRIDS:
        rows = {row: {m: 100 * scores[m][grid][row] for m in scores} for row in SEGMENTATION_ROWS}
        label = "0.50:0.05:0.95" if grid == "coco" else "0.20:0.05:0.95"
        tables.append(_table(rows, list(scores), f"detr-shapes: segmentation, IoU {label} (as supplementary Table 1)"))
    out = Path(options.output) / "detr-shapes"
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    for image_id in image_ids[: max(1, options.gallery // 2)]:
        figures[f"masks of scene {image_id}"] = figure = _detr_masks(model, evaluator, image_id, methods)
        figure.savefig(out / f"masks_{image_id}.png", dpi=110, bbox_inches="tight")
    (out / "segmentation.json").write_text(json.dumps(scores, indent=2))
    return {"scores": scores, "tables": tables, "text": format_table(scores), "figures": figures}


def _processor(options: Options):
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    return DetrImageProcessorPil.from_pretrained(options.checkpoints["detr-shapes"])


def _detr_masks(model, evaluator: SegmentationEvaluator, image_id: int, methods) -> Figure:
    """Per-query relevance and masks of the first method ("ours" by default) on one scene."""
    import numpy as np

    from captum_mm.metrics.segmentation import relevance_to_masks

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


def reproduce(options: Options) -> Dict[str, Any]:
    """Run the study, write ``report.html``, ``results.json`` and CSV tables to ``options.output``."""
    started = time.monotonic()
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    methods = select_methods(options.methods)
    studies = {}
    for step, name in enumerate(options.models, 1):
        print(f"Step {step} of {len(options.models)}: {name}: {STUDY_STEPS[name]}", flush=True)
        if name == "detr-shapes":
            studies[name] = _detr_study(options, methods)
        else:
            studies[name] = _vqa_study(name, options, methods)
    tables = [table for study in studies.values() for table in study["tables"]]
    for index, table in enumerate(tables):
        print(_text_table(table), end="\n\n")
        (output / f"table_{index + 1}.csv").write_text(_csv(table))
    numbers = {
        name: (study["result"].to_dict() if "result" in study else study["scores"]) for name, study in studies.items()
    }
    numbers["tables"] = tables
    (output / "results.json").write_text(json.dumps(numbers, indent=2))
    (output / "report.html").write_text(_report(studies, tables, _settings(options, methods, time.monotonic() - started)))
    print(f"Report: {output / 'report.html'}")
    return numbers


# What each kind of figure in the report shows and how to read it, by the first word of its title.
CAPTIONS = {
    "curves": "Perturbation curves: the model's accuracy (%, y axis) on the test questions as a growing fraction of "
    "its image regions or text tokens (x axis) is removed, least relevant first (negative perturbation: the higher "
    "the curve, the better the explanation) or most relevant first (positive: the lower, the better). One line per "
    "method; the legend gives each method's area under the curve, as in the tables.",
    "gallery": "Gallery: top row, test images with their question and the model's answer. Below, one row per "
    "method: the image with each region multiplied by its relevance (scaled to the maximum, so irrelevant regions "
    "are black) and the question's tokens shaded red by their relevance (deeper red: more relevant). A good "
    "explanation shows the shape the question is about and its key words.",
    "masks": "DETR masks: one column per object the model detected in this scene, explained by the first method. "
    "Top row: the detection's relevance over the image (jet colours, scaled to its maximum: red most relevant, "
    "blue least). Bottom row: the weakly-supervised segmentation mask (Algorithm 1) made from it, in red. A good "
    "explanation covers the detected object and little else.",
}


def _settings(options: Options, methods: Dict[str, Callable], seconds: float) -> Dict[str, str]:
    """The run's settings, as the report states them."""
    import transformers

    from captum_mm import __version__

    settings = {
        "captum_mm": __version__,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "models": ", ".join(f"{name} ({options.checkpoints.get(name, 'shipped')})" for name in options.models),
        "methods": ", ".join(methods),
    }
    if any(name != "detr-shapes" for name in options.models):
        settings["samples"] = f"{options.samples} easy-VQA test questions per VQA model, {options.gallery} in the gallery"
    if "detr-shapes" in options.models:
        settings["images"] = f"{options.images} scenes from {options.images_dir or 'the synthetic shapes validation split'}"
    settings.update({
        "seed": str(options.seed),
        "run time": f"{int(seconds // 60)} min {seconds % 60:.0f} s",
        "threads": f"{torch.get_num_threads()} torch threads",
        "torch, transformers": f"{torch.__version__}, {transformers.__version__}",
    })
    return settings


def _report(studies: Dict[str, Any], tables: List[Dict[str, Any]], settings: Dict[str, str]) -> str:
    parts = [
        "<html><head><meta charset='utf-8'><title>captum_mm: the study on the shipped models</title><style>",
        "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:0 1em} td,th{padding:2px 8px;text-align:right}",
        "table{border-collapse:collapse;margin-bottom:1em} tr:nth-child(even){background:#f4f4f4}",
        "figure{margin:0 0 2em} img{max-width:100%;height:auto} figcaption{color:#333;max-width:60em}",
        "table.settings td,table.settings th{text-align:left}</style></head><body>",
        "<h1>Generic attention-model explainability on the shipped models</h1>",
        "<table class='settings'>"
        + "".join(f"<tr><th>{html.escape(key)}</th><td>{html.escape(value)}</td></tr>" for key, value in settings.items())
        + "</table>",
        "<p>Perturbation AUC: higher is better for negative perturbation, lower for positive. Segmentation: COCO "
        "<code>segm</code> scores (%) from pycocotools.</p>",
    ]
    parts += [_html_table(table) for table in tables]
    for name, study in studies.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        for title, figure in study["figures"].items():
            parts.append(
                f"<figure><h3>{html.escape(title)}</h3><img src='data:image/png;base64,{_png(figure)}' alt='{html.escape(title)}'/>"
                f"<figcaption>{html.escape(CAPTIONS[title.split()[0]])}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "".join(parts)
