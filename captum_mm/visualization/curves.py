"""Perturbation curves, as in the paper's supplementary Figures 2-3."""

from typing import Optional

from matplotlib.figure import Figure

from captum_mm.metrics.study import StudyResult


def plot_perturbation_curves(result: StudyResult, title: Optional[str] = None) -> Figure:
    """One panel per setting (e.g. negative/positive image/text), one line per method, AUC in the legend."""
    settings = list(result.steps)
    figure = Figure(figsize=(4.2 * len(settings), 3.6))  # no pyplot: headless, no global state
    axes = figure.subplots(1, len(settings), squeeze=False)
    for axis, setting in zip(axes[0], settings):
        for method in result.scores:
            label = f"{method} ({result.auc(method, setting):.2f})"
            axis.plot(result.steps[setting], result.accuracy(method, setting), marker="o", markersize=3, label=label)
        axis.set_title(setting)
        axis.set_xlabel("fraction of tokens removed")
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
