"""The update rules of Chefer, Gur & Wolf (ICCV 2021), as pure batched tensor functions.

Every tensor carries a leading element dimension ``E``. :class:`Relevance` maps
``(x, y)`` modality pairs to ``R^{xy}`` of shape ``[E, |x|, |y|]``; fused attention
maps ``A_bar`` are ``[E, N_query, N_key]``. Rules return *deltas* computed from the
state they are given; applying them (adding, or replacing for the "w/o aggregation"
ablation) is :func:`apply_deltas`'s job, so that parallel events share one pre-step state.
"""

from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch import Tensor

Pair = Tuple[str, str]


class Relevance(dict):
    """``{(x, y): R^{xy}}``. The self blocks of the modalities in ``implicit_identity`` are held as ``R^{xx} - I``:
    relevance far smaller than 1 is then not lost to rounding next to the identity (the normalisation of Eq. 8-9
    works on exactly that difference). Read through :meth:`full` and :meth:`residual`.

    Args:
        blocks (Mapping or iterable of pairs): ``(x, y)`` to ``[E, |x|, |y|]`` blocks.
        implicit_identity (iterable of str, optional): Modalities whose self block is held minus the identity.
                    Default: ()
    """

    def __init__(self, blocks: Mapping[Pair, Tensor] | Iterable[Tuple[Pair, Tensor]] = (), implicit_identity: Iterable[str] = ()) -> None:
        super().__init__(blocks)
        self.implicit_identity = frozenset(implicit_identity)

    def full(self, pair: Pair) -> Tensor:
        """``R^{xy}`` itself."""
        block = self[pair]
        return block + _eye_like(block) if pair[0] == pair[1] and pair[0] in self.implicit_identity else block

    def residual(self, modality: str) -> Tensor:
        """``R^{ss} - I``."""
        block = self[(modality, modality)]
        return block if modality in self.implicit_identity else block - _eye_like(block)


def _eye_like(matrix: Tensor) -> Tensor:
    return torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)


def initial_relevance(sizes: Dict[str, int], num_elements: int, like: Tensor) -> Relevance:
    """Eq. 1-2: ``R^{xx} = I`` for every modality, every cross block ``R^{xy} = 0``.

    Args:
        sizes (dict[str, int]): Tokens of each modality.
        num_elements (int): ``E``, the explained elements.
        like (Tensor): A tensor of the dtype and device wanted.

    Returns:
        *Relevance*: The self blocks held implicitly (zero, meaning ``I``).
    """
    blocks = {(x, y): like.new_zeros(num_elements, nx, ny) for x, nx in sizes.items() for y, ny in sizes.items()}
    return Relevance(blocks, implicit_identity=sizes)


def normalize_self_relevance(residual: Tensor) -> Tensor:
    """Eq. 8-9: ``R_bar = R_hat / rowsum(R_hat) + I``, given ``R_hat = R - I``. A row of ``R_hat`` summing to zero is
    treated as all-zero (no NaN). The input is not modified.

    Args:
        residual (Tensor): ``[E, N, N]`` the residual ``R_hat``.

    Returns:
        *Tensor*: ``R_bar``, ``[E, N, N]``.
    """
    row_sums = residual.sum(dim=-1, keepdim=True)
    nonzero = row_sums != 0
    normalized = torch.where(nonzero, residual / torch.where(nonzero, row_sums, torch.ones_like(row_sums)), 0.0)
    return normalized + _eye_like(residual)


def self_attention_deltas(relevance: Relevance, modality: str, attention: Tensor) -> Dict[Pair, Tensor]:
    """Eq. 6-7: ``dR^{sy} = A_bar . R^{sy}`` for every modality ``y`` (``y = s`` is Eq. 6; with the identity held
    implicitly ``A_bar . (I + (R - I)) = A_bar + A_bar . (R - I)``). All-zero blocks (e.g. DETR's ``R^{iq}``)
    contribute nothing and are skipped.

    Args:
        relevance (Relevance): The state before the event.
        modality (str): ``s``, whose tokens attend to each other.
        attention (Tensor): ``[E, N_s, N_s]`` the fused map ``A_bar``.

    Returns:
        *dict*: The deltas per block.
    """
    deltas = {}
    for (x, y), block in relevance.items():
        if x != modality:
            continue
        product = torch.bmm(attention, block) if block.any() else None
        if x == y and x in relevance.implicit_identity:
            deltas[(x, y)] = attention if product is None else attention + product
        elif product is not None or x == y:
            deltas[(x, y)] = product if product is not None else torch.zeros_like(block)
    return deltas


def has_zero_row(residual: Tensor, real: Optional[Tensor] = None) -> Tensor:
    """Whether a row of ``R_hat = R - I`` (a real one) sums to zero, where the unguarded Eq. 8-9 would divide 0 by 0.

    Args:
        residual (Tensor): ``[E, N, N]`` the residual ``R_hat``.
        real (Tensor, optional): ``[E, N]`` the real tokens. Default: None (all)

    Returns:
        *Tensor*: ``[E]`` booleans.
    """
    zero_rows = residual.sum(dim=-1) == 0
    return (zero_rows if real is None else zero_rows & real).any(dim=-1)


