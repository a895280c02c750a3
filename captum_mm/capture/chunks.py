"""Row chunks of lean attention: the query rows one chunk computes, with the leading keys they see, remembered per
mask while a model is recorded (every layer of a stream gets the same mask)."""

from contextvars import ContextVar, Token
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

#: Elements of one chunk's ``[B, H, rows, Nk]`` temporaries (several live at once; 8 MiB in float32, which times
#: fastest from N = 2048 to 8192: benchmarks/README.md, "The lean function's own speed").
CHUNK_ELEMENTS = 1 << 21
#: The row chunks of the masks seen while recording (every layer of a stream gets the same mask, alive -- saved for
#: the backward -- while the explanation runs).
_seen_chunks: ContextVar[Dict[Tuple[Any, ...], List[Tuple[slice, slice]]]] = ContextVar("captum_mm_lean_chunks")


def row_chunks(query: Tensor, keys: int, mask: Optional[Tensor]) -> List[Tuple[slice, slice]]:
    """Chunks of query rows, each with the leading keys its rows see (all keys when ``mask`` is None)."""
    size = max(1, CHUNK_ELEMENTS // max(1, query.shape[0] * query.shape[1] * keys))
    rows = [slice(start, start + size) for start in range(0, query.shape[2], size)]
    return [(chunk, visible_keys(mask, chunk, keys)) for chunk in rows]


def remembered_row_chunks(query: Tensor, keys: int, mask: Optional[Tensor]) -> List[Tuple[slice, slice]]:
    """:func:`row_chunks`, computed once per mask while recording."""
    seen = _seen_chunks.get()
    key = (None if mask is None else (mask.data_ptr(), tuple(mask.shape), tuple(mask.stride())), tuple(query.shape), keys)
    if key not in seen:
        seen[key] = row_chunks(query, keys, mask)
    return seen[key]


def visible_keys(mask: Optional[Tensor], rows: slice, keys: int) -> slice:
    """The leading keys ``rows`` see: keys after the last one any of them sees get probability 0 exactly (a causal
    mask's), unless some row sees none (eager attention then spreads that row over every key)."""
    if mask is None:
        return slice(0, keys)
    block = mask[:, :, rows]
    seen = block if block.dtype == torch.bool else block > torch.finfo(block.dtype).min
    if not bool(seen.any(-1).all()):
        return slice(0, keys)
    return slice(0, int(seen.any(dim=2).any(dim=1).any(dim=0).nonzero().max()) + 1)


def start_remembering() -> Token:
    """Remember chunks per mask from now on; returns the token to :func:`stop_remembering` with."""
    return _seen_chunks.set({})


def stop_remembering(token: Token) -> None:
    _seen_chunks.reset(token)
