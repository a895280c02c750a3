"""Streaming readout rows through the backward passes (docs/METHOD.md, "Streaming row propagation"): which events
the engine streams (:func:`streamed_rows`), and the sink a lean call's backward hands its map to (:class:`LeanSink`).
"""

from typing import Dict, FrozenSet, List, Optional, cast

from torch import Tensor

from captum_mm.attr._checks import check_finite_map
from captum_mm.attr._pass import Needs
from captum_mm.capture.record import AttentionCall
from captum_mm.relevance.propagation import self_attention_only
from captum_mm.relevance.schedule import AttentionEvent, Schedule
from captum_mm.relevance.stages import streamable_stages
from captum_mm.relevance.streaming import RowPass, RowRule, RowUpdate, StreamedRows, own_events, streamable


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
        laid_out = any(used[event.call].lean is not None and used[event.call].layout is not None for event in own)  # units
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


class LeanSink:
    """The :class:`~captum_mm.capture.lean.MapSink` of one streamed lean event in one backward pass: each chunk of its
    map ``[B, rows, columns]`` checked finite on the entries its elements see and applied to their rows.

    Args:
        rows (RowPass): The backward pass's updates.
        event (AttentionEvent): The event.
        schedule (Schedule): The group's schedule.
        sample (Tensor): ``[e]`` the sample of each element the backward explains.
    """

    def __init__(self, rows: RowPass, event: AttentionEvent, schedule: Schedule, sample: Tensor) -> None:
        self.rows, self.event, self.sample = rows, event, sample
        members = rows.members
        self.real_rows, self.real_columns = schedule.masks[event.query][members], schedule.masks[event.key][members]
        self.update: Optional[RowUpdate] = None

    def add(self, rows: slice, columns: slice, values: Tensor) -> None:
        """Apply one chunk of the map (the event's update begins at its first chunk: when the backward reaches it).

        Args:
            rows (slice): The chunk's rows.
            columns (slice): Its columns.
            values (Tensor): ``[B, rows, columns]``, per sample.
        """
        check_finite_map(values[:, None], lambda: self.real_rows[:, rows, None] & self.real_columns[:, None, columns],
                         self.sample, self.event.name)
        self._update().add(rows, columns, values[self.sample])

    def wants(self, rows: slice) -> bool:
        """Whether some member's rows before the event are nonzero on ``rows`` (real tokens only).

        Args:
            rows (slice): A chunk's rows.

        Returns:
            *bool*
        """
        return bool(self._update().source[:, :, rows].any())

    def close(self) -> None:
        """The map is complete: update the rows."""
        self._update().close()

    def _update(self) -> RowUpdate:
        if self.update is None:
            self.update = self.rows.update(self.event)
        return self.update


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
