"""The engine: one forward pass with every attention call captured, the targets and the schedule
(:func:`forward_pass`), then the backward passes that give each scheduled map what a method needs,
head-reduced right away (:func:`fused_maps`).

Methods declare their :class:`Needs` and receive one :class:`AttentionBundle` per event; the engine
runs no backward pass and hands over no tensor that no method asked for.
"""

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, cast

import torch
from torch import Tensor, nn

from captum_mm._precision import accumulation_dtype, computed_in_float32, exact
from captum_mm.attr._checks import (
    check_connected,
    check_finite_logits,
    check_finite_map,
    check_grad_mode,
    run_forward,
    warn_if_training,
)
from captum_mm.attr._gradients import attention_gradients
from captum_mm.lrp import LRPState, RuleSet, attention_relevance, lrp_rules
from captum_mm.models import ArchitectureAdapter, TargetOptions, TargetSelection, adapter_for, capture_attention
from captum_mm.models.capture import AttentionCall, AttentionRecord
from captum_mm.models.lean import Fusion, LeanMaps
from captum_mm.relevance.schedule import AttentionEvent, Schedule


@dataclass(frozen=True)
class Needs:
    """What a method needs of every attention map it uses."""

    #: The attention probabilities ``A``.
    probabilities: bool = True
    #: Their gradients ``dy/dA`` (an ordinary backward pass).
    gradients: bool = False
    #: The LRP relevance ``R_A`` at the maps (an LRP backward pass).
    relevance: bool = False
    #: How the method reduces heads, when it is one lean capture computes (:mod:`captum_mm.models.lean`):
    #: then no per-head map is kept. None: the method receives the per-head tensors.
    fusion: Optional[Fusion] = None

    @property
    def backward(self) -> bool:
        return self.gradients or self.relevance


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


@dataclass
class ForwardPass:
    """What one captured forward pass left behind; the model's hooks are live while it is in use."""

    adapter: ArchitectureAdapter
    record: AttentionRecord
    output: Any
    logits: Tensor
    selection: TargetSelection
    schedule: Schedule
    lrp: Optional[LRPState]
    method: str


def check_inputs(inputs: Tuple[Tensor, ...]) -> None:
    if not inputs:
        raise ValueError("inputs is empty: pass at least one tensor.")
    sizes = [tuple(t.shape[:1]) for t in inputs if isinstance(t, Tensor)]
    if any(size == () for size in sizes):
        raise ValueError("inputs must be batched: every input tensor needs a leading batch dimension.")
    if len({size[0] for size in sizes}) > 1:
        raise ValueError(f"Batch sizes of inputs disagree: {[s[0] for s in sizes]}; all must be equal.")


@contextmanager
def forward_pass(
    model: nn.Module,
    forward_func: Callable,
    inputs: Sequence[Any],
    additional: Sequence[Any] = (),
    *,
    target: Any = None,
    needs: Needs = Needs(),
    rules: Optional[RuleSet] = None,
    start_layer: int = 0,
    adapter: Optional[ArchitectureAdapter] = None,
    method: str = "captum_mm",
    lean: bool = True,
    target_options: TargetOptions = TargetOptions(),
) -> Iterator[ForwardPass]:
    """Run ``forward_func(*inputs, *additional)`` with attention captured (and LRP rules installed
    when ``needs.relevance``); yield the pass with its targets and schedule. Everything done to the
    model is undone on exit, also on error.

    Args:
        lean (bool): Capture lean where the method's ``needs.fusion`` and the model allow it.
        target_options (TargetOptions): Passed to the adapter's ``select_targets`` (DETR: ``threshold``, ``single``).
    """
    adapter = adapter or adapter_for(model)
    check_grad_mode(needs.backward, method)
    warn_if_training(model)
    with ExitStack() as stack:
        stack.enter_context(torch.set_grad_enabled(needs.backward))
        specs = adapter.attention_specs()
        if not specs:
            raise TypeError(
                f"{type(adapter).__name__} finds no attention module in this {type(model).__name__}: it was written "
                "for other classes. Register an adapter naming this model's attention classes (tutorial 04)."
            )
        record = stack.enter_context(
            capture_attention(
                model, specs, adapter.check_arguments, adapter.extra_hooks, needs.backward, adapter.gradient_free_modules(),
                lean=needs.fusion if lean else None, attention_functions=adapter.attention_functions,
            )
        )
        lrp = None
        if needs.relevance:
            structure, rules = adapter.lrp_structure(), rules or adapter.default_rules()
            lrp = stack.enter_context(lrp_rules(model, structure, rules, specs, record))
            stack.enter_context(computed_in_float32(model))  # after the hooks reading the user's inputs
        output = run_forward(forward_func, (*inputs, *additional), method)
        if not record.arguments:
            raise ValueError(
                f"forward_func never called {type(model).__name__}.forward: it must run the model itself "
                "(a sub-module or a method such as get_image_features is not explained)."
            )
        logits = adapter.logits(output)
        check_finite_logits(adapter.per_sample_outputs(logits))
        selection = adapter.select_targets(logits, target, target_options)
        schedule = adapter.schedule(record, selection).starting_at(start_layer)
        yield ForwardPass(adapter, record, output, logits, selection, schedule, lrp, method)


