"""T5: an encoder-decoder LM with pre-norm sublayers (RMS ``T5LayerNorm``), relative position biases
added to the attention scores, and a plain or gated (T5 v1.1, Flan-T5) feed-forward block; its
attention modules return the probabilities third under eager attention. Schedule and targets:
:mod:`captum_mm.adapters.encoder_decoder`. LRP: the norms pass relevance through, the position bias
takes none (the scores' z-rule splits ``Q K^T`` alone), the gated product gives each factor half.
"""

from types import MappingProxyType
from typing import Any, List, Sequence, Tuple, cast

from torch import nn
from transformers import T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import (
    T5Attention,
    T5DenseGatedActDense,
    T5LayerCrossAttention,
    T5LayerFF,
    T5LayerNorm,
    T5LayerSelfAttention,
)

from captum_mm.adapters.encoder_decoder import EncoderDecoderAdapter
from captum_mm.lrp.canonizers import GatedProduct
from captum_mm.lrp.composite import LRPStructure, ResidualRuleSite
from captum_mm.models.registry import register_adapter
from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource


def t5_attention_modules(t5: Any) -> Tuple[Sequence[nn.Module], Sequence[nn.Module], Sequence[nn.Module]]:
    """A T5's encoder self-attention, decoder self-attention and decoder cross-attention modules."""
    encoder, decoder = cast(Sequence[Any], t5.encoder.block), cast(Sequence[Any], t5.decoder.block)
    return ([block.layer[0].SelfAttention for block in encoder], [block.layer[0].SelfAttention for block in decoder],
            [block.layer[1].EncDecAttention for block in decoder])


def t5_attention_spec(name: str, module: Any, roles: Tuple[Tuple[str, str], ...]) -> AttentionSpec:
    parts = AttentionParts(module.q, module.k, module.v, module.n_heads, module.o)
    return AttentionSpec(name, module, TensorSource(module, index=2), roles, parts=parts)


def t5_lrp_structure(t5: nn.Module) -> LRPStructure:
    """Each sublayer computes ``x + dropout(branch(norm(x)))``: a residual at its output (the first of a
    tuple for attention sublayers), the branch its dropout's output, the skip its input."""
    residuals: List[ResidualRuleSite] = []
    for sublayer in t5.modules():
        if isinstance(sublayer, (T5LayerSelfAttention, T5LayerCrossAttention, T5LayerFF)):
            index = None if isinstance(sublayer, T5LayerFF) else 0
            residuals.append(ResidualRuleSite(TensorSource(sublayer, index=index), TensorSource(sublayer.dropout),
                                              TensorSource(sublayer, "hidden_states")))
    gated = [
        GatedProduct(block.dropout, TensorSource(block.act), TensorSource(block.wi_1))
        for block in t5.modules() if isinstance(block, T5DenseGatedActDense)
    ]
    return LRPStructure(residuals, (T5LayerNorm,), gated)


@register_adapter
class T5Adapter(EncoderDecoderAdapter):
    model_classes = (T5ForConditionalGeneration,)
    attention_functions = MappingProxyType({T5Attention: False})
    model: T5ForConditionalGeneration

    def attention_modules(self) -> Tuple[Sequence[nn.Module], Sequence[nn.Module], Sequence[nn.Module]]:
        return t5_attention_modules(self.model)

    def attention_spec(self, name: str, module: Any, roles: Tuple[Tuple[str, str], ...]) -> AttentionSpec:
        return t5_attention_spec(name, module, roles)

    def lrp_structure(self) -> LRPStructure:
        return t5_lrp_structure(self.model)
