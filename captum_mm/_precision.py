"""Relevance arithmetic runs in float32 for half-precision models.

Relevance values are products of small numbers (gradients times LRP relevance, ~1e-8 on
small models): below float16's smallest subnormal (6e-8), and short of bfloat16's 8-bit
mantissa. Models in float16 or bfloat16 therefore get their relevance, LRP rules included,
computed and returned in float32; other dtypes are kept.
"""

import torch
from torch import Tensor

HALF_PRECISION = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision dtypes, ``dtype`` itself otherwise."""
    return torch.float32 if dtype in HALF_PRECISION else dtype


def exact(tensor: Tensor) -> Tensor:
    """``tensor`` detached, in its :func:`accumulation_dtype` (no copy when that is its dtype)."""
    return tensor.detach().to(accumulation_dtype(tensor.dtype))