def fused_maps(
    forward: ForwardPass,
    events: List[AttentionEvent],
    fuse: Callable[[AttentionBundle], Tensor],
    needs: Needs,
    vectorized: Optional[bool] = None,
    slots: Optional[Tensor] = None,
) -> Dict[int, Tensor]:
    """One fused, padding-masked ``[E, Nq, Nk]`` map per event, ``fuse`` applied to each event's bundle
    (calls captured lean come with the map ``needs.fusion`` names already computed), for the elements of
    the backward ``slots`` (default: all; :func:`slot_groups`), in element order.

    Backward passes (if ``needs`` asks for any) run over the one forward graph. On an accelerator all
    slots (DETR queries) share one vectorised backward (``is_grads_batched``); on CPU, or with calls
    captured lean, one backward per slot over the retained graph is faster (benchmarks/README.md) and
    keeps a single slot's gradients alive at a time. ``vectorized`` overrides that choice.
    """
    selection = forward.selection
    slots = torch.arange(selection.grad_outputs.shape[0], device=selection.slot.device) if slots is None else slots
    elements = torch.isin(selection.slot, slots).nonzero()[:, 0]
    schedule, sample = forward.schedule.of_elements(elements), selection.sample[elements]
    calls = [forward.record.calls[event.call] for event in events]
    for event, call in zip(events, calls):
        if call.probs is not None:
            check_finite_map(call.probs, lambda: _valid(schedule, event), sample, event.name)
    if needs.backward:  # into buffers of its own: masked in place
        fused = _fused_from_backward(forward, schedule, elements, slots, events, calls, fuse, needs, vectorized)
        return {event.call: _masked(values, schedule, event) for event, values in zip(events, fused)}
    return {event.call: _fused_without_backward(schedule, event, call, sample, fuse) for event, call in zip(events, calls)}


def _fused_from_backward(
    forward: ForwardPass,
    schedule: Schedule,
    elements: Tensor,
    slots: Tensor,
    events: List[AttentionEvent],
    calls: List[AttentionCall],
    fuse: Callable[[AttentionBundle], Tensor],
    needs: Needs,
    vectorized: Optional[bool],
) -> List[Tensor]:
    """The fused maps of the ``elements`` (those of the backward ``slots``; ``schedule`` is theirs)."""
    logits, selection, masks = forward.logits, forward.selection, schedule.masks
    names = [event.name for event in events]
    check_connected(logits, forward.method)
    seeds = selection.grad_outputs
    chunks = [slots] if is_vectorized(logits, calls, vectorized) else list(slots.split(1))
    element_slot, element_sample = selection.slot[elements], selection.sample[elements]
    fused = [_fused_buffer(call, logits, int(elements.numel())) for call in calls]
    for chunk in chunks:
        members = torch.isin(element_slot, chunk)
        position, sample = element_slot[members] - chunk[0], element_sample[members]
        for event, call in zip(events, calls):
            if call.lean is not None:
                if needs.fusion not in ("gradient_weighted", "grad_cam"):
                    raise RuntimeError(f"{call.name} was captured lean for a fusion ({needs.fusion}) no backward computes.")
                call.lean.prepare(needs.fusion, masks[event.query][members], masks[event.key][members], sample)
        grads: List[Optional[Tensor]] = [None] * len(calls)
        if needs.gradients:
            grads = list(attention_gradients(logits, [call.differentiable for call in calls], seeds[chunk], retain_graph=True, names=names))
        relevance: List[Optional[Tensor]] = [None] * len(calls)
        if needs.relevance:
            assert forward.lrp is not None
            starts = forward.adapter.lrp_start(forward.lrp, logits, seeds[chunk])
            relevance = attention_relevance(forward.lrp, calls, *starts)
        for index, call in enumerate(calls):
            gradient, grads[index] = grads[index], None
            relevant, relevance[index] = relevance[index], None
            if call.lean is not None:
                lean_map, call.lean.fused = cast(Tensor, call.lean.fused), None
                check_finite_map(lean_map[:, None], lambda: _valid(schedule, events[index], members), sample, names[index])
                fused[index][members] = exact(lean_map)[sample]
                continue
            if needs.relevance and relevant is None:
                raise RuntimeError(
                    f"No LRP relevance reaches the attention map {names[index]}: the explained output does not "
                    "depend on it through the model's own forward pass."
                )
            fused[index][members] = fuse(
                AttentionBundle(
                    _take(exact(cast(Tensor, call.probs)), sample) if needs.probabilities else None,
                    _take_slots(gradient, position, sample),
                    _take_slots(relevant, position, sample),
                    _valid(schedule, events[index], members),
                )
            )
    return fused


