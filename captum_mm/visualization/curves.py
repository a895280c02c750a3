"""Perturbation curves, as in the paper's supplementary Figures 2-3."""

import math
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from matplotlib.figure import Figure

from captum_mm.metrics.study import StudyResult

DIRECTIONS = {"negative": "higher is better", "positive": "lower is better"}
LINE_STYLES = ("-", "--", ":")


def plot_perturbation_curves(result: StudyResult, title: Optional[str] = None) -> Figure:
    """Perturbation curves: one panel per setting (e.g. negative/positive image/text), two panels a row; one line
    per method, its AUC in the legend below the panel. Methods with identical curves share one line, their names
    joined by " = " in the legend; a method keeps its colour (and, past ten methods, its line style) in every panel.

    Args:
        result (StudyResult): From :func:`captum_mm.metrics.study.run_perturbation_study`.
        title (str, optional): The figure's title. Default: None

    Returns:
        *Figure*: The curves.
    """
    settings = list(result.steps)
    columns = min(2, len(settings))
    rows = math.ceil(len(settings) / columns)
    legend_rows = math.ceil(len(result.scores) / 2)
    figure = Figure(figsize=(5.2 * columns, (3.0 + 0.2 * legend_rows) * rows), layout="constrained")  # no pyplot
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for axis, setting in zip(axes, settings):
        curves: Dict[Tuple[float, ...], List[str]] = {}
        for method in result.scores:
            curves.setdefault(tuple(result.accuracy(method, setting)), []).append(method)
        for curve, methods in curves.items():
            index = list(result.scores).index(methods[0])
            label = textwrap.fill(f"{' = '.join(methods)} ({result.auc(methods[0], setting):.2f})", 40)  # narrow legends
            axis.plot(result.steps[setting], curve, marker="o", markersize=3, label=label, color=f"C{index % 10}",
                      linestyle=LINE_STYLES[index // 10 % len(LINE_STYLES)])
        direction = DIRECTIONS.get(setting.split()[0])
        axis.set_title(f"{setting} ({direction})" if direction else setting, fontsize=10)
        axis.set_xlabel(f"fraction of {setting.split()[-1]} tokens removed")
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7, frameon=False, title="method (AUC)",
                    title_fontsize=7)
    for axis in axes[len(settings):]:
        axis.set_visible(False)
    if title:
        figure.suptitle(title)
    return figure


def save_perturbation_study(result: StudyResult, folder: Path, title: Optional[str] = None) -> None:
    """``results.json`` (:meth:`StudyResult.save`) and ``curves.png`` (:func:`plot_perturbation_curves`) in ``folder``.

    Args:
        result (StudyResult): The study's result.
        folder (Path): Where to write (created if missing).
        title (str, optional): The curves' title. Default: None
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result.save(folder / "results.json")
    plot_perturbation_curves(result, title).savefig(folder / "curves.png", dpi=120)
