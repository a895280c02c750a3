"""Qwen2-VL: a vision transformer over flattened patches (``pixel_values`` ``[patches, features]`` and
``image_grid_thw`` per image, not per prompt), whose attention discards its weights -- captum_mm records
them inside the attention function (:func:`~captum_mm.capture.record.recorded_eager_attention`) -- a patch
merger joining each ``m x m`` block of patches into one image token, and a Qwen2 LM with multimodal
rotary positions, which the model computes itself (the explanation's forward passes none).

Schedule and readouts of the VLM base (:mod:`captum_mm.adapters.vision_language`): Eq. 6 over every vision layer, the
LM's stream; ``image = R^{g,tok} . P . R^{vv}`` with ``P`` the merger's pooling (each token's relevance
spread evenly over its ``m^2`` patches), on the patch grid (the tower's patches come block by block:
their grid cells say where each goes). Several images a prompt, all of one size. LRP: the vision
attention's fused, rotated projection as GPT-2's and LLaMA's are crossed, its one sequence of all
images' patches seen image by image; the LM's rules as LLaMA's (its multimodal rotary embedding
reaches the attention as plain ``cos``/``sin``).
"""

from types import MappingProxyType
from typing import Any, Dict, List, Optional, Set, Tuple, cast

import torch
from torch import Tensor, nn
from transformers import Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2MLP,
    Qwen2VLAttention,
    Qwen2VLDecoderLayer,
    Qwen2VLRMSNorm,
    Qwen2VLVisionBlock,
    VisionAttention,
)
from transformers.vision_utils import get_vision_position_ids

from captum_mm.adapters.decoder import DecoderOnlyAdapter
from captum_mm.adapters.llama import LlamaAdapter
from captum_mm.adapters.vision_language import IMAGE, VISION, VisionLanguageAdapter
from captum_mm.lrp.composite import LRPStructure, ResidualRuleSite
from captum_mm.models.arguments import TOKENS, Argument, require
from captum_mm.models.pixels import PixelPooling, per_prompt
from captum_mm.models.registry import register_adapter
from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource

PATCHES = "[patches, channels * temporal_patch * patch * patch]"


