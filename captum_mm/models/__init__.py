"""Architecture adapters: capture attention on HuggingFace models and describe its schedule."""

from captum_mm.models import bert, clip, detr, lxmert, vilt, visual_bert, vit  # noqa: F401  (registers the adapters)
from captum_mm.models.base import ArchitectureAdapter, TargetSelection
from captum_mm.models.capture import AttentionRecord, AttentionSite, capture_attention
from captum_mm.models.registry import adapter_for, register_adapter, supported_classes

__all__ = [
    "ArchitectureAdapter",
    "AttentionRecord",
    "AttentionSite",
    "TargetSelection",
    "adapter_for",
    "capture_attention",
    "register_adapter",
    "supported_classes",
]
