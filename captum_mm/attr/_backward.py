"""The backward passes of one group of slots and the maps they give (:func:`~captum_mm.attr.engine.fused_maps`).

The kinds of backward are properties of the whole pass, chosen once from the method's ``Needs``: autograd's for the
gradients ``dy/dA`` (the calls captured lean compute their head-reduced map in it) and LRP's for the relevance ``R_A``.
Each chunk of slots (all of them when vectorised, else one) runs those it needs; then each event's map is read in its
call's mode, chosen once per event since one pass mixes them: a lean call hands over its map, an eager call's
:class:`AttentionBundle` goes to the method's ``fuse``.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple, cast

import torch
from torch import Tensor

from captum_mm._precision import accumulation_dtype, exact
from captum_mm.attr._checks import check_connected, check_finite_map
from captum_mm.attr._gradients import attention_gradients
from captum_mm.attr._pass import ForwardPass, Needs
from captum_mm.attr._row_sinks import lean_sink
from captum_mm.attr._streaming import stream_eager_map
from captum_mm.capture.lean import LeanMaps, LeanRequest, lean_backward
from captum_mm.capture.record import AttentionCall
from captum_mm.lrp import attention_relevance
from captum_mm.relevance.schedule import AttentionEvent, Schedule
from captum_mm.relevance.streaming import RowPass, StreamedRows


@dataclass
class AttentionBundle:
    """One attention event for the elements of one backward pass, as a method receives it.

    Attributes:
        probs, grads, relevance (Tensor or None): ``[E, H, Nq, Nk]``, each present only if needed.
        valid (Tensor): ``[E, Nq, Nk]`` the entries between real (unpadded) tokens that the element sees.
    """

    probs: Optional[Tensor]
    grads: Optional[Tensor]
    relevance: Optional[Tensor]
    valid: Tensor


@dataclass(frozen=True)
class BackwardGroup:
    """The elements of a group of backward slots, and the events whose maps they need.

    Attributes:
        forward (ForwardPass): The captured forward pass.
        schedule (Schedule): The elements' schedule.
        elements (Tensor): ``[E]`` the elements, in order.
        events (list[AttentionEvent]): The events, ``calls`` their calls.
        fuse (Callable): The method's fusion of an eager call's bundle.
        needs (Needs): What the method needs.
        streamed (StreamedRows, optional): The readout rows streamed through the backward passes (their events get
                    no map). Default: None
    """

    forward: ForwardPass
    schedule: Schedule
    elements: Tensor
    events: List[AttentionEvent]
    calls: List[AttentionCall]
    fuse: Callable[[AttentionBundle], Tensor]
    needs: Needs
    streamed: Optional[StreamedRows] = None

    def is_streamed(self, index: int) -> bool:
        """Whether the event ``index`` is streamed (its map applied to the rows, not kept).

        Args:
            index (int): The event's position in ``events``.

        Returns:
            *bool*
        """
        return self.streamed is not None and self.events[index].call in self.streamed.calls


@dataclass(frozen=True)
class _Chunk:
    """The slots of one backward: their seeds ``[K, ...]``, the group's elements among them (``members``, ``[E]``),
    and those elements' positions among the chunk's slots and their samples."""

    seeds: Tensor
    members: Tensor
    position: Tensor
    sample: Tensor


def fused_from_backward(group: BackwardGroup, slots: Tensor, vectorized: bool) -> List[Optional[Tensor]]:
    """The group's fused maps, ``[E, Nq, Nk]`` an event, not yet padding-masked; the streamed events' applied to
    ``group.streamed`` instead.

    Args:
        group (BackwardGroup): The elements (those of the backward ``slots``) and events.
        slots (Tensor): The backward slots.
        vectorized (bool): All slots in one backward, else one backward a slot.

    Returns:
        *list[Tensor or None]*: one map an event, in order (None where streamed).
    """
    logits = group.forward.logits
    check_connected(logits, group.forward.method)
    count = int(group.elements.numel())
    fused = [None if group.is_streamed(index) else _fused_buffer(call, logits, count) for index, call in enumerate(group.calls)]
    for chunk in _chunks(group, slots, vectorized):
        rows = None if group.streamed is None else group.streamed.backward(chunk.members)
        for index, values in _chunk_maps(group, chunk, rows):
            buffer = cast(Tensor, fused[index])
            buffer[chunk.members] = values.to(buffer.device)  # computed where the layer ran
        if rows is not None:
            rows.finish()
    return fused


def valid_entries(schedule: Schedule, event: AttentionEvent, members: Optional[Tensor] = None) -> Tensor:
    """``[E, Nq, Nk]`` the event's entries between real tokens, of every element of ``schedule`` or of ``members``.

    Args:
        schedule (Schedule): The elements' schedule.
        event (AttentionEvent): The event.
        members (Tensor, optional): ``[E]`` which elements (default: all).

    Returns:
        *Tensor*
    """
    rows, columns = schedule.masks[event.query], schedule.masks[event.key]
    if members is not None:
        rows, columns = rows[members], columns[members]
    return rows[:, :, None] & columns[:, None, :]


def take_rows(tensor: Tensor, index: Tensor) -> Tensor:
    """``tensor[index]``, without a copy when ``index`` is every row in order.

    Args:
        tensor (Tensor): Any tensor.
        index (Tensor): ``[E]`` row indices.

    Returns:
        *Tensor*
    """
    if index.numel() == tensor.shape[0] and torch.equal(index, torch.arange(tensor.shape[0], device=index.device)):
        return tensor
    return tensor[index]


def _chunks(group: BackwardGroup, slots: Tensor, vectorized: bool) -> Iterator[_Chunk]:
    selection = group.forward.selection
    element_slot, element_sample = selection.slot[group.elements], selection.sample[group.elements]
    for chunk in [slots] if vectorized else slots.split(1):
        members = torch.isin(element_slot, chunk)
        yield _Chunk(selection.grad_outputs[chunk], members, element_slot[members] - chunk[0], element_sample[members])


def _chunk_maps(group: BackwardGroup, chunk: _Chunk, rows: Optional[RowPass]) -> Iterator[Tuple[int, Tensor]]:
    """Each kept event's map for the chunk's elements, by index, the last call first (streamed events applied to
    ``rows`` instead: the lean ones during the backward); each gradient and relevance freed once read."""
    nothing: List[Optional[Tensor]] = [None] * len(group.calls)
    requests = _lean_requests(group, chunk, rows)
    grads, lean_maps = _gradients(group, chunk, requests) if group.needs.gradients else (list(nothing), {})
    relevance = _relevance(group, chunk) if group.needs.relevance else list(nothing)
    for index in sorted(range(len(group.calls)), key=lambda index: group.events[index].call, reverse=True):  # backward order
        gradient, grads[index] = grads[index], None
        relevant, relevance[index] = relevance[index], None
        if index in lean_maps:
            values = lean_maps.pop(index)
            if values is not None:  # None: streamed
                yield index, _lean_map(group, chunk, index, values)
        elif group.is_streamed(index):
            stream_eager_map(cast(RowPass, rows), group.events[index], _eager_map(group, chunk, index, gradient, relevant))
        else:
            yield index, _eager_map(group, chunk, index, gradient, relevant)


def _lean_requests(group: BackwardGroup, chunk: _Chunk, rows: Optional[RowPass]) -> Dict[int, LeanRequest]:
    """What the backward computes for each lean call (by index): the method's fusion for the chunk's elements, kept or
    (streamed events) handed to ``rows``."""
    fusion, masks, requests = group.needs.fusion, group.schedule.masks, {}
    for index, (event, call) in enumerate(zip(group.events, group.calls)):
        if call.lean is not None:
            if fusion not in ("gradient_weighted", "grad_cam"):
                raise RuntimeError(f"{call.name} was captured lean for a fusion ({fusion}) no backward computes.")
            batch, _, queries, keys = call.lean.shape
            if call.layout is not None:  # units laid out after the forward (a prompt's images): every token real
                real = masks[event.query].new_ones(batch, queries), masks[event.key].new_ones(batch, keys)
            else:
                real_rows, real_columns = masks[event.query][chunk.members], masks[event.key][chunk.members]
                real = _per_sample(real_rows, chunk.sample, batch), _per_sample(real_columns, chunk.sample, batch)
            sink = lean_sink(cast(RowPass, rows), event, call, group.schedule, chunk.sample) if group.is_streamed(index) else None
            requests[index] = LeanRequest(call.lean, fusion, *real, sink)
    return requests


def _per_sample(real: Tensor, sample: Tensor, batch: int) -> Tensor:
    """``[B, N]`` the elements' real tokens ``real`` ``[E, N]`` at their samples, every token real elsewhere."""
    return torch.ones(batch, real.shape[-1], dtype=torch.bool, device=real.device).index_copy(0, sample, real)


