"""The main job: the paper's study on the shipped models (``captum-mm reproduce``).

Each model's evaluations are its study step (:data:`captum_mm.study.steps.STEPS`):
perturbation tests, plausibility and a Figure 1-style gallery for the VQA models,
weakly-supervised segmentation and per-query masks for DETR, perturbation tests, plausibility against the
evidence keywords and text heat maps for the text classifier. Here the models run in turn
and their tables and figures become a self-contained HTML report and the numbers JSON and CSV.
"""

import datetime
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict

import torch
import transformers

from captum_mm import __version__
from captum_mm.attr.catalog import select_methods, study_methods
from captum_mm.study.llava import SAMPLE_SHARE, llava_study
from captum_mm.study.options import Options
from captum_mm.study.report import csv_table, html_report, text_table
from captum_mm.study.steps import STEPS
from captum_mm.zoo.model_recipe import EASY_VQA, REVIEWS, SHAPE_SCENES
from captum_mm.zoo.recipes import RECIPES


def reproduce(options: Options) -> Dict[str, Any]:
    r"""
    Run the study, write ``report.html``, ``results.json`` and CSV tables (named by model and test) to ``options.output``.

    Args:
        options (Options): What to run: models, methods, sample counts, data, output folder.

    Returns:
        *dict*: Each model's numbers and the ``tables``, as ``results.json`` holds them.
    """
    started = time.monotonic()
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    methods = study_methods() if options.methods is None else select_methods(options.methods)
    studies = {}
    for step, name in enumerate(options.models, 1):
        print(f"Step {step} of {len(options.models)}: {name}: {STEPS[name].evaluations}", flush=True)
        studies[name] = STEPS[name].run(RECIPES[name], options, methods)
    tables = [table for study in studies.values() for table in study["tables"]]
    for table in tables:
        print(text_table(table), end="\n\n")
        (output / f"{table['name']}.csv").write_text(csv_table(table))
    numbers = {name: study["numbers"] for name, study in studies.items()}
    numbers["tables"] = tables
    (output / "results.json").write_text(json.dumps(numbers, indent=2))
    (output / "report.html").write_text(html_report(studies, _settings(options, methods, time.monotonic() - started)))
    print(f"Report: {output / 'report.html'}")
    return numbers


def _settings(options: Options, methods: Dict[str, Callable], seconds: float) -> Dict[str, str]:
    """The run's settings, as the report states them."""
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
                               f"{generative if any(STEPS[name].run is llava_study for name in options.models) else ''}, "
                               f"{options.gallery} in the gallery")
    if REVIEWS in datasets:
        settings["reviews"] = f"{options.samples} synthetic review test sentences for the text classifier"
    if SHAPE_SCENES in datasets:
        settings["images"] = f"{options.images} scenes from {options.images_dir or 'the synthetic shapes validation split'}"
    settings.update({
        "seed": str(options.seed),
        "run time": f"{int(seconds // 60)} min {seconds % 60:.0f} s",
        "threads": f"{torch.get_num_threads()} torch threads",
        "torch, transformers": f"{torch.__version__}, {transformers.__version__}",
    })
    return settings