@register_adapter
class Qwen2VLAdapter(VisionLanguageAdapter):
    """Qwen2-VL: every vision block, flattened patches merged block by block into image tokens, a Qwen2 LM.

    Args:
        model (nn.Module): The Qwen2-VL model the adapter serves.
    """

    model_classes: Tuple[type, ...] = (Qwen2VLForConditionalGeneration,)
    model: Qwen2VLForConditionalGeneration
    attention_classes: Tuple[type, ...] = (Qwen2VLAttention,)
    vision_attention_classes: Tuple[type, ...] = (VisionAttention,)
    vision_layer_classes: Tuple[type, ...] = (Qwen2VLVisionBlock,)
    #: The forward argument of the vision blocks' ``norm2`` (a LayerNorm's), where the attention residual's sum appears.
    vision_norm_input = "input"
    attention_functions = MappingProxyType({Qwen2VLAttention: True})
    arguments = MappingProxyType(dict(
        DecoderOnlyAdapter.arguments,
        pixel_values=Argument(2, PATCHES, None, f"A Qwen2-VL prompt needs pixel_values {PATCHES}.", batched=False),
        image_grid_thw=Argument(2, "[images, 3]", None, "A Qwen2-VL prompt needs image_grid_thw [images, 3].", batched=False),
        mm_token_type_ids=Argument(2, TOKENS),
    ))
    generated_token_types = MappingProxyType({"mm_token_type_ids": 0})  # generated tokens are text
    model_positions = True  # the model computes its multimodal positions

    def vision_tower(self) -> nn.Module:
        return self.model.model.visual

    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    layer_classes: Tuple[type, ...] = (Qwen2VLDecoderLayer,)
    mlp_classes: Tuple[type, ...] = (Qwen2MLP,)
    norm_classes: Tuple[type, ...] = (Qwen2VLRMSNorm,)

    def vision_specs(self, names: Dict[nn.Module, str]) -> List[AttentionSpec]:
        """The vision attention modules: weights recorded in the attention function; one fused, rotated projection."""
        modules: List[Any] = [m for m in self.vision_tower().modules() if isinstance(m, self.vision_attention_classes)]
        return [
            AttentionSpec(names[module], module, self._vision_probs(module), ((VISION, VISION),),
                          parts=AttentionParts(module.qkv, module.qkv, module.qkv, module.num_heads, module.proj,
                                               fused=True, rotary=True))
            for module in modules
        ]

    def _vision_probs(self, module: nn.Module) -> TensorSource:
        """Where a vision attention module's weights are: recorded inside its attention function, one call per image."""
        return TensorSource(module, recorded=True)

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        DecoderOnlyAdapter.check_arguments(self, arguments)
        grids = arguments["image_grid_thw"]
        require(bool((grids == grids[:1]).all()) and int(grids[0, 0]) == 1,
                f"Images of one size (image_grid_thw rows alike, temporal 1) are explained together, got {grids.tolist()}.")
        self.check_images(arguments, "merged patch block")

    def images_given(self, arguments: Dict[str, Any]) -> int:
        return int(arguments["image_grid_thw"].shape[0])

    def _merge(self) -> int:
        return int(cast(Any, self.model.config.vision_config).spatial_merge_size)

    def patch_grid(self, arguments: Dict[str, Any]) -> Tuple[int, int]:
        grid = arguments["image_grid_thw"][0]
        return int(grid[1]), int(grid[2])

    def patch_cells(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        rows_columns = get_vision_position_ids(torch.tensor([[1, *grid]]), self._merge())
        return rows_columns[:, 0] * grid[1] + rows_columns[:, 1]

    def pixel_rows(self, grid: Tuple[int, int]) -> Tensor:
        """The row of an image's ``pixel_values`` (the processor's order, block by block) each patch of the vision
        tower's sequence is made from.

        Args:
            grid (tuple[int, int]): The patch grid.

        Returns:
            *Tensor*: ``[patches]`` row indices (Qwen2-VL's tower keeps the processor's order).
        """
        return torch.arange(grid[0] * grid[1])

    def pixel_pooling(self, arguments: Dict[str, Any]) -> Optional[PixelPooling]:
        """Each flattened patch's relevance summed over its values, in the vision tower's order, each prompt's images
        one after the other: the patches the image readout places on the grid."""
        grid = self.patch_grid(arguments)
        rows, images = self.pixel_rows(grid), self.images_per_prompt(arguments)

        def pool(relevance: Tensor) -> Dict[str, Tensor]:
            patches = relevance.sum(-1).reshape(-1, grid[0] * grid[1])[:, rows.to(relevance.device)]
            return {IMAGE: per_prompt(patches, images)}

        return pool

    def token_grid(self, grid: Tuple[int, int]) -> Tuple[int, int]:
        return grid[0] // self._merge(), grid[1] // self._merge()

    def token_map(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """Token ``j`` is made of the ``m^2`` consecutive patches ``j m^2 ... (j + 1) m^2 - 1``."""
        block = self._merge() ** 2
        cells = grid[0] * grid[1]
        return torch.arange(cells).div(block, rounding_mode="floor")[None, :].eq(torch.arange(cells // block)[:, None]).double() / block

    def _features_per_image(self, pixels: Tensor, arguments: Dict[str, Any]) -> int:
        tokens = self.token_grid(self.patch_grid(arguments))
        return tokens[0] * tokens[1]

    def _has_class_token(self) -> bool:
        return False

    def _unused_vision_attention(self, arguments: Dict[str, Any]) -> Set[nn.Module]:
        return set()  # the merger reads the last block's output

    def lrp_structure(self) -> LRPStructure:
        """The LM's (as LLaMA's), and the vision blocks' pre-norm residuals: ``x + attn(norm1(x))``, seen at
        ``norm2``'s input, then ``+ mlp(norm2(.))`` at the block's output."""
        language = LlamaAdapter.lrp_structure(self)
        vision: List[ResidualRuleSite] = []
        blocks: List[Any] = [m for m in self.vision_tower().modules() if isinstance(m, self.vision_layer_classes)]
        for block in blocks:
            middle = TensorSource(block.norm2, self.vision_norm_input)
            vision += [ResidualRuleSite(middle, TensorSource(block.attn), TensorSource(block, "hidden_states")),
                       ResidualRuleSite(TensorSource(block), TensorSource(block.mlp), middle)]
        return language + LRPStructure(vision)
