"""The engine: one forward pass with every attention call captured, the targets and the schedule
(:func:`forward_pass`), then the backward passes that give each scheduled map what a method needs,
head-reduced right away (:func:`fused_maps`).

Methods declare their :class:`Needs` and receive one :class:`AttentionBundle` per event; the engine
runs no backward pass and hands over no tensor that no method asked for.
"""

from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, cast

import torch
from torch import Tensor, nn

from captum_mm._precision import accumulation_dtype, computed_in_float32, exact
from captum_mm.attr._backward import AttentionBundle, BackwardGroup, fused_from_backward, take_rows, valid_entries
from captum_mm.attr._checks import check_finite_logits, check_finite_map, check_grad_mode, run_forward, warn_if_training
from captum_mm.attr._pass import ForwardPass, Needs
from captum_mm.attr._row_sinks import lean_sink
from captum_mm.attr._streaming import stream_eager_map, streamed_rows
from captum_mm.capture.lean import LeanMaps
from captum_mm.capture.requests import MapBuffer
from captum_mm.capture.record import AttentionCall
from captum_mm.lrp import RuleSet, lrp_rules
from captum_mm.models import ArchitectureAdapter, TargetOptions, adapter_for, capture_attention
from captum_mm.relevance.schedule import AttentionEvent, Schedule
from captum_mm.relevance.streaming import FusedMaps, StreamedRows


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
    recompute: bool = False,
) -> Iterator[ForwardPass]:
    """Run ``forward_func(*inputs, *additional)`` with attention captured (and LRP rules installed
    when ``needs.relevance``); yield the pass with its targets and schedule. Everything done to the
    model is undone on exit, also on error.

    Args:
        lean (bool): Capture lean where the method's ``needs.fusion`` and the model allow it.
        target_options (TargetOptions): Passed to the adapter's ``select_targets`` (DETR: ``threshold``, ``single``).
        recompute (bool): Lean head means recomputed after the forward, not kept by it (streamed rollout and raw
                    attention; ``capture_attention``'s ``recompute_head_means``).
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
                recompute_head_means=recompute,
            )
        )
        lrp = None
        if needs.relevance:
            structure, rules = adapter.lrp_structure(), rules or adapter.default_rules()
            lrp = stack.enter_context(lrp_rules(model, structure, rules, specs, record))
            stack.enter_context(computed_in_float32(model))  # after the hooks reading the user's inputs
        output = run_forward(forward_func, (*inputs, *additional), method)
        adapter.lay_out_maps(record)
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
    streaming: bool = True,
) -> Dict[int, Tensor]:
    """One fused, padding-masked ``[E, Nq, Nk]`` map per event, ``fuse`` applied to each event's bundle
    (calls captured lean come with the map ``needs.fusion`` names already computed), for the elements of
    the backward ``slots`` (default: all; :func:`slot_groups`), in element order. With ``streaming`` and a
    method declaring ``needs.rows``, the maps of self-attention-only modalities are applied to their readout rows
    as the backward computes them and not kept (:mod:`captum_mm.attr._streaming`): a
    :class:`~captum_mm.relevance.streaming.FusedMaps` holds those rows.

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
            check_finite_map(call.probs, lambda: valid_entries(schedule, event), sample, event.name)
    if needs.backward:  # into buffers of its own: masked in place
        like = forward.logits.new_zeros((), dtype=accumulation_dtype(forward.logits.dtype))
        streamed = streamed_rows(schedule, events, calls, needs, like) if streaming else None
        group = BackwardGroup(forward, schedule, elements, events, calls, fuse, needs, streamed)
        fused = fused_from_backward(group, slots, is_vectorized(forward.logits, calls, vectorized))
        kept = {event.call: _masked(values, schedule, event) for event, values in zip(events, fused) if values is not None}
        return kept if streamed is None else FusedMaps(kept, streamed)
    return _maps_without_backward(schedule, events, calls, sample, fuse, needs, forward.logits, streaming)


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


def _masked(values: Tensor, schedule: Schedule, event: AttentionEvent) -> Tensor:
    """``values`` ``[E, Nq, Nk]`` zeroed in place off the event's real entries (broadcast factors: no ``[E, Nq, Nk]``
    mask is made)."""
    rows, columns = schedule.masks[event.query], schedule.masks[event.key]
    values = values.to(rows.device)  # computed where the layer ran
    return values.mul_(rows[:, :, None].to(values.dtype)).mul_(columns[:, None, :].to(values.dtype))


def _maps_without_backward(schedule: Schedule, events: List[AttentionEvent], calls: List[AttentionCall], sample: Tensor,
                           fuse: Callable[[AttentionBundle], Tensor], needs: Needs, logits: Tensor, streaming: bool) -> Dict[int, Tensor]:
    """The events' fused, padding-masked maps from their probabilities alone; with ``streaming``, those of streamed
    modalities applied to their readout rows instead, the last call first (a head mean recomputed after the forward
    chunk by chunk: only the chunks the rows need, none kept)."""
    like = logits.new_zeros((), dtype=accumulation_dtype(logits.dtype))
    streamed = streamed_rows(schedule, events, calls, needs, like) if streaming else None
    rows = None if streamed is None else streamed.backward(torch.ones_like(sample, dtype=torch.bool))
    kept = {}
    for event, call in sorted(zip(events, calls), key=lambda pair: pair[0].call, reverse=True):
        if rows is not None and event.call in cast(StreamedRows, streamed).calls:
            if call.recompute is not None:
                call.recompute(lean_sink(rows, event, call, schedule, sample))
            else:
                stream_eager_map(rows, event, _fused_without_backward(schedule, event, call, sample, fuse))
        else:
            kept[event.call] = _fused_without_backward(schedule, event, call, sample, fuse)
    if rows is not None:
        rows.finish()
    return kept if streamed is None else FusedMaps(kept, streamed)


def _fused_without_backward(
    schedule: Schedule, event: AttentionEvent, call: AttentionCall, sample: Tensor, fuse: Callable[[AttentionBundle], Tensor]
) -> Tensor:
    """The event's fused, padding-masked map from its probabilities alone (a recomputed head mean whole), computed
    where the layer ran and returned on the schedule's device."""
    probs = call.probs
    if call.recompute is not None:
        lean = cast(LeanMaps, call.lean)
        buffer = MapBuffer(lean.probe.new_zeros(lean.shape[0], *lean.shape[2:], dtype=accumulation_dtype(lean.probe.dtype)))
        call.recompute(buffer)
        probs = call.in_token_layout(buffer.values[:, None])
        check_finite_map(cast(Tensor, probs), lambda: valid_entries(schedule, event), sample, event.name)
    probs = exact(cast(Tensor, probs))
    valid = valid_entries(schedule, event)
    here = valid.to(probs.device)
    return (fuse(AttentionBundle(take_rows(probs, sample.to(probs.device)), None, None, here)) * here).to(valid.device)
