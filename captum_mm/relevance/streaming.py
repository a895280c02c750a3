"""Readout rows propagated while the backward pass computes the fused maps, so that no map is kept
(docs/METHOD.md, "Streaming row propagation").

On a self-attention-only modality a readout row is ``e_p S_L ... S_1`` with ``S_l = I + A_bar_l`` (or ``A_bar_l``
without aggregation): the last layer first, the order in which the backward pass reaches the layers. Each event's
map is applied to the rows as it arrives, in chunks of its rows (``v A = sum_chunks v[:, rows] A[rows, :]``), and
then dropped: ``[E, k, N]`` rows per modality instead of one ``[E, N, N]`` map per event.
"""

from typing import Callable, Dict, FrozenSet, List, Optional, Sequence

import torch
from torch import Tensor

from captum_mm.relevance.schedule import AttentionEvent, Readout, Schedule, Stage
from captum_mm.relevance.stages import StageEntries, read_columns, stage_start
from captum_mm.relevance.updates import RowRule, RowUpdate


class StreamedRows:
    """The readout rows of some modalities of a self-attention-only schedule, updated event by event while the backward
    passes hand over each event's fused map in chunks of rows, the last event first (:meth:`backward`).

    Args:
        schedule (Schedule): The schedule of the elements explained.
        rule (RowRule): How an event's map updates the rows.
        modalities (frozenset of str): The modalities streamed: each is read from its own rows (``R^{ss}``).
        like (Tensor): A tensor of the rows' dtype and device.
        events (sequence of AttentionEvent, optional): The events the method propagates. Default: None (all)
        stages (frozenset of str, optional): Modalities of earlier stages streamed too (a VLM's vision tower): their
                    rows start, one a readout's stage, from the later stage's final rows (:meth:`continued`).
                    Default: none
    """

    def __init__(self, schedule: Schedule, rule: RowRule, modalities: FrozenSet[str], like: Tensor,
                 events: Optional[Sequence[AttentionEvent]] = None, stages: FrozenSet[str] = frozenset()) -> None:
        self.schedule, self.rule = schedule, rule
        events = schedule.events if events is None else events
        self.values = {modality: _starts(schedule, modality).to(like) for modality in modalities}
        self.starts = {modality: rows.clone() for modality, rows in self.values.items()}
        self.entries = StageEntries(schedule, sorted(stages))
        for modality, entries in self.entries.rows.items():
            self.values[modality] = self.values[next(iter(modalities))].new_zeros(schedule.num_elements, len(entries),
                                                                                  schedule.sizes[modality])
        self.order = {modality: [event.call for event in reversed(own_events(events, modality))]
                      for modality in modalities | stages}

    @property
    def calls(self) -> FrozenSet[int]:
        """The calls of every streamed event."""
        return frozenset(call for calls in self.order.values() for call in calls)

    def backward(self, members: Tensor) -> "RowPass":
        """The updates of one backward pass, for the elements ``members`` (``[E]`` booleans).

        Args:
            members (Tensor): The elements this backward explains.

        Returns:
            *RowPass*
        """
        return RowPass(self, members)

    def rows(self, modality: str, start: Tensor, rule: object) -> Tensor:
        """The propagated rows that began as ``start`` ``[E, N]``, under ``rule`` (the method's own step, which must be
        the streamed one).

        Args:
            modality (str): A streamed modality.
            start (Tensor): ``[E, N]`` the readout's start rows.
            rule (object): The step the method propagates with.

        Returns:
            *Tensor*: ``[E, N]``.
        """
        if rule != self.rule:
            raise RuntimeError(f"The rows of {modality!r} were streamed with {self.rule}, but the method propagates with {rule}.")
        starts = self.starts[modality]
        for index in range(starts.shape[1]):
            if torch.equal(starts[:, index], start.to(starts)):
                return self.values[modality][:, index]
        raise RuntimeError(f"A readout of {modality!r} starts from rows the backward pass did not propagate.")

    def continued(self, values: Tensor, stage: Stage) -> Tensor:
        """A readout's ``values`` ``[E, n]`` continued through a streamed ``stage``: the stage's streamed rows at its
        ``columns`` (checked to have started from ``values``).

        Args:
            values (Tensor): The later stage's read values.
            stage (Stage): A stage of a streamed modality.

        Returns:
            *Tensor*: ``[E, n_columns]``.
        """
        entry = self.entries.entry(stage)
        self.entries.check_input(entry, values)
        return self.values[stage.pair[0]][:, self.entries.rows[stage.pair[0]].index(entry)][:, stage.columns]

    def start_stages(self, modality: str, members: Tensor, complete: Callable[[str], bool]) -> None:
        """Set the rows of a stage modality of the elements ``members`` to their starts: each readout's stage from the
        later stage's rows, which must be ``complete`` (every event applied).

        Args:
            modality (str): A stage modality.
            members (Tensor): ``[E]`` which elements.
            complete (Callable): Whether a modality's rows are final in this pass.
        """
        starts = []
        for entry in self.entries.rows[modality]:
            upstream, earlier = self.entries.upstream(entry)
            if not complete(upstream):
                raise RuntimeError(f"The backward pass reached {modality!r} before {upstream!r}, whose rows its stage "
                                   "starts from, were final: explain this model with streaming=False.")
            if earlier is None:
                readout = self.schedule.outputs[entry[0]]
                index = _start_index(self.starts[upstream], readout)
                values = read_columns(self.schedule, readout, self.values[upstream][members][:, index], members)
            else:
                rows = self.values[upstream][members][:, self.entries.rows[upstream].index(earlier)]
                values = rows[:, self.entries.stages[earlier].columns]
            self.entries.record_input(entry, members, values)
            starts.append(stage_start(values, self.entries.stages[entry], self.schedule.sizes[modality]))
        self.values[modality][members] = torch.stack(starts, dim=1)