def _gradients(group: BackwardGroup, chunk: _Chunk, lean: Dict[int, LeanRequest]) -> Tuple[List[Optional[Tensor]], Dict[int, Optional[Tensor]]]:
    """Autograd's backward: the gradient at every call's map, and the lean calls' maps (by index)."""
    differentiable, names = [call.differentiable for call in group.calls], [event.name for event in group.events]
    logits = group.forward.logits

    def backward() -> List[Tensor]:
        return attention_gradients(logits, differentiable, chunk.seeds, retain_graph=True, names=names,
                                   joins=[call.gradient_in_token_layout for call in group.calls])

    grads, lean_maps = lean_backward(list(lean.values()), backward)
    return list(grads), dict(zip(lean, lean_maps))


def _relevance(group: BackwardGroup, chunk: _Chunk) -> List[Optional[Tensor]]:
    """LRP's backward: the relevance at every call's map."""
    forward = group.forward
    assert forward.lrp is not None
    starts = forward.adapter.lrp_start(forward.lrp, forward.logits, chunk.seeds)
    relevance = attention_relevance(forward.lrp, group.calls, *starts)
    return [call.in_token_layout(values) for call, values in zip(group.calls, relevance)]


def _lean_map(group: BackwardGroup, chunk: _Chunk, index: int, values: Tensor) -> Tensor:
    """A lean call's map ``values`` ``[B, Nq, Nk]`` (its backward's, per sample) for the chunk's elements."""
    event, call = group.events[index], group.calls[index]
    values = cast(Tensor, call.in_token_layout(values[:, None]))
    check_finite_map(values, lambda: valid_entries(group.schedule, event, chunk.members), chunk.sample, event.name)
    return exact(values[:, 0])[chunk.sample]


