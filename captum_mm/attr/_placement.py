"""Lean calls laid out after the forward (a prompt's several images, LLaVA-NeXT's tiles: ``AttentionCall.layout``)
streamed: where each unit's map goes in token positions (docs/METHOD.md, "Streaming row propagation")."""

import weakref
from typing import Callable, Optional, Tuple, cast

import torch
from torch import Tensor

from captum_mm.capture.lean import LeanMaps
from captum_mm.capture.record import AttentionCall

#: Each unit's sample ``[U]`` and its tokens' positions ``[U, n]``.
Placement = Tuple[Tensor, Tensor]
_known: "weakref.WeakKeyDictionary[Callable[[Tensor], Tensor], Tuple[Tuple[int, ...], Optional[Placement]]]" = weakref.WeakKeyDictionary()


def unit_placement(call: AttentionCall) -> Optional[Placement]:
    """Where a laid-out lean call's units ``[U, H, n, n]`` go: each unit's sample and its tokens' positions, read once
    a layout from the layout of a probe coding each unit's diagonal (one ``[B, N, N]`` integer map, freed at once);
    None unless the layout places each unit's ``n x n`` block whole on one sample's diagonal, every token once.

    Args:
        call (AttentionCall): A lean call with a layout.

    Returns:
        *tuple of Tensor, or None*
    """
    layout, shape = call.layout, (call.lean.shape if call.lean is not None else ())
    if layout is None or len(shape) != 4 or shape[2] != shape[3]:
        return None
    known = _known.get(layout)
    if known is None or known[0] != shape:
        known = _known[layout] = (shape, _placement(call, shape[0], shape[2]))
    return known[1]


def _placement(call: AttentionCall, units: int, tokens: int) -> Optional[Placement]:
    device = cast(LeanMaps, call.lean).probe.device
    codes = torch.arange(1, units * tokens + 1, dtype=torch.int32, device=device).reshape(units, tokens)
    laid = call.in_token_layout(torch.diag_embed(codes)[:, None])
    if laid is None or laid.dim() != 4 or int((laid != 0).sum()) != units * tokens:
        return None
    diagonal = laid[:, 0].diagonal(dim1=-2, dim2=-1)
    sample, position = (diagonal > 0).nonzero(as_tuple=True)
    code = diagonal[sample, position].long() - 1
    if code.unique().numel() != units * tokens:
        return None  # a token placed off the diagonal
    unit, token = code // tokens, code % tokens
    owner = torch.full((units,), -1, dtype=torch.long, device=device).scatter_(0, unit, sample)
    if bool((owner[unit] != sample).any()):
        return None  # a unit split over samples
    positions = torch.empty(units, tokens, dtype=torch.long, device=device)
    positions[unit, token] = position
    return owner, positions
