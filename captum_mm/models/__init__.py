"""Architecture adapters: capture attention on HuggingFace models and describe its schedule."""

from captum_mm.models import bart, bert, blip, blip2, clip, detr, gpt2, idefics3, llama, llava, lxmert, opt, qwen2_vl, t5, vilt, visual_bert, vit  # noqa: F401  (registers the adapters)
from captum_mm.models.base import ArchitectureAdapter, TargetSelection
from captum_mm.models.target_options import TargetOptions
from captum_mm.models.capture import AttentionCall, AttentionRecord, capture_attention
from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource
from captum_mm.models.registry import adapter_for, register_adapter, supported_classes

__all__ = [
    "ArchitectureAdapter",
    "AttentionCall",
    "AttentionParts",
    "AttentionRecord",
    "AttentionSpec",
    "TargetOptions",
    "TargetSelection",
    "TensorSource",
    "adapter_for",
    "capture_attention",
    "register_adapter",
    "supported_classes",
]