def bimodal_deltas(
    relevance: Relevance,
    query: str,
    key: str,
    attention: Tensor,
    normalize: bool = True,
    self_in_bimodal: bool = True,
    key_attends_query: bool = True,
    drop_on_zero_row: bool = False,
    real: Optional[Mapping[str, Tensor]] = None,
) -> Dict[Pair, Tensor]:
    """Eq. 10-11 for ``query`` (s) tokens attending to ``key`` (q) tokens.

    Eq. 10: ``dR^{sq} = (R_bar^{ss})^T . A_bar . R_bar^{qq}``, with ``R_bar`` the
    normalised self relevance (raw ``R`` when ``normalize=False``, the "w/o norm."
    ablation), or ``dR^{sq} = A_bar`` when ``self_in_bimodal=False`` (the "Eq. 10
    w/o self-att." ablation). Eq. 11: ``dR^{ss} = A_bar . R^{qs}``, only when
    ``key_attends_query``: otherwise ``R^{qs}`` is structurally zero (no ``q`` token ever
    attends to ``s``) and the rule is not applied, so "w/o aggregation" keeps ``R^{ss}``.

    A row of ``R_hat^{ss}`` or ``R_hat^{qq}`` summing to zero is normalised to zero and the rest
    of the update applies. ``drop_on_zero_row=True`` reproduces the reference DETR code's
    unguarded Eq. 8-9 instead: an element with such a row among its real tokens (``real``:
    ``[E, N]`` masks per modality; all tokens when None) gets no Eq. 10 update (there 0/0
    spreads NaN over the whole update, which is then set to 0).

    Args:
        relevance (Relevance): The state before the event.
        query (str): ``s``, the attending modality.
        key (str): ``q``, the attended modality.
        attention (Tensor): ``[E, N_s, N_q]`` the fused map ``A_bar``.
        normalize (bool, optional): Eq. 8-9. Default: True
        self_in_bimodal (bool, optional): The self relevance in Eq. 10. Default: True
        key_attends_query (bool, optional): Apply Eq. 11. Default: True
        drop_on_zero_row (bool, optional): The reference DETR code's unguarded Eq. 8-9. Default: False
        real (Mapping[str, Tensor], optional): ``[E, N]`` real tokens per modality. Default: None

    Returns:
        *dict*: The deltas per block.
    """
    if not self_in_bimodal:
        cross = attention
    elif normalize:
        residuals = {m: relevance.residual(m) for m in (query, key)}
        r_ss, r_qq = (normalize_self_relevance(residuals[m]) for m in (query, key))
        cross = torch.bmm(r_ss.transpose(1, 2), torch.bmm(attention, r_qq))
        if drop_on_zero_row:
            dropped = [has_zero_row(residuals[m], None if real is None else real[m]) for m in (query, key)]
            cross = torch.where((dropped[0] | dropped[1])[:, None, None], 0.0, cross)
    else:
        cross = torch.bmm(relevance.full((query, query)).transpose(1, 2), torch.bmm(attention, relevance.full((key, key))))
    if not key_attends_query:
        return {(query, key): cross}
    back = relevance[(key, query)]
    self_delta = torch.bmm(attention, back) if back.any() else relevance[(query, query)].new_zeros(())
    return {(query, key): cross, (query, query): self_delta.expand_as(relevance[(query, query)])}


def apply_deltas(relevance: Relevance, deltas: Iterable[Dict[Pair, Tensor]], aggregate: bool = True) -> Relevance:
    """Apply the deltas of one step: ``R <- R + sum(dR)``, or ``R <- sum(dR)`` without aggregation.

    Args:
        relevance (Relevance): The state before the step.
        deltas (iterable of dict): The deltas of the step's events, each computed from that state.
        aggregate (bool, optional): Add (True) or replace. Default: True

    Returns:
        *Relevance*: The state after the step.
    """
    summed: Dict[Pair, Tensor] = {}
    for delta in deltas:
        for pair, value in delta.items():
            summed[pair] = summed[pair] + value if pair in summed else value
    if aggregate:
        return Relevance({**relevance, **{pair: relevance[pair] + value for pair, value in summed.items()}},
                         relevance.implicit_identity)
    replaced = {x for x, y in summed if x == y}
    return Relevance({**relevance, **summed}, relevance.implicit_identity - replaced)


def rollout(maps: Iterable[Tensor], size: int, like: Tensor) -> Tensor:
    """Attention rollout (Abnar & Zuidema): ``prod_l norm(A_l + I)``, later layers on the left; ``norm`` divides each
    row by its sum. With no maps the result is the identity.

    Args:
        maps (iterable of Tensor): ``[E, N, N]`` head-mean maps in forward order.
        size (int): ``N``.
        like (Tensor): ``[E]``, of the dtype and device wanted.

    Returns:
        *Tensor*: ``[E, N, N]``.
    """
    joint = torch.eye(size, dtype=like.dtype, device=like.device).expand(like.shape[0], size, size)
    for attention in maps:
        joint = torch.bmm(normalized_with_identity(attention), joint)
    return joint


def normalized_with_identity(attention: Tensor) -> Tensor:
    """Rollout's factor ``norm(A + I)``: each row of ``A + I`` divided by its sum.

    Args:
        attention (Tensor): ``[E, N, N]``.

    Returns:
        *Tensor*: ``[E, N, N]``.
    """
    augmented = attention + _eye_like(attention)
    return augmented / augmented.sum(dim=-1, keepdim=True)


def read_rows(matrix: Tensor, rows: Tensor) -> Tensor:
    """Row ``rows[e]`` of ``matrix[e]`` for every element.

    Args:
        matrix (Tensor): ``[E, N, M]``.
        rows (Tensor): ``[E]``.

    Returns:
        *Tensor*: ``[E, M]``.
    """
    return matrix[torch.arange(matrix.shape[0], device=matrix.device), rows]
