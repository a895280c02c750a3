"""Relevance at ``pixel_values`` pooled onto the vision tokens an image output reads (AttnLRP's readout for images given
as tiles, crops or flattened patches): the adapters' :meth:`~captum_mm.models.adapter.ArchitectureAdapter.pixel_pooling`
builds on these."""

from typing import Callable, Dict, Tuple

import torch
from torch import Tensor

#: From the relevance ``x * g`` at ``pixel_values`` (its shape) to ``[B, n]`` per prompt and output: the output's
#: columns as its readout reads them after ``through`` (before its ``spread``, ``positions`` and ``grid``).
PixelPooling = Callable[[Tensor], Dict[str, Tensor]]


def patch_sums(pixels: Tensor, grid: Tuple[int, int]) -> Tensor:
    """``[..., C, H, W]`` summed over channels and over each cell of a ``(h, w)`` patch grid, the cells row-major.

    Args:
        pixels (Tensor): ``[..., C, H, W]``.
        grid (tuple[int, int]): The patch grid ``(h, w)``; ``H`` and ``W`` its multiples.

    Returns:
        *Tensor*: ``[..., h * w]``.
    """
    if len(grid) != 2 or pixels.shape[-2] % grid[0] or pixels.shape[-1] % grid[1]:
        raise TypeError(f"AttnLRP reads an image's pixels [..., channels, height, width] summed on a (h, w) patch grid: it "
                        f"cannot pool pixels of shape {tuple(pixels.shape[-2:])} onto the grid {tuple(grid)}.")
    lead, (rows, columns) = pixels.shape[:-3], pixels.shape[-2:]
    cells = pixels.sum(-3).reshape(*lead, grid[0], rows // grid[0], grid[1], columns // grid[1])
    return cells.sum((-3, -1)).flatten(-2)


def per_prompt(images: Tensor, counts: Tensor) -> Tensor:
    """Each prompt's images' values one after the other, the prompts holding fewer images than the most padded with 0.

    Args:
        images (Tensor): ``[images, n]`` every prompt's images in order.
        counts (Tensor): ``[B]`` the images of each prompt.

    Returns:
        *Tensor*: ``[B, most images * n]``.
    """
    counts = counts.to(images.device)
    slots = torch.arange(int(counts.max()), device=images.device)
    real = slots[None, :] < counts[:, None]  # [B, most]: prompt b's image slots
    out = images.new_zeros(counts.shape[0], slots.shape[0], images.shape[-1])
    out[real] = images
    return out.flatten(1)
