"""GPT-2: a decoder-only LM (learned absolute positions, fused ``c_attn`` projection); its attention
modules return the probabilities second under eager attention. Schedule and targets:
:mod:`captum_mm.models.decoder`.
"""

from typing import List

from transformers import GPT2LMHeadModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

from captum_mm.models.base import attention_specs_in
from captum_mm.models.decoder import SEQUENCE, DecoderOnlyAdapter
from captum_mm.models.registry import register_adapter
from captum_mm.spec import AttentionSpec, self_attention


@register_adapter
class GPT2Adapter(DecoderOnlyAdapter):
    model_classes = (GPT2LMHeadModel,)

    def attention_specs(self) -> List[AttentionSpec]:
        return attention_specs_in(self.model, GPT2Attention, self_attention(SEQUENCE))
