"""Relevance arithmetic runs in float32 for half-precision models.

Relevance values are products of small numbers (gradients times LRP relevance, ~1e-8 on
small models): below float16's smallest subnormal (6e-8), and short of bfloat16's 8-bit
mantissa. Models in float16 or bfloat16 therefore get their relevance, LRP rules included,
computed and returned in float32; other dtypes are kept. LRP-based methods also run the model
itself in float32 while explaining (:func:`computed_in_float32`): the modified gradients between
rule sites flow through the model's own tensors, whose dtype autograd keeps.
"""

import warnings
from contextlib import contextmanager
from itertools import chain
from typing import Any, Dict, Iterator, List, Tuple

import torch
from torch import Tensor, nn

HALF_PRECISION = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision dtypes, ``dtype`` itself otherwise."""
    return torch.float32 if dtype in HALF_PRECISION else dtype


def exact(tensor: Tensor) -> Tensor:
    """``tensor`` detached, in its :func:`accumulation_dtype` (no copy when that is its dtype)."""
    return tensor.detach().to(accumulation_dtype(tensor.dtype))


def _upcast(value: Any) -> Any:
    """``value`` with every half-precision tensor in it (in lists, tuples, dicts) in float32."""
    if isinstance(value, Tensor):
        return value.float() if value.dtype in HALF_PRECISION else value
    if isinstance(value, (list, tuple)):
        return type(value)(_upcast(v) for v in value)
    if isinstance(value, dict):
        return {key: _upcast(v) for key, v in value.items()}
    return value


def _upcast_inputs(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    return _upcast(args), _upcast(kwargs)


@contextmanager
def computed_in_float32(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s float16/bfloat16 parameters and buffers hold float32 copies of their values
    and its half-precision inputs are cast to float32; on exit, also on error, every tensor gets its own data
    back. A model with weights on the meta device (offloaded) cannot be upcast in place: it keeps its dtype,
    with a warning.

    Args:
        model (nn.Module): The model; enter this after the hooks that must see the user's own inputs.

    Yields:
        None
    """
    tensors = list(chain(model.parameters(), model.buffers()))
    half = [t for t in tensors if t.dtype in HALF_PRECISION]
    if half and any(t.is_meta for t in tensors):
        warnings.warn(f"{type(model).__name__} is in {half[0].dtype} with offloaded (meta-device) weights, which cannot be "
                      "upcast while explaining: LRP runs in the model's dtype, where it loses precision (up to the size of the "
                      "relevance itself). Load the model in float32 to explain it with LRP exactly.", stacklevel=4)
        half = []
    originals: List[Tuple[Tensor, Tensor]] = []
    handle = model.register_forward_pre_hook(_upcast_inputs, with_kwargs=True) if half else None
    try:
        for tensor in half:
            originals.append((tensor, tensor.data))
            tensor.data = tensor.data.float()
        yield
    finally:
        for tensor, data in originals:
            tensor.data = data
        if handle is not None:
            handle.remove()
