"""Streaming readout rows through the backward passes (docs/METHOD.md, "Streaming row propagation"): which events
the engine streams (:func:`streamed_rows`), and an eager event's map applied (:func:`stream_eager_map`; a lean call's
backward hands its map to a sink of :mod:`captum_mm.attr._row_sinks`).
"""

from typing import Dict, FrozenSet, List, Optional, cast

from torch import Tensor

from captum_mm.attr._pass import Needs
from captum_mm.attr._placement import unit_placement
from captum_mm.capture.record import AttentionCall
from captum_mm.relevance.propagation import self_attention_only
from captum_mm.relevance.schedule import AttentionEvent, Schedule
from captum_mm.relevance.stages import streamable_stages
from captum_mm.relevance.streaming import RowPass, RowRule, StreamedRows, own_events, streamable


def streamed_modalities(schedule: Schedule, events: List[AttentionEvent], calls: List[AttentionCall], needs: Needs) -> FrozenSet[str]:
    """The modalities whose readout rows the engine streams for a method's events, for a method with a ``needs.rows``
    rule, on a self-attention-only schedule: each read from its own relevance (no stage), and each earlier stage
    continued from such rows (a VLM's vision tower: its rows start from the LM's final ones, known once the backward
    has passed the LM), whose self-attention events among the method's are all captured lean (their maps handed over
    inside the backward, last layer first, or recomputed after the forward for a method without a backward; none laid
    out in token positions after the forward, as its chunks are over other units) or all eager (read after it, last
    first) -- a stage captured lean only after a lean later stage (an eager one's rows are final only after the
    backward).

    Args:
        schedule (Schedule): The schedule of the elements explained.
        events (list[AttentionEvent]): The events the method fuses ...
        calls (list[AttentionCall]): ... and their calls.
        needs (Needs): What the method needs.

    Returns:
        *frozenset of str*
    """
    if needs.rows is None or not self_attention_only(schedule):
        return frozenset()
    used = {event.call: call for event, call in zip(events, calls)}

    def lean(modality: str) -> Optional[bool]:  # None: not streamable
        own = own_events(events, modality)
        laid_out = any(used[event.call].lean is not None and used[event.call].layout is not None  # units, not placed
                       and unit_placement(used[event.call]) is None for event in own)
        if not needs.backward and any(used[event.call].lean is not None and used[event.call].recompute is None for event in own):
            return None  # a head mean the forward kept
        kinds = {used[event.call].lean is not None for event in own}
        return kinds.pop() if own and not laid_out and len(kinds) == 1 else None

    streamed = {modality: lean(modality) for modality in streamable(schedule)}
    streamed = {modality: kind for modality, kind in streamed.items() if kind is not None}
    for modality, upstreams in streamable_stages(schedule, cast(Dict[str, bool], streamed)).items():
        kind = lean(modality)
        if kind is not None and all(upstream in streamed and (streamed[upstream] or not kind) for upstream in upstreams):
            streamed[modality] = kind
    return frozenset(streamed)


def streamed_rows(schedule: Schedule, events: List[AttentionEvent], calls: List[AttentionCall], needs: Needs,
                  like: Tensor) -> Optional[StreamedRows]:
    """The rows of :func:`streamed_modalities`, at their readouts' starts; None where nothing is streamed.

    Args:
        schedule (Schedule): The schedule of the elements explained.
        events (list[AttentionEvent]): The events the method fuses ...
        calls (list[AttentionCall]): ... and their calls.
        needs (Needs): What the method needs.
        like (Tensor): A tensor of the rows' dtype and device.

    Returns:
        *StreamedRows or None*
    """
    modalities = streamed_modalities(schedule, events, calls, needs)
    direct = modalities & frozenset(streamable(schedule))
    if not direct:
        return None
    return StreamedRows(schedule, cast(RowRule, needs.rows), direct, like, events, modalities - direct)


def stream_eager_map(rows: RowPass, event: AttentionEvent, values: Tensor) -> None:
    """Apply an eager event's whole fused map ``values`` ``[e, Nq, Nk]`` (read after the backward, the last event first).

    Args:
        rows (RowPass): The backward pass's updates.
        event (AttentionEvent): The event.
        values (Tensor): Its fused map for the pass's elements.
    """
    update = rows.update(event)
    update.add(slice(None), slice(None), values)
    update.close()
