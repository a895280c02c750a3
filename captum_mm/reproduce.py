"""The main job: the paper's study on the shipped models (``captum-mm reproduce``).

Each model's evaluations are named by its recipe (:mod:`captum_mm.zoo.recipes`, run by
:mod:`captum_mm.zoo.studies`): perturbation tests, plausibility and a Figure 1-style gallery
for the VQA models, weakly-supervised segmentation and per-query masks for DETR. Here the
models run in turn and their tables and figures become a self-contained HTML report and
the numbers JSON and CSV.
"""

import base64
import datetime
import html
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from matplotlib.figure import Figure

from captum_mm.attr.catalog import select_methods
from captum_mm.zoo.recipes import EASY_VQA, RECIPES, SHAPE_SCENES
from captum_mm.zoo.study_llava import SAMPLE_SHARE, llava_study


@dataclass
class Options:
    """What ``captum-mm reproduce`` runs (defaults finish in minutes on 2 CPU cores)."""

    output: Path = Path("captum_mm_output")
    models: Sequence[str] = tuple(RECIPES)
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
        unknown = [name for name in self.models if name not in RECIPES]
        if unknown:
            raise ValueError(f"Unknown models {unknown}; the main job runs {', '.join(RECIPES)}.")
        select_methods(self.methods)
        stray = [name for name in self.checkpoints if name not in self.models]
        if stray:
            raise ValueError(f"Checkpoints given for {stray}, which are not among the models run ({', '.join(self.models)}).")
        if (self.images_dir is None) != (self.annotations is None):
            raise ValueError("Give both images_dir and annotations (a COCO-format dataset for DETR), or neither.")
        on_scenes = [name for name, recipe in RECIPES.items() if recipe.dataset == SHAPE_SCENES]
        if self.images_dir is not None and not set(on_scenes) & set(self.models):
            raise ValueError(
                f"images_dir/annotations replace the {SHAPE_SCENES} of the segmentation test, "
                f"but {' or '.join(on_scenes)} is not run."
            )


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


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


def reproduce(options: Options) -> Dict[str, Any]:
    """Run the study, write ``report.html``, ``results.json`` and CSV tables to ``options.output``."""
    started = time.monotonic()
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    methods = select_methods(options.methods)
    studies = {}
    for step, name in enumerate(options.models, 1):
        recipe = RECIPES[name]
        print(f"Step {step} of {len(options.models)}: {name}: {recipe.evaluations}", flush=True)
        studies[name] = recipe.study(recipe, options, methods)
    tables = [table for study in studies.values() for table in study["tables"]]
    for index, table in enumerate(tables):
        print(_text_table(table), end="\n\n")
        (output / f"table_{index + 1}.csv").write_text(_csv(table))
    numbers = {name: study["numbers"] for name, study in studies.items()}
    numbers["tables"] = tables
    (output / "results.json").write_text(json.dumps(numbers, indent=2))
    (output / "report.html").write_text(_report(studies, tables, _settings(options, methods, time.monotonic() - started)))
    print(f"Report: {output / 'report.html'}")
    return numbers


# What each kind of figure in the report shows and how to read it, by the first word of its title.
CAPTIONS = {
    "curves": "Perturbation curves: the model's accuracy (%, y axis; of its generated answer for the generative VLM) on "
    "the test questions as a growing fraction of its image regions or patches or its text tokens (x axis) is removed, least relevant first (negative perturbation: the higher "
    "the curve, the better the explanation) or most relevant first (positive: the lower, the better). One line per "
    "method; the legend gives each method's area under the curve, as in the tables.",
    "gallery": "Gallery: top row, test images with their question and the model's answer (for the generative VLM, "
    "one column per generated word piece, the piece named in the title). Below, one row per "
    "method: the image with each region (patch) multiplied by its relevance (scaled to the maximum, so irrelevant regions "
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
    datasets = {RECIPES[name].dataset for name in options.models}
    if EASY_VQA in datasets:
        generative = f" ({max(1, options.samples // SAMPLE_SHARE)} for the generative VLM, whose every perturbed forward generates)"
        settings["samples"] = (f"{options.samples} easy-VQA test questions per VQA model"
                               f"{generative if any(RECIPES[name].study is llava_study for name in options.models) else ''}, "
                               f"{options.gallery} in the gallery")
    if SHAPE_SCENES in datasets:
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
