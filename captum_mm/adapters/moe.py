"""Sparse mixture-of-experts decoder-only LMs: Mixtral and Qwen3-MoE. Their layers are LLaMA's (pre-norm RMSNorm
layers, rotary embeddings, grouped-query attention returning the probabilities second under eager attention) with a
sparse MoE block for the MLP: a router picks the top-k experts of each token, the block sums their gated MLPs
weighted by the router. Qwen3-MoE adds QK-norm (an RMSNorm over each head of the projected queries and keys) and
may keep dense gated MLPs in some layers (``mlp_only_layers``, ``decoder_sparse_step``). Schedule and targets:
:mod:`captum_mm.adapters.decoder`.

LRP (README, "LRP"): as LLaMA's (:mod:`captum_mm.adapters.llama`); each MoE block by
:class:`~captum_mm.lrp.mixture.SparseMixture` (every selected expert's term ``g_k E_k(x)`` split in half between
router and expert, unselected experts none); QK-norm passes relevance through, as RMSNorm does.
"""

from types import MappingProxyType
from typing import Any, List, Optional, Tuple

from transformers import MixtralForCausalLM, Qwen3MoeForCausalLM
from transformers.models.mixtral.modeling_mixtral import (
    MixtralAttention,
    MixtralDecoderLayer,
    MixtralExperts,
    MixtralRMSNorm,
    MixtralSparseMoeBlock,
    MixtralTopKRouter,
)
from transformers.models.qwen3_moe.modeling_qwen3_moe import (
    Qwen3MoeAttention,
    Qwen3MoeDecoderLayer,
    Qwen3MoeExperts,
    Qwen3MoeMLP,
    Qwen3MoeRMSNorm,
    Qwen3MoeSparseMoeBlock,
    Qwen3MoeTopKRouter,
)

from captum_mm.adapters.decoder import SEQUENCE, DecoderOnlyAdapter
from captum_mm.adapters.llama import rotary_parts
from captum_mm.lrp.canonizers import Canonizer, GatedProduct
from captum_mm.lrp.composite import LRPStructure
from captum_mm.lrp.mixture import SparseMixture
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import attention_specs_in
from captum_mm.models.structure import pre_norm_structure
from captum_mm.spec import AttentionSpec, TensorSource, self_attention


@register_adapter
class MixtralAdapter(DecoderOnlyAdapter):
    model_classes: Tuple[type, ...] = (MixtralForCausalLM,)
    attention_class: type = MixtralAttention
    layer_class: type = MixtralDecoderLayer
    norm_class: type = MixtralRMSNorm
    moe_classes: Tuple[type, type, type] = (MixtralSparseMoeBlock, MixtralTopKRouter, MixtralExperts)
    dense_mlp_class: Optional[type] = None
    attention_functions = MappingProxyType({MixtralAttention: True})  # Llama's eager function, softmax in float32

    def attention_specs(self) -> List[AttentionSpec]:
        return attention_specs_in(self.model, self.attention_class, self_attention(SEQUENCE), rotary_parts)

    def lrp_structure(self) -> LRPStructure:  # pre-norm: x + attention(norm(x)), then + moe(norm(.))
        residuals = pre_norm_structure(self.model, self.layer_class, "post_attention_layernorm", "self_attn").residuals
        block, router, experts = self.moe_classes
        blocks: List[Any] = [module for module in self.model.modules() if isinstance(module, block)]
        mlps: List[Any] = [module for module in self.model.modules() if isinstance(module, self.dense_mlp_class or ())]
        canonizers: List[Canonizer] = [SparseMixture(moe, moe.gate, moe.experts) for moe in blocks]
        canonizers += [GatedProduct(mlp.down_proj, TensorSource(mlp.act_fn), TensorSource(mlp.up_proj)) for mlp in mlps]
        return LRPStructure(residuals, (self.norm_class,), canonizers, covered_types=(router, experts, self.norm_class))


@register_adapter
class Qwen3MoeAdapter(MixtralAdapter):
    model_classes = (Qwen3MoeForCausalLM,)
    attention_class = Qwen3MoeAttention
    layer_class = Qwen3MoeDecoderLayer
    norm_class = Qwen3MoeRMSNorm
    moe_classes = (Qwen3MoeSparseMoeBlock, Qwen3MoeTopKRouter, Qwen3MoeExperts)
    dense_mlp_class = Qwen3MoeMLP
    attention_functions = MappingProxyType({Qwen3MoeAttention: True})
