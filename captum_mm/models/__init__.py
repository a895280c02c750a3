"""Architecture adapters: capture attention on HuggingFace models and describe its schedule."""

import sys

from captum_mm.models.base import ArchitectureAdapter, TargetSelection
from captum_mm.models.target_options import TargetOptions
from captum_mm.models.capture import AttentionCall, AttentionRecord, capture_attention
from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource
from captum_mm.models.registry import adapter_for, import_modules, register_adapter, supported_classes

import_modules(sys.modules[__name__])  # every adapter file registers its adapters

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