def is_vectorized(logits: Tensor, calls: List[AttentionCall], vectorized: Optional[bool]) -> bool:
    """Whether a group's slots share one vectorised backward: on accelerators by default, never with lean calls.

    Args:
        logits (Tensor): The explained outputs.
        calls (list[AttentionCall]): The calls the backward reaches.
        vectorized (bool, optional): The method's ``vectorized_backward`` (None: by device).

    Returns:
        *bool*
    """
    lean = any(call.lean is not None for call in calls)
    return logits.is_cuda and not lean if vectorized is None else vectorized and not lean


def _valid(schedule: Schedule, event: AttentionEvent, members: Optional[Tensor] = None) -> Tensor:
    """``[E, Nq, Nk]`` the event's entries between real tokens, of every element of ``schedule`` or of ``members``."""
    rows, columns = schedule.masks[event.query], schedule.masks[event.key]
    if members is not None:
        rows, columns = rows[members], columns[members]
    return rows[:, :, None] & columns[:, None, :]


def _masked(values: Tensor, schedule: Schedule, event: AttentionEvent) -> Tensor:
    """``values`` ``[E, Nq, Nk]`` zeroed in place off the event's real entries (broadcast factors: no ``[E, Nq, Nk]``
    mask is made)."""
    rows, columns = schedule.masks[event.query], schedule.masks[event.key]
    return values.mul_(rows[:, :, None].to(values.dtype)).mul_(columns[:, None, :].to(values.dtype))


def _fused_without_backward(
    schedule: Schedule, event: AttentionEvent, call: AttentionCall, sample: Tensor, fuse: Callable[[AttentionBundle], Tensor]
) -> Tensor:
    """The event's fused, padding-masked map from its probabilities alone."""
    valid = _valid(schedule, event)
    return fuse(AttentionBundle(_take(exact(cast(Tensor, call.probs)), sample), None, None, valid)) * valid


def _fused_buffer(call: AttentionCall, logits: Tensor, elements: int) -> Tensor:
    """Zeros for the call's fused maps of every element, ``[E, Nq, Nk]``."""
    if call.probs is not None:
        return call.probs.new_zeros(elements, *call.probs.shape[-2:], dtype=accumulation_dtype(call.probs.dtype))
    lean = cast(LeanMaps, call.lean)
    return logits.new_zeros(elements, *lean.shape[-2:], dtype=accumulation_dtype(lean.probe.dtype))


def _take(tensor: Tensor, index: Tensor) -> Tensor:
    """``tensor[index]``, without a copy when ``index`` is every row in order."""
    if index.numel() == tensor.shape[0] and torch.equal(index, torch.arange(tensor.shape[0], device=index.device)):
        return tensor
    return tensor[index]


def _take_slots(tensor: Optional[Tensor], position: Tensor, sample: Tensor) -> Optional[Tensor]:
    """``tensor[position, sample]`` for ``[K, B, ...]`` tensors, in the accumulation dtype (a view when
    it is the only slot, all samples, already in that dtype)."""
    if tensor is None:
        return None
    if tensor.shape[0] == 1:
        return _take(exact(tensor[0]), sample)
    return exact(tensor[position, sample])
