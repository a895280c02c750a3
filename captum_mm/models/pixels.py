"""Relevance at ``pixel_values`` pooled onto the vision tokens an image output reads (AttnLRP's readout for images given
as tiles, crops or flattened patches): the adapters' :meth:`~captum_mm.models.adapter.ArchitectureAdapter.pixel_pooling`
builds on these."""

from typing import Callable, Dict, Tuple

import torch
from torch import Tensor

#: From the relevance ``x * g`` at ``pixel_values`` (its shape) to ``[B, n]`` per prompt and output: the output's
#: columns as its readout reads them after ``through`` (before its ``spread``, ``positions`` and ``grid``).
PixelPooling = Callable[[Tensor], Dict[str, Tensor]]


def cell_sums(pixels: Tensor, grid: Tuple[int, int]) -> Tensor:
    """``[..., C, H, W]`` summed over channels and over each cell of a ``(h, w)`` grid: pixel row ``r`` in cell row
    ``floor(r h / H)`` (columns alike), the cell nearest upsampling gives each pixel (cells of ``H / h`` pixels, or
    about that where ``h`` does not divide ``H``).

    Args:
        pixels (Tensor): ``[..., C, H, W]``.
        grid (tuple[int, int]): The grid ``(h, w)``, at most ``(H, W)``.

    Returns:
        *Tensor*: ``[..., h, w]``.
    """
    rows, columns = (_cells(size, cells, pixels) for size, cells in zip(pixels.shape[-2:], grid))
    return torch.einsum("...hw,ih,jw->...ij", pixels.sum(-3), rows, columns)


def _cells(size: int, cells: int, like: Tensor) -> Tensor:
    """``[cells, size]``: 1 where pixel ``r`` lies in cell ``floor(r cells / size)``."""
    index = torch.arange(size, device=like.device) * cells // size
    return (index[None] == torch.arange(cells, device=like.device)[:, None]).to(like.dtype)


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
    return cell_sums(pixels, grid).flatten(-2)


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