class RowPass:
    """One backward pass's updates of :class:`StreamedRows`: each streamed event once, the last first."""

    def __init__(self, streamed: StreamedRows, members: Tensor) -> None:
        self.streamed, self.members = streamed, members
        self.applied = {modality: 0 for modality in streamed.order}

    def update(self, event: AttentionEvent) -> "RowUpdate":
        """Begin ``event``'s update (its map's chunks go to the returned update).

        Args:
            event (AttentionEvent): A streamed event: the next one, backwards, of its modality.

        Returns:
            *RowUpdate*
        """
        order, done = self.streamed.order[event.query], self.applied[event.query]
        if done >= len(order) or order[done] != event.call:
            raise RuntimeError(f"The backward pass reached {event.name or event.call} out of the reverse layer order that "
                               "streaming the readout rows relies on: explain this model with streaming=False.")
        if done == 0 and event.query in self.streamed.entries.rows:
            self.streamed.start_stages(event.query, self.members, self.complete)
        self.applied[event.query] = done + 1
        streamed = self.streamed
        return RowUpdate(streamed.values, streamed.rule, streamed.schedule.masks[event.query], event.query, self.members)

    def complete(self, modality: str) -> bool:
        """Whether the pass applied every streamed event of ``modality``.

        Args:
            modality (str): A streamed modality.

        Returns:
            *bool*
        """
        return modality in self.applied and self.applied[modality] == len(self.streamed.order[modality])

    def finish(self) -> None:
        """Check that the pass applied every streamed event."""
        missing = [modality for modality, order in self.streamed.order.items() if self.applied[modality] != len(order)]
        if missing:
            raise RuntimeError(f"The backward pass did not reach every attention of {missing} whose readout rows it streams.")


class FusedMaps(Dict[int, Tensor]):
    """The fused maps the engine kept, by call index, and the readout rows it streamed instead of keeping the others.

    Args:
        maps (dict[int, Tensor]): The kept maps.
        streamed (StreamedRows, optional): The streamed rows. Default: None
    """

    def __init__(self, maps: Dict[int, Tensor], streamed: Optional[StreamedRows] = None) -> None:
        super().__init__(maps)
        self.streamed = streamed


def own_events(events: Sequence[AttentionEvent], modality: str) -> List[AttentionEvent]:
    """The self-attention events of ``modality`` among ``events``, in order.

    Args:
        events (sequence of AttentionEvent): Events in schedule order.
        modality (str): The modality.

    Returns:
        *list of AttentionEvent*
    """
    return [event for event in events if event.is_self and event.query == modality]


def _start_index(starts: Tensor, readout: Readout) -> int:
    """The row of ``starts`` ``[E, k, N]`` the readout starts from."""
    one_hot = torch.nn.functional.one_hot(readout.rows, starts.shape[-1])
    start = (one_hot if readout.row_weights is None else readout.row_weights).to(starts)
    return next(index for index in range(starts.shape[1]) if torch.equal(starts[:, index], start))


def _starts(schedule: Schedule, modality: str) -> Tensor:
    """``[E, k, N]`` the distinct rows the readouts of ``modality``'s own relevance start from: one-hot at the readout
    row, or its weights."""
    size, starts = schedule.sizes[modality], []  # type: ignore[var-annotated]
    for readout in schedule.outputs.values():
        if readout.row == readout.key == modality:
            one_hot = torch.nn.functional.one_hot(readout.rows, size).to(torch.get_default_dtype())
            start = one_hot if readout.row_weights is None else readout.row_weights
            if not any(torch.equal(start.to(seen), seen) for seen in starts):
                starts.append(start)
    if not starts:
        raise ValueError(f"No readout of the schedule reads {modality!r} tokens' own relevance.")
    dtype = torch.promote_types(*(start.dtype for start in starts)) if len(starts) > 1 else starts[0].dtype
    return torch.stack([start.to(dtype) for start in starts], dim=1)


def streamable(schedule: Schedule) -> List[str]:
    """The modalities whose readout rows can be streamed: read from their own relevance and continued into by no stage
    (a stage's start rows are known only once the later stage is propagated).

    Args:
        schedule (Schedule): A self-attention-only schedule.

    Returns:
        *list of str*
    """
    stages = {stage.pair[0] for readout in schedule.outputs.values() if readout.through is not None for stage in readout.through.chain()}
    read = {readout.row for readout in schedule.outputs.values() if readout.row == readout.key}
    return sorted(read - stages)
