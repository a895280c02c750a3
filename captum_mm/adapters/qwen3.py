"""Qwen3: Llama's layout (:mod:`captum_mm.adapters.llama`) with QK-norm, an RMSNorm over each head's queries and
keys between their projections and the rotary embedding, and sliding-window layers where the config sets them.

Lean capture: Qwen3's eager attention function is Llama's (scaling, mask, float32 softmax; a sliding window is a
mask; no soft cap, no sinks), so its attention is declared. LRP: the QK-norm passes relevance through, each element
of the normalised operand's relevance to the same element of the projection's output
(:mod:`captum_mm.lrp.attention`).
"""

from types import MappingProxyType
from typing import Tuple

from transformers import Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3DecoderLayer, Qwen3MLP, Qwen3RMSNorm

from captum_mm.adapters.llama import LlamaAdapter
from captum_mm.models.registry import register_adapter


@register_adapter
class Qwen3Adapter(LlamaAdapter):
    model_classes: Tuple[type, ...] = (Qwen3ForCausalLM,)
    attention_classes: Tuple[type, ...] = (Qwen3Attention,)
    layer_classes: Tuple[type, ...] = (Qwen3DecoderLayer,)
    mlp_classes: Tuple[type, ...] = (Qwen3MLP,)
    norm_classes: Tuple[type, ...] = (Qwen3RMSNorm,)
    qk_norm_classes: Tuple[type, ...] = (Qwen3RMSNorm,)
    attention_functions = MappingProxyType({Qwen3Attention: True})  # softmax in float32
