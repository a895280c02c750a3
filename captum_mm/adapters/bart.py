"""BART: an encoder-decoder LM with post-norm layers; its attention modules (``BartAttention``) return
the probabilities second under eager attention. Schedule and targets:
:mod:`captum_mm.adapters.encoder_decoder`.
"""

from types import MappingProxyType
from typing import Any, List, Sequence, Tuple

from torch import nn
from transformers import BartForConditionalGeneration
from transformers.models.bart.modeling_bart import BartAttention

from captum_mm.adapters.encoder_decoder import EncoderDecoderAdapter
from captum_mm.lrp.composite import LRPStructure, ResidualRuleSite
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import projected_parts
from captum_mm.spec import AttentionSpec, TensorSource


@register_adapter
class BartAdapter(EncoderDecoderAdapter):
    model_classes = (BartForConditionalGeneration,)
    attention_functions = MappingProxyType({BartAttention: False})
    model: BartForConditionalGeneration

    def attention_modules(self) -> Tuple[Sequence[nn.Module], Sequence[nn.Module], Sequence[nn.Module]]:
        encoder, decoder = self.model.model.encoder.layers, self.model.model.decoder.layers
        return [layer.self_attn for layer in encoder], [layer.self_attn for layer in decoder], [layer.encoder_attn for layer in decoder]

    def attention_spec(self, name: str, module: Any, roles: Tuple[Tuple[str, str], ...]) -> AttentionSpec:
        return AttentionSpec(name, module, TensorSource(module, index=1), roles, parts=projected_parts(module, module.num_heads, module.out_proj))

    def lrp_structure(self) -> LRPStructure:
        """Post-norm: each ``norm(x + branch)`` is a residual at the norm's input, the branch an attention
        module's output or ``fc2``'s, the skip the layer's input or the previous norm's output."""
        residuals: List[ResidualRuleSite] = []
        for layer in self.model.model.encoder.layers:
            residuals += [
                _added(layer.self_attn_layer_norm, TensorSource(layer.self_attn, index=0), TensorSource(layer, "hidden_states")),
                _added(layer.final_layer_norm, TensorSource(layer.fc2), TensorSource(layer.self_attn_layer_norm)),
            ]
        for layer in self.model.model.decoder.layers:
            residuals += [
                _added(layer.self_attn_layer_norm, TensorSource(layer.self_attn, index=0), TensorSource(layer, "hidden_states")),
                _added(layer.encoder_attn_layer_norm, TensorSource(layer.encoder_attn, index=0), TensorSource(layer.self_attn_layer_norm)),
                _added(layer.final_layer_norm, TensorSource(layer.fc2), TensorSource(layer.encoder_attn_layer_norm)),
            ]
        return LRPStructure(residuals)


def _added(norm: nn.Module, branch: TensorSource, skip: TensorSource) -> ResidualRuleSite:
    return ResidualRuleSite(TensorSource(norm, "input"), branch, skip)
