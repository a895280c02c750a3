"""LLaMA-style decoder-only LMs: Llama, Qwen2, Mistral and Gemma, whose layers share Llama's layout:
pre-norm (RMSNorm) layers, attention with q/k/v/o projections, rotary position embeddings and
grouped-query attention (returning the probabilities second under eager attention), and a gated MLP
``down(act(gate(x)) * up(x))``. Schedule and targets: :mod:`captum_mm.adapters.decoder`.

LRP (README, "LRP"): RMSNorm and the activation pass relevance through (as LayerNorm does in the
reference); rotary embeddings and grouped-query heads are bias-free linear maps between the
projections and the attention's operands, crossed by their transpose
(:mod:`captum_mm.lrp.attention`); the gated product gives each factor half
(:class:`~captum_mm.lrp.canonizers.GatedProduct`).
"""

from types import MappingProxyType
from typing import Any, List, Tuple

from transformers import GemmaForCausalLM, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM
from transformers.models.gemma.modeling_gemma import GemmaAttention, GemmaDecoderLayer, GemmaMLP, GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer, LlamaMLP, LlamaRMSNorm
from transformers.models.mistral.modeling_mistral import MistralAttention, MistralDecoderLayer, MistralMLP, MistralRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2DecoderLayer, Qwen2MLP, Qwen2RMSNorm

from captum_mm.adapters.decoder import SEQUENCE, DecoderOnlyAdapter
from captum_mm.lrp.canonizers import GatedProduct
from captum_mm.lrp.composite import LRPStructure
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import attention_specs_in
from captum_mm.models.structure import pre_norm_structure
from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource, self_attention


def rotary_parts(module: Any) -> AttentionParts:
    """q/k/v/o projections, grouped-query heads, rotary embeddings, and the QK-norm of families that have one
    (``q_norm``/``k_norm``: Qwen3, Qwen3-MoE, Gemma 3)."""
    config = module.config
    return AttentionParts(module.q_proj, module.k_proj, module.v_proj, config.num_attention_heads, module.o_proj,
                          key_value_heads=config.num_key_value_heads, rotary=True,
                          query_norm=getattr(module, "q_norm", None), key_norm=getattr(module, "k_norm", None))


@register_adapter
class LlamaAdapter(DecoderOnlyAdapter):
    model_classes: Tuple[type, ...] = (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM, GemmaForCausalLM)
    attention_classes: Tuple[type, ...] = (LlamaAttention, Qwen2Attention, MistralAttention, GemmaAttention)
    layer_classes: Tuple[type, ...] = (LlamaDecoderLayer, Qwen2DecoderLayer, MistralDecoderLayer, GemmaDecoderLayer)
    mlp_classes: Tuple[type, ...] = (LlamaMLP, Qwen2MLP, MistralMLP, GemmaMLP)
    norm_classes: Tuple[type, ...] = (LlamaRMSNorm, Qwen2RMSNorm, MistralRMSNorm, GemmaRMSNorm)
    #: The QK-norm classes inside the attention modules (the attention rule passes relevance through them).
    qk_norm_classes: Tuple[type, ...] = ()
    attention_functions = MappingProxyType(dict.fromkeys(attention_classes, True))  # each softmax in float32

    def attention_specs(self) -> List[AttentionSpec]:
        return attention_specs_in(self.model, self.attention_classes, self_attention(SEQUENCE), rotary_parts)

    def lrp_structure(self) -> LRPStructure:  # pre-norm: x + attention(norm(x)), then + mlp(norm(.))
        residuals = pre_norm_structure(self.model, self.layer_classes, "post_attention_layernorm", "self_attn").residuals
        return LRPStructure(residuals, self.norm_classes, self.gated_products(), self.qk_norm_classes)

    def gated_products(self) -> List[GatedProduct]:
        """Each gated MLP's ``act(gate(x)) * up(x)``, read by its ``down_proj``."""
        mlps: List[Any] = [module for module in self.model.modules() if isinstance(module, self.mlp_classes)]
        return [GatedProduct(mlp.down_proj, TensorSource(mlp.act_fn), TensorSource(mlp.up_proj)) for mlp in mlps]
