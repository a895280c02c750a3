"""InternVL (``InternVLForConditionalGeneration``): an InternViT tower (a class token, absolute position embeddings,
pre-norm layers whose branches are scaled by ``lambda_1``/``lambda_2`` before each residual addition), a pixel
shuffle of each ``s x s`` block of patches into one token (``s = 1 / downsample_ratio``), an MLP projector
(LayerNorm, linear, GELU, linear) and a Qwen2/LLaMA-style LM.

Schedule and readouts of the VLM base (:mod:`captum_mm.adapters.vision_language`). The LM reads the tower's hidden
states at ``vision_feature_layer`` without the class token under the "default" select strategy (as LLaVA's). ``P``
is the pixel shuffle: each image token spreads its relevance evenly over the ``s^2`` patches it is made of
(computed by the model's own ``pixel_shuffle`` applied to patch indices: HF names its axes width and height, but
its two permutes cancel, so the blocks are row-major as Idefics3's; tested by perturbing one patch). LRP: the layer scales scale the residual branches (:class:`~captum_mm.lrp.rules.LayerScale`, a ``ResidualRuleSite`` gate), the norms and the
projector's LayerNorm pass relevance through, its linears take the linear rules; InternViT-6B's QK-norm
(``use_qk_norm``, an RMSNorm over all heads' queries or keys) passes it through inside the attention rule.
"""

from dataclasses import replace
from types import MappingProxyType
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

import torch
from torch import Tensor, nn
from transformers import InternVLForConditionalGeneration
from transformers.models.internvl.modeling_internvl import (
    InternVLVisionAttention,
    InternVLVisionLayer,
    InternVLVisionRMSNorm,
)

from captum_mm.adapters.llama import LlamaAdapter
from captum_mm.adapters.llava import LlavaAdapter
from captum_mm.adapters.vision_language import VisionLanguageAdapter
from captum_mm.lrp.composite import LRPStructure, ResidualRuleSite
from captum_mm.lrp.rules import LayerScale
from captum_mm.models.arguments import require
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import attention_specs_in, projected_parts
from captum_mm.models.structure import first_argument
from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource, self_attention


@register_adapter
class InternVLAdapter(VisionLanguageAdapter):
    """InternVL: the InternViT tower's tokens at ``vision_feature_layer``, pixel-shuffled into image tokens.

    Args:
        model (nn.Module): The InternVL model the adapter serves.
    """

    model_classes = (InternVLForConditionalGeneration,)
    model: InternVLForConditionalGeneration
    vision_attention_classes = (InternVLVisionAttention,)
    vision_layer_classes = (InternVLVisionLayer,)
    # InternViT's eager function takes its softmax in the model's dtype (no float32 upcast)
    attention_functions = MappingProxyType({**LlamaAdapter.attention_functions, InternVLVisionAttention: False})
    first_feature = LlavaAdapter.first_feature
    feature_depth = LlavaAdapter.feature_depth

    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    def vision_specs(self, names: Dict[nn.Module, str]) -> List[AttentionSpec]:
        return attention_specs_in(self.vision_tower(), self.vision_attention_classes, self_attention("vision"),
                                  _vision_parts, names=names)

    def _vision_layers(self) -> Sequence[Any]:
        return cast(Sequence[Any], cast(Any, self.vision_tower()).encoder.layer)

    def _has_class_token(self) -> bool:
        return True

    def _patch_size(self) -> int:
        size = cast(Any, self.model.config.vision_config).patch_size
        sizes = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        require(sizes[0] == sizes[1], f"InternVL with non-square patches {sizes} is not explained.")
        return int(sizes[0])

    def _scale(self) -> int:
        return round(1 / float(self.model.config.downsample_ratio))

    def _features_per_image(self, pixels: Tensor, arguments: Dict[str, Any]) -> int:
        patch = self._patch_size()
        tokens = self.token_grid((pixels.shape[-2] // patch, pixels.shape[-1] // patch))
        return tokens[0] * tokens[1]

    def token_grid(self, grid: Tuple[int, int]) -> Tuple[int, int]:
        return grid[0] // self._scale(), grid[1] // self._scale()

    def token_map(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """The model's own pixel shuffle applied to the patch indices: which patches make each token."""
        cells = grid[0] * grid[1]
        indices = torch.arange(cells, dtype=torch.float64).reshape(1, grid[0], grid[1], 1)
        shuffled = self.model.model.pixel_shuffle(indices, scale_factor=float(self.model.config.downsample_ratio))
        patches = shuffled.reshape(-1, shuffled.shape[-1]).long()
        token_map = torch.zeros(patches.shape[0], cells, dtype=torch.float64)
        token_map.scatter_(1, patches, 1.0 / patches.shape[1])
        return token_map

    def lrp_structure(self) -> LRPStructure:
        """The LM's (as LLaMA's), and each InternViT layer's: ``h = x + lambda_1 * attention(norm_before(x))``, seen
        at ``layernorm_after``'s input, then ``h + lambda_2 * mlp(layernorm_after(h))`` at the layer's output."""
        vision: List[ResidualRuleSite] = []
        for layer in self._vision_layers():
            middle = TensorSource(layer.layernorm_after, first_argument(layer.layernorm_after))
            vision += [ResidualRuleSite(middle, TensorSource(layer.attention, index=0), TensorSource(layer, "hidden_states"),
                                        LayerScale(layer.lambda_1)),
                       ResidualRuleSite(TensorSource(layer), TensorSource(layer.mlp), middle, LayerScale(layer.lambda_2))]
        # the layer scales are the layers' own parameters, covered by the residual sites above; QK-norm by the attention rule
        return LlamaAdapter.lrp_structure(self) + LRPStructure(vision, (InternVLVisionRMSNorm,),
                                                               covered_types=(*self.vision_layer_classes, InternVLVisionRMSNorm))


def _vision_parts(module: Any) -> AttentionParts:
    """InternViT's attention: ``q_proj``/``k_proj``/``v_proj``, with ``use_qk_norm`` an RMSNorm over all heads'
    features of the queries and keys (relevance passed through it)."""
    parts = projected_parts(module, module.num_heads, module.projection_layer)
    if not module.config.use_qk_norm:
        return parts
    return replace(parts, query_norm=module.q_norm, key_norm=module.k_norm, norm_spans_heads=True)
