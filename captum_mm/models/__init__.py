"""The architecture-adapter interface: what an adapter declares (`ArchitectureAdapter`, its forward
arguments, targets, spec and structure builders) and the registry that picks one for a model. The families
themselves live in `captum_mm.adapters`, capture in `captum_mm.capture`."""

from captum_mm import adapters  # noqa: F401,E402  (registers every family; after the interface it builds on)
from captum_mm.capture.record import AttentionCall, AttentionRecord, capture_attention
from captum_mm.models.adapter import ArchitectureAdapter
from captum_mm.models.registry import adapter_for, register_adapter, supported_classes
from captum_mm.models.targets import TargetOptions, TargetSelection
from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource

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
