"""LLaMA-style decoder-only LMs: Llama, Qwen2, Mistral and Gemma (their attention modules share
Llama's layout: q/k/v/o projections, rotary embeddings, grouped-query attention, and return the
probabilities second under eager attention). Schedule and targets: :mod:`captum_mm.models.decoder`.
"""

from typing import List

from transformers import GemmaForCausalLM, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM
from transformers.models.gemma.modeling_gemma import GemmaAttention
from transformers.models.llama.modeling_llama import LlamaAttention
from transformers.models.mistral.modeling_mistral import MistralAttention
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention

from captum_mm.models.base import attention_specs_in
from captum_mm.models.decoder import SEQUENCE, DecoderOnlyAdapter
from captum_mm.models.registry import register_adapter
from captum_mm.spec import AttentionSpec, self_attention


@register_adapter
class LlamaAdapter(DecoderOnlyAdapter):
    model_classes = (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM, GemmaForCausalLM)
    attention_classes = (LlamaAttention, Qwen2Attention, MistralAttention, GemmaAttention)

    def attention_specs(self) -> List[AttentionSpec]:
        return attention_specs_in(self.model, self.attention_classes, self_attention(SEQUENCE))
