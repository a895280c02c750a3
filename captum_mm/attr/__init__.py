"""Captum ``Attribution`` classes explaining transformers through their attention."""

from captum_mm.attr._base import AttentionAttribution, Explanation
from captum_mm.attr.generic import GenericAttention

__all__ = ["AttentionAttribution", "Explanation", "GenericAttention"]
