"""LRP for unmodified transformers, as modified gradients applied inside a context manager."""

from captum_mm.lrp.attnlrp import DetachedNorm, PlainLinear, UniformAttention, ZResidual, attnlrp_rules
from captum_mm.lrp.canonizers import Canonizer, PositionEmbeddingInput
from captum_mm.lrp.composite import (
    LRPState,
    LRPStructure,
    ResidualRuleSite,
    attention_relevance,
    lrp_rules,
    relevance_seed,
)
from captum_mm.lrp.rules import (
    AlphaBeta,
    Epsilon,
    HalvedAttention,
    LayerScale,
    LinearRule,
    PassThrough,
    ProportionalResidual,
    RuleSet,
    TanhGate,
    linear_weight,
)

__all__ = [
    "AlphaBeta",
    "Canonizer",
    "DetachedNorm",
    "Epsilon",
    "HalvedAttention",
    "LRPState",
    "LRPStructure",
    "LayerScale",
    "LinearRule",
    "PassThrough",
    "PlainLinear",
    "PositionEmbeddingInput",
    "ProportionalResidual",
    "ResidualRuleSite",
    "RuleSet",
    "TanhGate",
    "UniformAttention",
    "ZResidual",
    "attention_relevance",
    "attnlrp_rules",
    "linear_weight",
    "lrp_rules",
    "relevance_seed",
]
