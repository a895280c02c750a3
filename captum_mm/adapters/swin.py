"""Swin: shifted-window self-attention over the patch grid, in stages joined by patch merging (no class token).

Schedule (docs/METHOD.md, **Swin**): each stage's tokens are a modality (``stage0``, ``stage1``, ...), every layer
Eq. 6 on its stage; a window's ``[w^2, w^2]`` map is the block of the stage's ``N x N`` map at its tokens (the
cyclic shift and window partition undone as ``SwinLayer`` does them; zero outside the window). Readout the mean
row over the last stage's tokens (the pooled output), continued through each patch merging, a token map ``P``
spreading a merged token's relevance evenly over its (up to four) tokens, to the patch grid.
Capture: the attention modules return the window probabilities second under eager attention.
"""

from types import MappingProxyType
from typing import Any, Callable, List, Optional, Tuple, cast

import torch
from torch import Tensor
from transformers import SwinForImageClassification, SwinModel
from transformers.models.swin.modeling_swin import SwinLayer, SwinRelativePositionBias, window_partition

from captum_mm.capture.record import AttentionRecord
from captum_mm.lrp.composite import LRPStructure, ResidualRuleSite
from captum_mm.models.adapter import ArchitectureAdapter
from captum_mm.models.arguments import PIXELS, Argument
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import projected_parts
from captum_mm.models.structure import first_argument, forward_order_schedule
from captum_mm.models.targets import TargetSelection
from captum_mm.relevance.schedule import Readout, Schedule, Stage
from captum_mm.spec import AttentionSpec, TensorSource, module_names, self_attention

IMAGE = "image"
Grid = Tuple[int, int]


def stage_name(index: int) -> str:
    """The modality of stage ``index``'s tokens.

    Args:
        index (int): The stage.

    Returns:
        *str*: ``"stage<index>"``.
    """
    return f"stage{index}"


def window_tokens(layer: SwinLayer, grid: Grid) -> Tensor:
    """The token (row-major on the stage's ``grid``) at each position of each window of ``layer``'s attention, as
    ``SwinLayer`` forms them (padded to whole windows, cyclically shifted, partitioned), -1 at padding.

    Args:
        layer (SwinLayer): The layer (its window and shift sizes as its last forward set them).
        grid (tuple[int, int]): The stage's grid of tokens.

    Returns:
        *Tensor*: ``[windows, w^2]`` token indices.
    """
    tokens = torch.arange(1, grid[0] * grid[1] + 1).view(1, *grid, 1)
    padded, _ = layer.maybe_pad(tokens, *grid)
    window = int(layer.window_size)
    return window_partition(layer.cyclic_shift(padded), window).reshape(-1, window * window) - 1


def window_layout(tokens: Tensor, size: int) -> Callable[[Tensor], Tensor]:
    """Windows' maps ``[..., B * windows, H, w^2, w^2]`` placed as blocks of the ``[..., B, H, N, N]`` token map.

    Args:
        tokens (Tensor): ``[windows, w^2]`` from :func:`window_tokens`.
        size (int): ``N``, the stage's tokens.

    Returns:
        *Callable*: The layout (entries at padding dropped).
    """
    slots = torch.where(tokens < 0, size, tokens)  # padding into one extra slot, then cut
    rows, columns = slots[:, :, None], slots[:, None, :]

    def layout(windows: Tensor) -> Tensor:
        lead, heads = windows.shape[:-4], windows.shape[-3]
        per_sample = windows.reshape(*lead, -1, tokens.shape[0], *windows.shape[-3:]).movedim(-4, -3)
        full = windows.new_zeros(*per_sample.shape[:-3], size + 1, size + 1)
        full[..., rows.to(windows.device), columns.to(windows.device)] = per_sample
        return full[..., :size, :size].reshape(*lead, -1, heads, size, size)

    return layout


