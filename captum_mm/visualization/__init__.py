"""Figures and HTML built on captum.attr.visualization; all usable headless."""

from captum_mm.visualization.curves import plot_perturbation_curves

__all__ = ["plot_perturbation_curves"]
