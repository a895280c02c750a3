"""The sinks a streamed lean call's backward (or a recomputed head mean) hands its map to, chunk by chunk
(:class:`~captum_mm.capture.lean.MapSink`): applied to the readout rows of :mod:`captum_mm.relevance.streaming`
(docs/METHOD.md, "Streaming row propagation")."""

from typing import Optional

import torch
from torch import Tensor

from captum_mm.attr._checks import check_finite_map
from captum_mm.attr._placement import Placement, unit_placement
from captum_mm.capture.record import AttentionCall
from captum_mm.relevance.schedule import AttentionEvent, Schedule
from captum_mm.relevance.streaming import RowPass, RowUpdate


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
        self._update().add(rows, columns, values[self.sample.to(values.device)])

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


class PlacedSink(LeanSink):
    """The sink of a streamed lean event laid out after the forward: each chunk ``[U, rows, columns]`` of its units'
    maps applied at their tokens' positions to the rows of the members of each unit's sample.

    Args:
        rows (RowPass): The backward pass's updates.
        event (AttentionEvent): The event.
        schedule (Schedule): The group's schedule.
        sample (Tensor): ``[e]`` the sample of each element the backward explains.
        placement (Placement): The call's :func:`unit_placement`.
    """

    def __init__(self, rows: RowPass, event: AttentionEvent, schedule: Schedule, sample: Tensor, placement: Placement) -> None:
        super().__init__(rows, event, schedule, sample)
        owner, self.positions = placement
        self.elements = [(sample == unit_sample).nonzero()[:, 0] for unit_sample in owner.tolist()]  # among the members

    def add(self, rows: slice, columns: slice, values: Tensor) -> None:
        """Apply one chunk of the units' maps.

        Args:
            rows (slice): The chunk's rows (of each unit).
            columns (slice): Its columns.
            values (Tensor): ``[U, rows, columns]``.
        """
        units = torch.arange(values.shape[0], device=values.device)
        check_finite_map(values[:, None], lambda: torch.ones_like(values, dtype=torch.bool), units, self.event.name)
        update = self._update()
        for unit, elements in enumerate(self.elements):
            if elements.numel():
                block = values[unit].expand(elements.numel(), -1, -1)
                update.add_placed(elements, self.positions[unit, rows], self.positions[unit, columns], block)

    def wants(self, rows: slice) -> bool:
        """Whether some member's rows before the event are nonzero at some unit's ``rows``.

        Args:
            rows (slice): A chunk's rows.

        Returns:
            *bool*
        """
        source = self._update().source
        return any(bool(source[elements][:, :, self.positions[unit, rows]].any()) for unit, elements in enumerate(self.elements))


def lean_sink(rows: RowPass, event: AttentionEvent, call: AttentionCall, schedule: Schedule, sample: Tensor) -> LeanSink:
    """The sink of a streamed lean (or recomputed) event: placed when its call is laid out after the forward.

    Args:
        rows (RowPass): The pass's updates.
        event (AttentionEvent): The event.
        call (AttentionCall): Its call.
        schedule (Schedule): The group's schedule.
        sample (Tensor): ``[e]`` each element's sample.

    Returns:
        *LeanSink*
    """
    placement = unit_placement(call)
    return LeanSink(rows, event, schedule, sample) if placement is None else PlacedSink(rows, event, schedule, sample, placement)
