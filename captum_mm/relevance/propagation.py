"""Whole-schedule relevance: fused attention maps in, relevance matrices ``[E, N_row, N_key]`` out.

Each function returns one matrix per ``(row, key)`` pair of the schedule's outputs;
the caller reads the readout rows. ``maps`` holds one fused map per event, keyed by
the event's call index.
"""

from typing import Dict, Tuple

import torch
from torch import Tensor

from captum_mm.relevance.rules import apply_deltas, bimodal_deltas, initial_relevance, rollout, self_attention_deltas
from captum_mm.relevance.schedule import Schedule

Maps = Dict[int, Tensor]
Matrices = Dict[Tuple[str, str], Tensor]


def _like(schedule: Schedule, maps: Maps) -> Tensor:
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

    Eq. 11 of an ``s -> q`` attention is applied only if the schedule has some ``q -> s``
    attention: without one ``R^{qs}`` stays zero throughout (DETR's image tokens never attend
    to queries), so the rule is structurally void and "w/o aggregation" must not replace
    ``R^{ss}`` by it. ``drop_on_zero_row``: see :func:`bimodal_deltas`.
    """
    relevance = initial_relevance(schedule.sizes, schedule.num_elements, _like(schedule, maps))
    attends = {(event.query, event.key) for event in schedule.events}
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


def last_event(schedule: Schedule, row: str, key: str):
    """The last attention of ``row`` tokens to ``key`` tokens (an error if there is none)."""
    event = schedule.last_event(row, key)
    if event is None:
        raise ValueError(f"The schedule has no attention from {row} to {key} tokens.")
    return event


def last_layer_relevance(schedule: Schedule, maps: Maps) -> Matrices:
    """The last event from each readout modality to its key modality (raw attention, Grad-CAM)."""
    return {pair: maps[last_event(schedule, *pair).call] for pair in schedule.pairs}


def rollout_relevance(schedule: Schedule, maps: Maps) -> Matrices:
    """Attention rollout: ``prod norm(A + I)`` per modality; across modalities
    ``rollout_ss^T . A_last^{sq} . rollout_qq``, each rollout over the self-attentions before ``A_last``."""
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
        matrices[(row, key)] = torch.bmm(rolled(row, last).transpose(1, 2), torch.bmm(maps[last.call], rolled(key, last)))
    return matrices


def transformer_attribution_relevance(schedule: Schedule, maps: Maps) -> Matrices:
    """Chefer et al. (CVPR 2021): ``prod_l (I + A_bar_l)`` over the readout modality's self-attentions
    (later layers on the left); across modalities the last cross-attention's map alone."""
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


def min_max_scaled(matrix: Tensor, row_mask: Tensor, key_mask: Tensor) -> Tensor:
    """Each element's matrix scaled to [0, 1] over its real (unpadded) entries."""
    valid = row_mask[:, :, None] & key_mask[:, None, :]
    low = torch.where(valid, matrix, torch.inf).amin(dim=(1, 2), keepdim=True)
    high = torch.where(valid, matrix, -torch.inf).amax(dim=(1, 2), keepdim=True)
    spread = high - low
    return torch.where(valid & (spread > 0), (matrix - low) / torch.where(spread > 0, spread, 1.0), 0.0)
