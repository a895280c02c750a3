"""Figures and HTML built on captum.attr.visualization, all usable headless; :func:`view`, an interactive HTML
view of explanations."""

from captum_mm.visualization.curves import plot_perturbation_curves, save_perturbation_study
from captum_mm.visualization.figures import (
    detection_masks_figure,
    methods_masks_figure,
    region_heatmap,
    region_relevance_image,
    relevance_gallery,
    text_records_html,
    text_relevance_html,
    text_relevance_record,
)
from captum_mm.visualization.interactive import ExplanationView, view
from captum_mm.visualization.text import text_heatmaps

__all__ = [
    "ExplanationView",
    "detection_masks_figure",
    "methods_masks_figure",
    "plot_perturbation_curves",
    "region_heatmap",
    "region_relevance_image",
    "relevance_gallery",
    "save_perturbation_study",
    "text_heatmaps",
    "text_records_html",
    "text_relevance_html",
    "text_relevance_record",
    "view",
]
