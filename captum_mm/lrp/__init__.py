"""LRP for unmodified transformers, as modified gradients applied inside a context manager."""

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
    "Epsilon",
    "HalvedAttention",
    "LRPState",
    "LRPStructure",
    "LayerScale",
    "LinearRule",
    "PassThrough",
    "PositionEmbeddingInput",
    "ProportionalResidual",
    "ResidualRuleSite",
    "RuleSet",
    "TanhGate",
    "attention_relevance",
    "linear_weight",
    "lrp_rules",
    "relevance_seed",
]
