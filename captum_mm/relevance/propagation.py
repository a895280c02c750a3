"""Whole-schedule relevance: fused attention maps in, relevance matrices ``[E, N_row, N_key]`` out.

Each function returns one matrix per ``(row, key)`` pair of the schedule's outputs;
the caller reads the readout rows. ``maps`` holds one fused map per event, keyed by
the event's call index.
"""

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_mm.relevance.rules import (
    apply_deltas,
    bimodal_deltas,
    initial_relevance,
    read_rows,
    rollout,
    self_attention_deltas,
)
from captum_mm.relevance.schedule import AttentionEvent, Schedule, Stage
from captum_mm.relevance.stages import stage_start
from captum_mm.relevance.streaming import FusedMaps, RowRule, own_events

Maps = Dict[int, Tensor]
#: ``v S`` for rows ``v`` (``[E, k, N]``) and one event's fused map (``[E, N, N]``): one factor of a product ``R = S_L ... S_1``.
RowStep = Callable[[Tensor, Tensor], Tensor]


class RowRelevance:
    """The rows of self-relevance products that readouts use, without the matrices (docs/METHOD.md, "Row-only
    propagation"): where every event of the schedule is self-attention, each modality's ``R^{ss} = S_L ... S_1``
    (later layers on the left, ``S_l`` from the event's fused map by ``step``), so rows ``v`` of it are
    ``v <- v S_l`` from the last event down: ``O(L K N^2)`` for ``K`` rows rather than ``O(L N^3)``, with the same
    values. Cross blocks are zero (no token attends to another modality). Where the engine streamed a modality's rows
    during the backward (``maps`` a :class:`~captum_mm.relevance.streaming.FusedMaps`; docs/METHOD.md, "Streaming row
    propagation"), they are read from there, ``step`` being the streamed :class:`RowRule`.

    Args:
        schedule (Schedule): A self-attention-only schedule.
        maps (dict[int, Tensor]): One fused ``[E, N, N]`` map per event, keyed by its call index (streamed events'
                    left out).
        step (Callable): ``step(v, A_bar) = v S_l`` for rows ``v`` ``[E, k, N]``.
        events (sequence of AttentionEvent, optional): The events propagated (the last layer's alone for raw
                    attention and Grad-CAM). Default: None (every event of the schedule)
    """

    def __init__(self, schedule: Schedule, maps: Maps, step: RowStep, events: Optional[Sequence[AttentionEvent]] = None) -> None:
        self.schedule, self.maps, self.step = schedule, maps, step
        self.events = schedule.events if events is None else list(events)
        self.streamed = maps.streamed if isinstance(maps, FusedMaps) else None

    def rows(self, pair: Tuple[str, str], rows: Tensor, weights: Optional[Tensor] = None) -> Tensor:
        """``R^{pair}[e, rows[e]]`` (or ``weights[e] . R^{pair}``) for every element: ``[E, N_key]``."""
        row, key = pair
        like = _like(self.schedule, self.maps)
        if row != key:
            return like.new_zeros(rows.shape[0], self.schedule.sizes[key])
        start = torch.nn.functional.one_hot(rows, self.schedule.sizes[row]) if weights is None else weights
        return self._propagated(row, start.to(like.dtype))

    def continued(self, values: Tensor, stage: Stage) -> Tensor:
        """``values . P . R^{stage.pair}[stage.rows, stage.columns]`` (``values``: ``[E, n]``)."""
        modality = stage.pair[0]
        if self.streamed is not None and modality in self.streamed.entries.rows:
            values = self.streamed.continued(values, stage)
        else:
            values = self._propagated(modality, stage_start(values, stage, self.schedule.sizes[modality]))[:, stage.columns]
        return values if stage.through is None else self.continued(values, stage.through)

    def _propagated(self, modality: str, rows: Tensor) -> Tensor:
        if self.streamed is not None and modality in self.streamed.values:
            return self.streamed.rows(modality, rows, self.step)
        values = rows[:, None]
        for event in reversed(own_events(self.events, modality)):
            values = self.step(values, self.maps[event.call])
        return values[:, 0]


FullMatrices = Dict[Tuple[str, str], Tensor]
Matrices = Union[FullMatrices, RowRelevance]