def merge_map(grid: Grid) -> Tensor:
    """``P`` of a patch merging: each merged token's ``2 x 2`` block of the ``grid`` (its real cells), evenly.

    Args:
        grid (tuple[int, int]): The grid before merging.

    Returns:
        *Tensor*: ``[merged tokens, grid tokens]``.
    """
    rows, columns = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    merged = (rows // 2) * ((grid[1] + 1) // 2) + columns // 2
    token_map = merged.flatten()[None, :].eq(torch.arange(int(merged.max()) + 1)[:, None]).double()
    return token_map / token_map.sum(1, keepdim=True)


@register_adapter
class SwinAdapter(ArchitectureAdapter):
    """Swin: windowed attention laid out on each stage's tokens, patch merging as a token map, the pooled readout.

    Args:
        model (nn.Module): The Swin model the adapter serves.
    """

    model_classes = (SwinModel, SwinForImageClassification)
    logit_fields = ("logits", "pooler_output")
    model: SwinModel | SwinForImageClassification
    arguments = MappingProxyType({"pixel_values": Argument(4, PIXELS, IMAGE, f"Swin needs pixel_values {PIXELS}.")})
    outputs = (IMAGE,)

    def _swin(self) -> SwinModel:
        return self.model if isinstance(self.model, SwinModel) else self.model.swin

    def _stages(self) -> List[Any]:
        return list(cast(Any, self._swin().encoder.layers))

    def attention_specs(self) -> List[AttentionSpec]:  # SwinAttention returns (output, window probabilities) under eager
        names = module_names(self.model)
        return [AttentionSpec(names[layer.attention], layer.attention, TensorSource(layer.attention, index=1),
                              self_attention(stage_name(index)), names[stage],
                              projected_parts(layer.attention, layer.attention.num_attention_heads, layer.attention.o_proj))
                for index, stage in enumerate(self._stages()) for layer in stage.blocks]

    def grids(self, pixels: Tensor) -> List[Grid]:
        """Each stage's grid of tokens for images ``pixels``.

        Args:
            pixels (Tensor): ``[B, C, H, W]``.

        Returns:
            *list[tuple[int, int]]*: Rows and columns per stage (the patch embedding and merging pad odd sizes).
        """
        size = self._swin().config.patch_size
        patch = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        grid = (-(-pixels.shape[-2] // patch[0]), -(-pixels.shape[-1] // patch[1]))
        grids = [grid]
        for _ in self._stages()[1:]:
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
            grids.append(grid)
        return grids

    def lay_out_maps(self, record: AttentionRecord) -> None:
        grids = self.grids(record.arguments["pixel_values"])
        layers = {layer.attention: (layer, grids[index])
                  for index, stage in enumerate(self._stages()) for layer in stage.blocks}
        for call in record.calls:
            layer, grid = layers[call.spec.module]
            call.lay_out(window_layout(window_tokens(layer, grid), grid[0] * grid[1]))

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:  # Eq. 6 per layer, per stage
        pixels = record.arguments["pixel_values"]
        grids = self.grids(pixels)
        masks = {stage_name(index): torch.ones(pixels.shape[0], grid[0] * grid[1], dtype=torch.bool, device=pixels.device)
                 for index, grid in enumerate(grids)}
        earlier: Optional[Stage] = None
        for index in range(1, len(grids)):  # the last merging first read: the chain runs back to stage 0
            pair = (stage_name(index - 1), stage_name(index - 1))
            earlier = Stage(pair, token_map=merge_map(grids[index - 1]).to(pixels.device), through=earlier)
        last = stage_name(len(grids) - 1)
        tokens = grids[-1][0] * grids[-1][1]
        mean = torch.full((selection.sample.shape[0], tokens), 1 / tokens, dtype=torch.float64, device=pixels.device)
        readout = Readout(last, torch.zeros_like(selection.sample), last, grid=grids[0], through=earlier, row_weights=mean)
        return forward_order_schedule(record, selection, masks, {IMAGE: readout})

    def lrp_structure(self) -> LRPStructure:
        """Per layer ``x + drop_path(windows reversed)``, seen at ``layernorm_after``'s input, then ``+ mlp(norm(.))``
        at the layer's output; patch merging (LayerNorm, bias-free reduction) and the pooling by type. The relative
        position bias is a constant added to the scores: the attention rule, on the probabilities, covers it."""
        residuals = []
        for layer in self._swin().modules():
            if isinstance(layer, SwinLayer):
                middle = TensorSource(layer.layernorm_after, first_argument(layer.layernorm_after))
                residuals += [ResidualRuleSite(middle, TensorSource(layer.drop_path), TensorSource(layer, "hidden_states")),
                              ResidualRuleSite(TensorSource(layer, index=0), TensorSource(layer.mlp), middle)]
        return LRPStructure(residuals, covered_types=(SwinRelativePositionBias,))
