"""Min-max scaling of relevance matrices (partial LRP's, as the reference implementation scales each matrix)."""

from typing import Optional

import torch
from torch import Tensor


def min_max_scaled(matrix: Tensor, row_mask: Tensor, key_mask: Tensor, segments: Optional[Tensor] = None) -> Tensor:
    """Each element's matrix scaled to [0, 1] over its real (unpadded) entries, those it sees; with ``segments``
    (a self block whose tokens attend within their segment only: a prompt's images), each segment's diagonal block
    scaled alone as the matrix it is, the entries between segments 0.

    Args:
        matrix (Tensor): ``[E, N_row, N_key]``.
        row_mask (Tensor): ``[E, N_row]`` real row tokens (of a causal stream: up to the element's readout row).
        key_mask (Tensor): ``[E, N_key]`` real key tokens (likewise).
        segments (Tensor, optional): ``[E, N]`` each token's segment, for a self block. Default: None

    Returns:
        *Tensor*: The scaled matrices (0 off the real entries).
    """
    valid = row_mask[:, :, None] & key_mask[:, None, :]
    if segments is None:
        return _scaled_over(matrix, valid)
    scaled = torch.zeros_like(matrix)
    for segment in segments.unique().tolist():
        inside = segments == segment
        block = valid & inside[:, :, None] & inside[:, None, :]
        scaled = torch.where(block, _scaled_over(matrix, block), scaled)
    return scaled


def _scaled_over(matrix: Tensor, valid: Tensor) -> Tensor:
    """Each element's matrix scaled to [0, 1] over its ``valid`` entries (0 elsewhere)."""
    low = torch.where(valid, matrix, torch.inf).amin(dim=(1, 2), keepdim=True)
    high = torch.where(valid, matrix, -torch.inf).amax(dim=(1, 2), keepdim=True)
    spread = high - low
    constant = spread <= 0  # False for a NaN spread: NaN relevance stays NaN (an error later, not zeros)
    return torch.where(valid & ~constant, (matrix - low) / torch.where(constant, 1.0, spread), 0.0)