def _eager_map(group: BackwardGroup, chunk: _Chunk, index: int, grads: Optional[Tensor], relevance: Optional[Tensor]) -> Tensor:
    """An eager call's map for the chunk's elements: the method's ``fuse`` of its bundle."""
    event, call = group.events[index], group.calls[index]
    if group.needs.relevance and relevance is None:
        raise RuntimeError(
            f"No LRP relevance reaches the attention map {event.name}: the explained output does not "
            "depend on it through the model's own forward pass."
        )
    probs = take_rows(exact(cast(Tensor, call.probs)), chunk.sample) if group.needs.probabilities else None
    valid = valid_entries(group.schedule, event, chunk.members)
    return group.fuse(AttentionBundle(probs, _take_slots(grads, chunk), _take_slots(relevance, chunk), valid))


def _fused_buffer(call: AttentionCall, logits: Tensor, elements: int) -> Tensor:
    """Zeros for the call's fused maps of every element, ``[E, Nq, Nk]``."""
    if call.probs is not None:
        return call.probs.new_zeros(elements, *call.probs.shape[-2:], dtype=accumulation_dtype(call.probs.dtype))
    lean = cast(LeanMaps, call.lean)
    laid_out = cast(Tensor, call.in_token_layout(torch.empty(lean.shape[0], 1, *lean.shape[2:], device="meta")))
    return logits.new_zeros(elements, *laid_out.shape[-2:], dtype=accumulation_dtype(lean.probe.dtype))


def _take_slots(tensor: Optional[Tensor], chunk: _Chunk) -> Optional[Tensor]:
    """``tensor[position, sample]`` of the chunk's elements for ``[K, B, ...]`` tensors, in the accumulation dtype (a
    view when it is the only slot, all samples, already in that dtype)."""
    if tensor is None:
        return None
    if tensor.shape[0] == 1:
        return take_rows(exact(tensor[0]), chunk.sample)
    return exact(tensor[chunk.position, chunk.sample])