def self_attention_only(schedule: Schedule) -> bool:
    """Whether every event of a schedule is self-attention (row-only propagation applies).

    Args:
        schedule (Schedule): The schedule.

    Returns:
        *bool*
    """
    return all(event.is_self for event in schedule.events)


def relevance_rows(matrices: Matrices, pair: Tuple[str, str], rows: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """Row ``rows[e]`` of ``R^{pair}`` for every element (or the ``weights[e]`` weighting of its rows).

    Args:
        matrices (dict or RowRelevance): Full ``[E, N_row, N_key]`` matrices per pair, or their rows.
        pair (tuple[str, str]): ``(row modality, key modality)``.
        rows (Tensor): ``[E]`` the row read per element.
        weights (Tensor, optional): ``[E, N_row]`` weights of the rows read instead (a pooled output). Default: None

    Returns:
        *Tensor*: ``[E, N_key]``.
    """
    if isinstance(matrices, RowRelevance):
        return matrices.rows(pair, rows, weights)
    if weights is None:
        return read_rows(matrices[pair], rows)
    return torch.bmm(weights[:, None].to(matrices[pair].dtype), matrices[pair])[:, 0]


def continued_through(values: Tensor, stage: Stage, matrices: Matrices) -> Tensor:
    """Values over a later stage's tokens continued to the earlier stage's: ``values . P . R[rows, columns]``.

    Args:
        values (Tensor): ``[E, n]`` over the later stage's read columns.
        stage (Stage): The earlier stage, its token map ``P`` and block.
        matrices (dict or RowRelevance): The relevance, full or by rows.

    Returns:
        *Tensor*: ``[E, n_columns]`` over the earlier stage's columns.
    """
    if isinstance(matrices, RowRelevance):
        return matrices.continued(values, stage)
    if stage.token_map is not None:
        values = values @ stage.token_map.to(values.dtype)
    values = torch.bmm(values[:, None], matrices[stage.pair][:, stage.rows][:, :, stage.columns])[:, 0]
    return values if stage.through is None else continued_through(values, stage.through, matrices)


def _like(schedule: Schedule, maps: Maps) -> Tensor:
    """A tensor of the maps' dtype (or the streamed rows')."""
    if isinstance(maps, FusedMaps) and maps.streamed is not None:
        return next(iter(maps.streamed.values.values()))
    return next(iter(maps.values()), schedule.element_sample.new_zeros(0, dtype=torch.get_default_dtype()))


def generic_relevance(
    schedule: Schedule,
    maps: Maps,
    normalize: bool = True,
    aggregate: bool = True,
    self_in_bimodal: bool = True,
    drop_on_zero_row: bool = False,
) -> Matrices:
    """Chefer et al. (ICCV 2021): Eq. 6-7 at self-attention, Eq. 10-11 at bi-modal attention, in schedule order.

    Self-attention-only schedules give :class:`RowRelevance` (the readout rows alone, the same values). Eq. 11 of
    an ``s -> q`` attention is applied only if the model has some ``q -> s`` attention (scheduled or in
    ``schedule.unscheduled_attentions``): without one ``R^{qs}`` stays zero throughout (DETR's image tokens never
    attend to queries), so the rule is structurally void and "w/o aggregation" must not replace ``R^{ss}`` by it.

    Args:
        schedule (Schedule): The events, masks and readouts.
        maps (dict[int, Tensor]): One fused ``[E, Nq, Nk]`` map per event, keyed by its call index.
        normalize (bool, optional): Eq. 8-9 inside Eq. 10. Default: True
        aggregate (bool, optional): Add each update (False replaces). Default: True
        self_in_bimodal (bool, optional): The self relevance in Eq. 10. Default: True
        drop_on_zero_row (bool, optional): See :func:`bimodal_deltas`. Default: False

    Returns:
        *dict or RowRelevance*: ``R^{row, key}`` per pair the readouts use.
    """
    if self_attention_only(schedule):
        return RowRelevance(schedule, maps, RowRule(aggregate))
    relevance = initial_relevance(schedule.sizes, schedule.num_elements, _like(schedule, maps))
    attends = {(event.query, event.key) for event in schedule.events} | schedule.unscheduled_attentions
    for step in schedule.steps:
        deltas = [
            self_attention_deltas(relevance, event.query, maps[event.call])
            if event.is_self
            else bimodal_deltas(
                relevance, event.query, event.key, maps[event.call], normalize, self_in_bimodal,
                key_attends_query=(event.key, event.query) in attends, drop_on_zero_row=drop_on_zero_row,
                real=schedule.masks,
            )
            for event in step
        ]
        relevance = apply_deltas(relevance, deltas, aggregate)
    return {pair: relevance.full(pair) for pair in schedule.pairs}


def last_event(schedule: Schedule, row: str, key: str) -> AttentionEvent:
    """The last attention of ``row`` tokens to ``key`` tokens.

    Args:
        schedule (Schedule): The schedule.
        row (str): The query modality.
        key (str): The key modality.

    Returns:
        *AttentionEvent*

    Raises:
        ValueError: The schedule has no such attention.
    """
    event = schedule.last_event(row, key)
    if event is None:
        raise ValueError(f"The schedule has no attention from {row} to {key} tokens.")
    return event


def last_layer_relevance(schedule: Schedule, maps: Maps) -> FullMatrices:
    """The last event from each readout modality to its key modality (raw attention, Grad-CAM).

    Args:
        schedule (Schedule): The schedule.
        maps (dict[int, Tensor]): Fused maps by call index.

    Returns:
        *dict*: ``[E, N_row, N_key]`` per pair.
    """
    return {pair: maps[last_event(schedule, *pair).call] for pair in schedule.pairs}


def rollout_relevance(schedule: Schedule, maps: Maps) -> Matrices:
    """Attention rollout: ``prod norm(A + I)`` per modality; across modalities ``rollout_ss^T . A_last^{sq} .
    rollout_qq``, each rollout over the self-attentions before ``A_last``; for a causal ``s`` (a decoder)
    ``rollout_ss . A_last^{sq} . rollout_qq``: the transpose would read, at row ``k``, how later tokens draw on
    token ``k``, which token ``k`` cannot depend on.

    Args:
        schedule (Schedule): The schedule.
        maps (dict[int, Tensor]): Head-mean maps by call index.

    Returns:
        *dict or RowRelevance*: Per pair (rows only for self-attention-only schedules).
    """
    if self_attention_only(schedule):
        return RowRelevance(schedule, maps, RowRule(normalize=True))
    like = _like(schedule, maps).new_zeros(schedule.num_elements)

    def rolled(modality, before=None):
        events = schedule.self_events(modality, before)
        return rollout([maps[e.call] for e in events], schedule.sizes[modality], like)

    matrices = {}
    for row, key in schedule.pairs:
        if key == row:
            matrices[(row, key)] = rolled(row)
            continue
        last = last_event(schedule, row, key)
        rows = rolled(row, last) if row in schedule.causal else rolled(row, last).transpose(1, 2)
        matrices[(row, key)] = torch.bmm(rows, torch.bmm(maps[last.call], rolled(key, last)))
    return matrices


def transformer_attribution_relevance(schedule: Schedule, maps: Maps) -> Matrices:
    """Chefer et al. (CVPR 2021): ``prod_l (I + A_bar_l)`` over the readout modality's self-attentions (later layers
    on the left); across modalities the last cross-attention's map alone.

    Args:
        schedule (Schedule): The schedule.
        maps (dict[int, Tensor]): Fused maps by call index.

    Returns:
        *dict or RowRelevance*: Per pair (rows only for self-attention-only schedules).
    """
    if self_attention_only(schedule):
        return RowRelevance(schedule, maps, RowRule())
    matrices = {}
    for row, key in schedule.pairs:
        if key != row:
            matrices[(row, key)] = maps[last_event(schedule, row, key).call]
            continue
        relevance = initial_relevance({row: schedule.sizes[row]}, schedule.num_elements, _like(schedule, maps))
        for event in schedule.self_events(row):
            relevance = apply_deltas(relevance, [self_attention_deltas(relevance, row, maps[event.call])])
        matrices[(row, key)] = relevance.full((row, row))
    return matrices
