"""The update rules of Chefer, Gur & Wolf (ICCV 2021), as pure batched tensor functions.

Every tensor carries a leading element dimension ``E``. ``R`` is a relevance
dictionary keyed by ``(x, y)`` modality pairs, holding ``R^{xy}`` of shape
``[E, |x|, |y|]``; fused attention maps ``A_bar`` are ``[E, N_query, N_key]``.
Rules return *deltas* computed from the state they are given; applying them
(adding, or replacing for the "w/o aggregation" ablation) is
:func:`apply_deltas`'s job, so that parallel events share one pre-step state.
"""

from typing import Dict, Iterable, Tuple

import torch
from torch import Tensor

Relevance = Dict[Tuple[str, str], Tensor]


def initial_relevance(sizes: Dict[str, int], num_elements: int, like: Tensor) -> Relevance:
    """Eq. 1-2: ``R^{xx} = I`` for every modality, every cross block ``R^{xy} = 0``."""
    relevance = {}
    for x, nx in sizes.items():
        for y, ny in sizes.items():
            if x == y:
                block = torch.eye(nx, dtype=like.dtype, device=like.device)
                relevance[(x, y)] = block.expand(num_elements, nx, nx).clone()
            else:
                relevance[(x, y)] = like.new_zeros(num_elements, nx, ny)
    return relevance


def normalize_self_relevance(self_relevance: Tensor) -> Tensor:
    """Eq. 8-9: ``R_bar = R_hat / rowsum(R_hat) + I`` with ``R_hat = R - I``.

    A row of ``R_hat`` summing to zero is treated as all-zero (no NaN). The input
    is not modified.
    """
    eye = torch.eye(self_relevance.shape[-1], dtype=self_relevance.dtype, device=self_relevance.device)
    residual = self_relevance - eye
    row_sums = residual.sum(dim=-1, keepdim=True)
    nonzero = row_sums != 0
    normalized = torch.where(nonzero, residual / torch.where(nonzero, row_sums, torch.ones_like(row_sums)), 0.0)
    return normalized + eye


def self_attention_deltas(relevance: Relevance, modality: str, attention: Tensor) -> Relevance:
    """Eq. 6-7: ``dR^{sy} = A_bar . R^{sy}`` for every modality ``y`` (``y = s`` is Eq. 6).

    All-zero blocks (e.g. DETR's ``R^{iq}``) are skipped: their delta is zero.
    """
    return {
        (x, y): torch.bmm(attention, block)
        for (x, y), block in relevance.items()
        if x == modality and (x == y or block.any())
    }


def bimodal_deltas(
    relevance: Relevance,
    query: str,
    key: str,
    attention: Tensor,
    normalize: bool = True,
    self_in_bimodal: bool = True,
) -> Relevance:
    """Eq. 10-11 for ``query`` (s) tokens attending to ``key`` (q) tokens.

    Eq. 10: ``dR^{sq} = (R_bar^{ss})^T . A_bar . R_bar^{qq}``, with ``R_bar`` the
    normalised self relevance (raw ``R`` when ``normalize=False``, the "w/o norm."
    ablation), or ``dR^{sq} = A_bar`` when ``self_in_bimodal=False`` (the "Eq. 10
    w/o self-att." ablation). Eq. 11: ``dR^{ss} = A_bar . R^{qs}``.
    """
    if self_in_bimodal:
        r_ss, r_qq = relevance[(query, query)], relevance[(key, key)]
        if normalize:
            r_ss, r_qq = normalize_self_relevance(r_ss), normalize_self_relevance(r_qq)
        cross = torch.bmm(r_ss.transpose(1, 2), torch.bmm(attention, r_qq))
    else:
        cross = attention
    back = relevance[(key, query)]
    self_delta = torch.bmm(attention, back) if back.any() else relevance[(query, query)].new_zeros(())
    return {(query, key): cross, (query, query): self_delta.expand_as(relevance[(query, query)])}


def apply_deltas(relevance: Relevance, deltas: Iterable[Relevance], aggregate: bool = True) -> Relevance:
    """Apply the deltas of one step: ``R <- R + sum(dR)``, or ``R <- sum(dR)`` without aggregation."""
    summed: Relevance = {}
    for delta in deltas:
        for pair, value in delta.items():
            summed[pair] = summed[pair] + value if pair in summed else value
    updated = dict(relevance)
    for pair, value in summed.items():
        updated[pair] = relevance[pair] + value if aggregate else value
    return updated


def rollout(maps: Iterable[Tensor], size: int, like: Tensor) -> Tensor:
    """Attention rollout (Abnar & Zuidema): ``prod_l norm(A_l + I)``, later layers on the left.

    ``norm`` divides each row by its sum. With no maps the result is the identity.
    """
    eye = torch.eye(size, dtype=like.dtype, device=like.device)
    joint = eye.expand(like.shape[0], size, size)
    for attention in maps:
        augmented = attention + eye
        joint = torch.bmm(augmented / augmented.sum(dim=-1, keepdim=True), joint)
    return joint


def read_rows(matrix: Tensor, rows: Tensor) -> Tensor:
    """Row ``rows[e]`` of ``matrix[e]`` for every element: ``[E, N, M] -> [E, M]``."""
    return matrix[torch.arange(matrix.shape[0], device=matrix.device), rows]
