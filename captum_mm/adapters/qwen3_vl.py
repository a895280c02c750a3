"""Qwen3-VL: Qwen2-VL's layout (:mod:`captum_mm.adapters.qwen2_vl`) -- flattened patches, no windows, a patch merger
joining each ``m x m`` block into one image token -- with a learned position embedding (interpolated onto each image's
grid and added to the patch embeddings), LayerNorm and plain-MLP vision blocks, a Qwen3 LM with QK-norm
(:mod:`captum_mm.adapters.qwen3`) and interleaved multimodal rotary positions, and *deepstack*: the outputs of the
vision blocks ``vision_config.deepstack_visual_indexes`` go through their own mergers and are added to the LM's hidden
states at the image tokens after LM layers ``0 ... k-1``.

Schedule and readouts as Qwen2-VL's; the image readout follows the main merger's path only (``R^{g,tok} . P . R^{vv}``
over every vision block): a deepstack addition lands on the same image tokens, whose LM relevance ``R^{g,tok}`` does
not tell it from the embedding, and its features are an earlier state of the same tower, on the same token map.
LRP: the deepstack additions are plain sums at the image tokens, split by the z-rule (``a R/z``, ``b R/z``), so the
LM's input and the deepstack mergers' outputs together hold the logit's relevance; the vision blocks' and mergers'
rules as Qwen2-VL's, the QK-norm passed through as Qwen3's. Lean capture serves the LM's attention (its eager function
is Llama's); the vision attention is recorded in its attention function, as Qwen2-VL's.

Qwen3-VL-MoE: the same, with Qwen3-MoE's sparse MoE blocks in the LM (:mod:`captum_mm.adapters.moe`): LRP through each
by :class:`~captum_mm.lrp.mixture.SparseMixture`, dense gated MLPs (``mlp_only_layers``) as LLaMA's.
"""

from types import MappingProxyType
from typing import Any, List, Tuple

from transformers import Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    Qwen3VLTextAttention,
    Qwen3VLTextDecoderLayer,
    Qwen3VLTextMLP,
    Qwen3VLTextRMSNorm,
    Qwen3VLVisionAttention,
    Qwen3VLVisionBlock,
)
from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import (
    Qwen3VLMoeTextAttention,
    Qwen3VLMoeTextDecoderLayer,
    Qwen3VLMoeTextExperts,
    Qwen3VLMoeTextMLP,
    Qwen3VLMoeTextRMSNorm,
    Qwen3VLMoeTextSparseMoeBlock,
    Qwen3VLMoeTextTopKRouter,
    Qwen3VLMoeVisionAttention,
    Qwen3VLMoeVisionBlock,
)

from captum_mm.adapters.qwen2_vl import Qwen2VLAdapter
from captum_mm.lrp.composite import LRPStructure
from captum_mm.lrp.mixture import SparseMixture
from captum_mm.models.registry import register_adapter


@register_adapter
class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL: Qwen2-VL's adapter with a QK-norm LM, the image read through the main merger's path.

    Args:
        model (nn.Module): The Qwen3-VL model the adapter serves.
    """

    model_classes: Tuple[type, ...] = (Qwen3VLForConditionalGeneration,)
    model: Qwen3VLForConditionalGeneration  # type: ignore[assignment]
    attention_classes: Tuple[type, ...] = (Qwen3VLTextAttention,)
    vision_attention_classes: Tuple[type, ...] = (Qwen3VLVisionAttention,)
    vision_layer_classes: Tuple[type, ...] = (Qwen3VLVisionBlock,)
    attention_functions = MappingProxyType({Qwen3VLTextAttention: True})  # softmax in float32
    layer_classes: Tuple[type, ...] = (Qwen3VLTextDecoderLayer,)
    mlp_classes: Tuple[type, ...] = (Qwen3VLTextMLP,)
    norm_classes: Tuple[type, ...] = (Qwen3VLTextRMSNorm,)
    qk_norm_classes: Tuple[type, ...] = (Qwen3VLTextRMSNorm,)


@register_adapter
class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    """Qwen3-VL-MoE: Qwen3-VL's adapter with sparse mixture-of-experts blocks in the LM.

    Args:
        model (nn.Module): The Qwen3-VL-MoE model the adapter serves.
    """

    model_classes = (Qwen3VLMoeForConditionalGeneration,)
    model: Qwen3VLMoeForConditionalGeneration  # type: ignore[assignment]
    attention_classes = (Qwen3VLMoeTextAttention,)
    vision_attention_classes = (Qwen3VLMoeVisionAttention,)
    vision_layer_classes = (Qwen3VLMoeVisionBlock,)
    attention_functions = MappingProxyType({Qwen3VLMoeTextAttention: True})  # softmax in float32
    layer_classes = (Qwen3VLMoeTextDecoderLayer,)
    mlp_classes = (Qwen3VLMoeTextMLP,)  # the dense layers' (mlp_only_layers)
    norm_classes = (Qwen3VLMoeTextRMSNorm,)
    qk_norm_classes = (Qwen3VLMoeTextRMSNorm,)

    def lrp_structure(self) -> LRPStructure:
        """Qwen3-VL's, each sparse MoE block by :class:`~captum_mm.lrp.mixture.SparseMixture`."""
        blocks: List[Any] = [m for m in self.language_model().modules() if isinstance(m, Qwen3VLMoeTextSparseMoeBlock)]
        mixtures = LRPStructure([], canonizers=[SparseMixture(block, block.gate, block.experts) for block in blocks],
                                covered_types=(Qwen3VLMoeTextTopKRouter, Qwen3VLMoeTextExperts))
        return super().lrp_structure() + mixtures
