"""Qwen2.5-VL: Qwen2-VL's layout (:mod:`captum_mm.adapters.qwen2_vl`) with a windowed vision tower and an RMSNorm,
gated-MLP vision block.

The tower reorders its patches window by window before its blocks (``window_index``, in blocks of the merger's
``m x m`` patches) and its merged tokens back after the merger. Its attention runs per window in every block
but those of ``vision_config.fullatt_block_indexes`` (per image there): a window's map is recorded as its block of
the image's full map, zero outside the window (a block-diagonal map, :func:`~captum_mm.capture.record.join_windows`).
The vision sequence is the tower's, in window order: ``patch_cells`` places each of its patches on the grid through
``window_index``, and the token map ``P`` sends image token ``j`` to the ``m^2`` patches of the window-ordered block
the merger made it from. LRP: the vision blocks' gated MLP as the LM's (the product's relevance to its linear
factor), RMSNorms pass relevance through as the LM's; the rest as Qwen2-VL's.
"""

from types import MappingProxyType
from typing import Any, Dict, Optional, Tuple, cast

import torch
from torch import Tensor, nn
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLAttention,
    Qwen2_5_VLDecoderLayer,
    Qwen2_5_VLMLP,
    Qwen2_5_VLRMSNorm,
    Qwen2_5_VLVisionAttention,
    Qwen2_5_VLVisionBlock,
    Qwen2MLP,
)
from transformers.vision_utils import get_vision_window_index

from captum_mm.adapters.qwen2_vl import Qwen2VLAdapter
from captum_mm.models.registry import register_adapter
from captum_mm.spec import TensorSource


@register_adapter
class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: Qwen2-VL's adapter with the windowed vision tower's maps joined per image and its patch order.

    Args:
        model (nn.Module): The Qwen2.5-VL model the adapter serves.
    """

    model_classes = (Qwen2_5_VLForConditionalGeneration,)
    model: Qwen2_5_VLForConditionalGeneration  # type: ignore[assignment]
    attention_classes = (Qwen2_5_VLAttention,)
    vision_attention_classes = (Qwen2_5_VLVisionAttention,)
    attention_functions = MappingProxyType({Qwen2_5_VLAttention: True})
    layer_classes = (Qwen2_5_VLDecoderLayer,)
    mlp_classes = (Qwen2MLP, Qwen2_5_VLMLP)  # the LM's and the vision blocks' gated MLPs
    norm_classes = (Qwen2_5_VLRMSNorm,)
    vision_layer_classes = (Qwen2_5_VLVisionBlock,)
    vision_norm_input = "hidden_states"  # an RMSNorm's

    def _vision_probs(self, module: nn.Module) -> TensorSource:
        """Recorded per window (or per image in full-attention blocks), joined into each image's map."""
        return TensorSource(module, recorded=True, map_tokens=self._patches_per_image)

    def _patches_per_image(self, arguments: Dict[str, Any]) -> int:
        rows, columns = self.patch_grid(arguments)
        return rows * columns

    def _window_index(self, grid: Tuple[int, int]) -> Tensor:
        """The merged block each window-ordered block of ``m^2`` patches of the tower's sequence is."""
        config = cast(Any, self.model.config.vision_config)
        index, _ = get_vision_window_index(torch.tensor([[1, *grid]]), config.spatial_merge_size, config.window_size,
                                           config.patch_size)
        return index

    def pixel_rows(self, grid: Tuple[int, int]) -> Tensor:
        """The processor's blocks of ``m^2`` patches taken in the tower's window order."""
        return torch.arange(grid[0] * grid[1]).reshape(-1, self._merge() ** 2)[self._window_index(grid)].flatten()

    def patch_cells(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """Qwen2-VL's cells of the block-ordered patches, taken in the tower's window order."""
        return cast(Tensor, super().patch_cells(grid))[self.pixel_rows(grid)]

    def token_map(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """Token ``j`` is made of the ``m^2`` patches of the window-ordered block ``b`` with ``window_index[b] = j``."""
        in_window_order = cast(Tensor, super().token_map(grid))  # token b <- block b of the tower's sequence
        return in_window_order[torch.argsort(self._window_index(grid))]
