"""Phi-3: a LLaMA-style decoder-only LM (pre-norm RMSNorm layers, rotary position embeddings, grouped-query
attention returning the probabilities second under eager attention) whose projections are fused: ``qkv_proj``
gives Q, K and V concatenated (``heads * d``, then ``key_value_heads * d`` twice), ``gate_up_proj`` the gated
MLP's two inputs (``down(act(gate) * up)``). Schedule and targets: :mod:`captum_mm.adapters.decoder`.

LRP (README, "LRP"): as LLaMA's (:mod:`captum_mm.adapters.llama`), the fused ``qkv_proj`` split into Q, K and V
for the attention rule, the gated product's up factor read from ``gate_up_proj``'s second half
(:class:`~captum_mm.lrp.canonizers.GatedProduct` with ``fused``); a partial rotary embedding
(``partial_rotary_factor``) rotates the heads' first features only, and the residual dropouts pass relevance on.
"""

from types import MappingProxyType
from typing import Any, List

from transformers import Phi3ForCausalLM
from transformers.models.phi3.modeling_phi3 import Phi3Attention, Phi3DecoderLayer, Phi3MLP, Phi3RMSNorm

from captum_mm.adapters.decoder import SEQUENCE, DecoderOnlyAdapter
from captum_mm.lrp.canonizers import GatedProduct
from captum_mm.lrp.composite import LRPStructure
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import attention_specs_in
from captum_mm.models.structure import pre_norm_structure
from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource, self_attention


def fused_rotary_parts(module: Any) -> AttentionParts:
    """Phi-3's attention: one ``qkv_proj`` for grouped-query Q, K and V, rotary embeddings, ``o_proj``."""
    config, qkv = module.config, module.qkv_proj
    return AttentionParts(qkv, qkv, qkv, config.num_attention_heads, module.o_proj,
                          key_value_heads=config.num_key_value_heads, rotary=True, fused=True)


@register_adapter
class Phi3Adapter(DecoderOnlyAdapter):
    model_classes = (Phi3ForCausalLM,)
    attention_functions = MappingProxyType({Phi3Attention: True})  # Llama's eager function, softmax in float32
    model: Phi3ForCausalLM

    def attention_specs(self) -> List[AttentionSpec]:
        return attention_specs_in(self.model, Phi3Attention, self_attention(SEQUENCE), fused_rotary_parts)

    def lrp_structure(self) -> LRPStructure:  # pre-norm: x + dropout(attention(norm(x))), then + dropout(mlp(norm(.)))
        residuals = pre_norm_structure(self.model, Phi3DecoderLayer, "post_attention_layernorm", "self_attn").residuals
        mlps: List[Any] = [module for module in self.model.modules() if isinstance(module, Phi3MLP)]
        gated = [GatedProduct(mlp.down_proj, TensorSource(mlp.activation_fn), TensorSource(mlp.gate_up_proj), fused=True)
                 for mlp in mlps]
        return LRPStructure(residuals, (Phi3RMSNorm,), gated)
