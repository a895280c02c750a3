"""GPT-2: a decoder-only LM (learned absolute positions, fused ``c_attn`` projection); its attention
modules return the probabilities second under eager attention. Schedule and targets:
:mod:`captum_mm.adapters.decoder`.

LRP (README, "LRP"): the ``Conv1D`` projections take the linear rules (their weight is ``nn.Linear``'s
transposed), the fused ``c_attn`` output is split into Q, K and V for the attention rule; the blocks are
pre-norm (``x + attn(ln_1(x))``, then ``+ mlp(ln_2(.))``), LayerNorm and the activation pass relevance through.
"""

from types import MappingProxyType
from typing import Any, List, Optional

from transformers import GPT2LMHeadModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2Block

from captum_mm.adapters.decoder import SEQUENCE, DecoderOnlyAdapter
from captum_mm.lrp.composite import LRPStructure
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import attention_specs_in
from captum_mm.models.structure import pre_norm_structure
from captum_mm.spec import AttentionParts, AttentionSpec, self_attention


def fused_parts(module: Any) -> Optional[AttentionParts]:
    """Self-attention's ``c_attn`` gives Q, K and V fused (cross-attention's gives K and V only: no parts)."""
    if module.is_cross_attention:
        return None
    return AttentionParts(module.c_attn, module.c_attn, module.c_attn, module.num_heads, module.c_proj, fused=True)


@register_adapter
class GPT2Adapter(DecoderOnlyAdapter):
    model_classes = (GPT2LMHeadModel,)
    attention_functions = MappingProxyType({GPT2Attention: False})
    model: GPT2LMHeadModel

    def attention_specs(self) -> List[AttentionSpec]:
        return attention_specs_in(self.model, GPT2Attention, self_attention(SEQUENCE), fused_parts)

    def lrp_structure(self) -> LRPStructure:
        if self.model.config.add_cross_attention:
            raise NotImplementedError("GPT-2 with cross-attention layers (config.add_cross_attention) has no LRP structure yet.")
        return pre_norm_structure(self.model, GPT2Block, "ln_2", "attn")
