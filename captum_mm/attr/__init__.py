"""Captum ``Attribution`` classes explaining transformers through their attention."""

from captum_mm.attr._base import AttentionAttribution, Explanation
from captum_mm.attr.attnlrp import AttnLRP
from captum_mm.attr.captum_baselines import CaptumBaseline, CaptumFeatureAblation, CaptumIntegratedGradients
from captum_mm.attr.generic import GenericAttention
from captum_mm.attr.grad_cam import AttentionGradCam
from captum_mm.attr.last_layer import LastLayerAttribution
from captum_mm.attr.lrp import PartialLRP, TransformerAttribution
from captum_mm.attr.method import AttentionMethod
from captum_mm.attr.raw_attention import RawAttention
from captum_mm.attr.rollout import AttentionRollout
from captum_mm.attr.sinks import AttentionSinks, WithoutSinks, without_sinks

__all__ = [
    "AttentionAttribution",
    "AttentionGradCam",
    "AttentionMethod",
    "AttentionRollout",
    "AttentionSinks",
    "AttnLRP",
    "CaptumBaseline",
    "CaptumFeatureAblation",
    "CaptumIntegratedGradients",
    "Explanation",
    "GenericAttention",
    "LastLayerAttribution",
    "PartialLRP",
    "RawAttention",
    "TransformerAttribution",
    "WithoutSinks",
    "without_sinks",
]
