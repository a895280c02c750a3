"""Evaluations: perturbation curves and their AUC, bridges to Captum's metrics."""

from captum_mm.metrics.perturbation import (
    DEFAULT_STEPS,
    LXMERT_IMAGE,
    LXMERT_TEXT,
    VISUAL_BERT_IMAGE,
    VISUAL_BERT_IMAGE_STEPS,
    VISUAL_BERT_TEXT,
    PerturbationCurve,
    TokenGroup,
    accuracy,
    area_under_curve,
    keeps_prediction,
    perturbation_curve,
    vqa_score,
)

__all__ = [
    "DEFAULT_STEPS",
    "LXMERT_IMAGE",
    "LXMERT_TEXT",
    "VISUAL_BERT_IMAGE",
    "VISUAL_BERT_IMAGE_STEPS",
    "VISUAL_BERT_TEXT",
    "PerturbationCurve",
    "TokenGroup",
    "accuracy",
    "area_under_curve",
    "keeps_prediction",
    "perturbation_curve",
    "vqa_score",
]
