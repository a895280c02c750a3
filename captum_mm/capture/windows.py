"""Attention maps recorded in parts (one attention-function call per image, or per window of an image) joined into
the ``[B, H, N, N]`` maps of a recorded call: images along the batch, windows block-diagonally (zero outside each
window), a prompt's several images block-diagonally. The same joins apply to the parts' gradients (leading dimensions
before the batch kept)."""

from typing import List, Sequence

import torch
from torch import Tensor, nn


def concatenate_images(parts: Sequence[Tensor]) -> Tensor:
    """Maps (or their gradients) of one image each, along the batch (dimension -4); one tensor as it is.

    Args:
        parts (sequence of Tensor): The maps.

    Returns:
        *Tensor*: Their concatenation.
    """
    return parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=-4)


def join_windows(windows: Sequence[Tensor], tokens: int) -> Tensor:
    """Consecutive windows' maps ``[..., 1, H, n, n]`` joined block-diagonally into maps of ``tokens`` tokens
    (zero outside each window), one per group of windows filling ``tokens``, along the batch (dimension -4).

    Args:
        windows (sequence of Tensor): The windows' maps, in sequence order.
        tokens (int): The tokens of one joined map.

    Returns:
        *Tensor*: ``[..., maps, H, tokens, tokens]``.
    """
    maps: List[Tensor] = []
    rows: List[Tensor] = []
    start = 0
    for window in windows:
        size = window.shape[-1]
        if start + size > tokens:
            raise ValueError(f"An attention window of {size} tokens crosses the end of a map of {tokens} tokens.")
        rows.append(nn.functional.pad(window, (start, tokens - start - size)))
        start += size
        if start == tokens:
            maps.append(torch.cat(rows, dim=-2))
            rows, start = [], 0
    if rows or not maps:
        raise ValueError(f"The attention windows ({[w.shape[-1] for w in windows]} tokens) do not fill maps of {tokens} tokens.")
    return torch.cat(maps, dim=-4)


def images_on_diagonal(maps: Tensor, counts: Sequence[int]) -> Tensor:
    """Maps of a batch's images ``[..., images, H, n, n]`` (the prompts' images in order) laid out per prompt: its
    images' maps block-diagonally over their tokens one after the other, a prompt holding fewer images than the most
    padded with zero blocks.

    Args:
        maps (Tensor): One map per image, ``sum(counts)`` along dimension -4.
        counts (sequence of int): The images of each prompt.

    Returns:
        *Tensor*: ``[..., prompts, H, most * n, most * n]``.
    """
    most, start, units = max(counts), 0, []
    empty = torch.zeros_like(maps.narrow(-4, 0, 1))
    for count in counts:
        units += list(maps.narrow(-4, start, count).split(1, dim=-4)) + [empty] * (most - count)
        start += count
    return join_windows(units, most * maps.shape[-1])
