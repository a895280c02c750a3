"""What every attention-based method shares: capture, targets, backward, readout, Captum's contract."""

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from captum.attr import GradientAttribution, LayerAttribution
from torch import Tensor, nn

from captum_mm._compat import (
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    log_usage,
)
from captum_mm._precision import accumulation_dtype, exact
from captum_mm.attr._checks import (
    check_connected,
    check_finite_logits,
    check_finite_map,
    check_grad_mode,
    run_forward,
    uncompiled,
    warn_if_training,
)
from captum_mm.lrp import LRPState, RuleSet, attention_relevance, lrp_rules
from captum_mm.models import TargetSelection, adapter_for, capture_attention
from captum_mm.models.capture import AttentionRecord
from captum_mm.relevance.rules import read_rows
from captum_mm.relevance.schedule import AttentionEvent, Schedule

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]


@dataclass
class Explanation:
    """Per-token relevance of one batch, per modality.

    Attributes:
        text (Tensor or None): ``[B, T]`` relevance of the text tokens (LXMERT, VisualBERT).
        image (Tensor or None): ``[B, R]`` relevance of the image regions (LXMERT,
                    VisualBERT), or ``[B, K, h, w]`` relevance of the backbone's
                    feature-map cells for each of the ``K`` explained queries (DETR).
        target (Tensor): Explained class, ``[B]`` (or ``[B, K]`` for DETR, ``-1`` where
                    an image has fewer than ``K`` explained queries).
        scores (Tensor): Predicted probability of the explained class, shaped like ``target``.
        queries (Tensor or None): DETR only: ``[B, K]`` explained query indices, ``-1`` for padding.

    Padded tokens (attention masks, DETR's pixel mask) have zero relevance. Relevance is
    float32 for float16/bfloat16 models (whose own dtype cannot hold its small values), in
    the model's dtype otherwise.
    """

    text: Optional[Tensor]
    image: Optional[Tensor]
    target: Tensor
    scores: Tensor
    queries: Optional[Tensor] = None

    def outputs(self) -> Dict[str, Tensor]:
        return {name: value for name, value in (("text", self.text), ("image", self.image)) if value is not None}


class AttentionAttribution(LayerAttribution, GradientAttribution):
    """Base of every captum_mm method: an attention schedule in, per-token relevance out.

    A method subclass sets :attr:`uses_gradients` and implements
    :meth:`_fuse_heads` (per-head maps to one map) and :meth:`_relevance_matrices`
    (fused maps to relevance matrices whose readout row is the explanation). It
    may restrict the fused events with :meth:`_events`.
    """

    #: Whether the method needs the ordinary backward pass (gradients of the attention maps).
    uses_gradients: bool = True
    #: Whether the method needs the LRP backward pass (relevance at the attention maps).
    uses_relevance: bool = False
    #: LRP rules (None: the adapter's default, the reference implementation's rules).
    rules: Optional[RuleSet] = None
    #: Explain all DETR queries of a batch in one vectorised backward (``is_grads_batched``)
    #: rather than one backward per query over the same forward graph. None: vectorised on
    #: accelerators only (on CPU the loop is faster, see benchmarks/README.md).
    vectorized_backward: Optional[bool] = None
    #: Self-attention events of each modality before this one are left out (see ``Schedule.starting_at``).
    start_layer: int = 0

    def __init__(self, forward_func: Callable, model: Optional[nn.Module] = None) -> None:
        r"""
        Args:
            forward_func (Callable or torch.nn.Module): The HuggingFace model, or any
                        callable that runs it and returns its logits (or its output
                        object). It is called as
                        ``forward_func(*inputs, *additional_forward_args)``. Compiled
                        code (``torch.compile``) runs uncompiled while explaining: a
                        compiled graph hides the attention maps autograd differentiates.
            model (torch.nn.Module, optional): The HuggingFace model to explain, when
                        ``forward_func`` is not the model itself.
                        Default: None (``forward_func`` is the model)
        """
        if model is None:
            if not isinstance(forward_func, nn.Module):
                raise TypeError(
                    "forward_func is not a torch.nn.Module: pass the HuggingFace model it runs as model=."
                )
            model = forward_func
        model = uncompiled(model)
        LayerAttribution.__init__(self, forward_func, model)
        GradientAttribution.__init__(self, forward_func)
        self.model = model
        self.adapter = adapter_for(model)

    def _set_start_layer(self, start_layer: int) -> None:
        if not isinstance(start_layer, int) or start_layer < 0:
            raise ValueError(f"start_layer must be a non-negative int, got {start_layer!r}.")
        self.start_layer = start_layer

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def attribute_future(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no asynchronous attribute.")

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        input_modalities: Optional[Sequence[Optional[str]]] = None,
    ) -> TensorOrTuple:
        r"""
        Relevance of every input, each attribution shaped like the input it explains.

        A token's (region's) relevance is repeated over that token's feature
        dimensions; DETR's feature-map relevance is spread over the pixels of
        each cell (nearest-neighbour upsampling) and repeated over channels.
        This makes the attributions usable by ``captum.metrics.infidelity``,
        ``captum.metrics.sensitivity_max`` and ``captum.attr.visualization``.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): Passed to ``forward_func`` first,
                        batch first.
            target (int, list, Tensor, optional): Class explained per sample (Captum's
                        forms: an int, a list of ints, a tensor with one class per
                        sample). For DETR, the object query explained per image.
                        Default: None (each sample's predicted class; for DETR, each
                        image's most confident query)
            additional_forward_args (Any, optional): Passed to ``forward_func`` after
                        ``inputs`` and not attributed.
                        Default: None
            input_modalities (sequence of str or None, optional): The modality each
                        input belongs to (``"text"``, ``"image"`` or None for no
                        relevance). Default: None (inferred from shapes: an input
                        whose second dimension equals the number of text tokens is
                        text, of image regions image; for DETR every input of rank 3
                        or more is image)

        Returns:
            *Tensor* or *tuple[Tensor, ...]*: Attributions shaped like ``inputs``, in each
            input's dtype (float32 for float16/bfloat16 inputs, the default dtype for integer ones).
        """
        is_inputs_tuple = _is_tuple(inputs)
        inputs = _format_tensor_into_tuples(inputs)
        explanation = self._explain(inputs, target, additional_forward_args, single=True)
        attributions = spread_to_inputs(explanation, inputs, input_modalities)
        return _format_output(is_inputs_tuple, attributions)

    def explain(
        self,
        inputs: TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        threshold: float = 0.5,
    ) -> Explanation:
        r"""
        Per-token relevance per modality, as an :class:`Explanation`.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): As for :meth:`attribute`.
            target (optional): As for :meth:`attribute`; for DETR also a list of
                        query-index lists (several queries per image). Default: None
                        (each sample's predicted class; for DETR every query whose
                        best class, "no object" excluded, has probability above
                        ``threshold``, as in Algorithm 1)
            additional_forward_args (Any, optional): As for :meth:`attribute`.
            threshold (float, optional): DETR's query-keeping threshold. Default: 0.5

        Returns:
            Explanation: text and image relevance, explained classes (and queries).
        """
        inputs = _format_tensor_into_tuples(inputs)
        return self._explain(inputs, target, additional_forward_args, threshold=threshold)

    # The method's part -----------------------------------------------------------

    def _events(self, schedule: Schedule) -> List[AttentionEvent]:
        """Events whose fused maps the method uses (all by default)."""
        return schedule.events

    def _fuse_heads(
        self, probs: Tensor, grads: Optional[Tensor], relevance: Optional[Tensor], valid: Tensor
    ) -> Tensor:
        """``[E, H, Nq, Nk]`` probabilities (and gradients, LRP relevance) to one ``[E, Nq, Nk]`` map;
        ``valid`` marks the entries between real tokens."""
        raise NotImplementedError

    def _relevance_matrices(self, schedule: Schedule, maps: Dict[int, Tensor]) -> Dict[Tuple[str, str], Tensor]:
        """Relevance matrices ``[E, N_row, N_key]`` per ``(row, key)`` pair of the schedule's outputs."""
        raise NotImplementedError

    # The shared part ---------------------------------------------------------------

    def _explain(self, inputs: Tuple[Tensor, ...], target: Any, additional_forward_args: Any, **options: Any) -> Explanation:
        _check_inputs(inputs)
        additional = _format_additional_forward_args(additional_forward_args) or ()
        adapter = self.adapter
        needs_backward = self.uses_gradients or self.uses_relevance
        method = type(self).__name__
        check_grad_mode(needs_backward, method)
        warn_if_training(self.model)
        with ExitStack() as stack:
            stack.enter_context(torch.set_grad_enabled(needs_backward))
            record = stack.enter_context(
                capture_attention(
                    self.model, adapter.sites(), adapter.check_arguments, adapter.extra_hooks, needs_backward,
                    adapter.gradient_free_modules(),
                )
            )
            lrp = None
            if self.uses_relevance:
                lrp = stack.enter_context(lrp_rules(self.model, adapter.lrp_structure(), self.rules or adapter.default_rules()))
            logits = adapter.logits(run_forward(self.forward_func, (*inputs, *additional), method))
            if not record.arguments:
                raise ValueError(
                    f"forward_func never called {type(self.model).__name__}.forward: it must run the model itself "
                    "(a sub-module or a method such as get_image_features is not explained)."
                )
            check_finite_logits(adapter.per_sample_outputs(logits))
            selection = adapter.select_targets(logits, target, **options)
            schedule = adapter.schedule(record, selection).starting_at(self.start_layer)
            maps = self._fused_maps(record, schedule, selection, logits, lrp) if selection.num_elements else {}
        if selection.num_elements:
            matrices = self._relevance_matrices(schedule, maps)
        else:
            dtype = accumulation_dtype(logits.dtype)
            matrices = {
                (row, key): logits.new_zeros(0, schedule.sizes[row], schedule.sizes[key], dtype=dtype)
                for row, key in schedule.pairs
            }
        return _assemble(schedule, selection, _read_out(schedule, matrices), int(logits.shape[0]))

    def _fused_maps(
        self,
        record: AttentionRecord,
        schedule: Schedule,
        selection: TargetSelection,
        logits: Tensor,
        lrp: Optional[LRPState],
    ) -> Dict[int, Tensor]:
        """One fused, padding-masked ``[E, Nq, Nk]`` map per event the method uses."""
        events = self._events(schedule)
        probs = [record.calls[event.call].probs for event in events]
        valid = [schedule.masks[e.query][:, :, None] & schedule.masks[e.key][:, None, :] for e in events]
        for event, p, v in zip(events, probs, valid):
            check_finite_map(p, v, selection.sample, event.name)
        if self.uses_gradients or lrp is not None:
            fused = self._fused_from_backward(probs, [e.name for e in events], valid, selection, logits, lrp)
        else:
            fused = [self._fuse_heads(_take(exact(p), selection.sample), None, None, v) for p, v in zip(probs, valid)]
        return {event.call: values * mask for event, values, mask in zip(events, fused, valid)}

    def _fused_from_backward(
        self,
        probs: List[Tensor],
        names: List[str],
        valid: List[Tensor],
        selection: TargetSelection,
        logits: Tensor,
        lrp: Optional[LRPState],
    ) -> List[Tensor]:
        """Backward passes over the one forward graph, each slot's maps head-reduced right away.

        On an accelerator all slots (DETR queries) share one vectorised backward
        (``is_grads_batched``); on CPU one backward per slot over the retained graph is
        faster (benchmarks/README.md) and keeps a single slot's gradients alive at a time.
        """
        check_connected(logits, type(self).__name__)
        seeds = selection.grad_outputs
        slots = torch.arange(seeds.shape[0], device=seeds.device)
        vectorized = logits.is_cuda if self.vectorized_backward is None else self.vectorized_backward
        chunks = [slots] if vectorized else list(slots.split(1))
        fused = [p.new_zeros(selection.num_elements, *p.shape[-2:], dtype=accumulation_dtype(p.dtype)) for p in probs]
        for chunk in chunks:
            grads: List[Optional[Tensor]] = [None] * len(probs)
            if self.uses_gradients:
                grads = _attention_gradients(logits, probs, seeds[chunk], retain_graph=True, names=names)
            relevance = attention_relevance(lrp, *self.adapter.lrp_start(lrp, logits, seeds[chunk])) if lrp else {}
            members = torch.isin(selection.slot, chunk)
            position, sample = selection.slot[members] - chunk[0], selection.sample[members]
            for index, p in enumerate(probs):
                gradient, grads[index] = grads[index], None
                relevant = relevance.pop(id(p), None)
                if lrp is not None and relevant is None:
                    raise RuntimeError(
                        f"No LRP relevance reaches the attention map {names[index]}: the explained output does not "
                        "depend on it through the model's own forward pass (is the model compiled with torch.compile?)."
                    )
                fused[index][members] = self._fuse_heads(
                    _take(exact(p), sample),
                    _take_slots(gradient, position, sample),
                    _take_slots(relevant, position, sample),
                    valid[index][members],
                )
        return fused


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


def _check_inputs(inputs: Tuple[Tensor, ...]) -> None:
    if not inputs:
        raise ValueError("inputs is empty: pass at least one tensor.")
    sizes = [tuple(t.shape[:1]) for t in inputs if isinstance(t, Tensor)]
    if any(size == () for size in sizes):
        raise ValueError("inputs must be batched: every input tensor needs a leading batch dimension.")
    if len({size for size in sizes}) > 1:
        raise ValueError(f"Batch sizes of inputs disagree: {[s[0] for s in sizes]}; all must be equal.")


def _attention_gradients(
    logits: Tensor, probs: List[Tensor], seeds: Tensor, retain_graph: bool = False, names: Optional[List[str]] = None
) -> List[Tensor]:
    """``d(seed . logits)/dA`` for every map, ``[K, B, H, Nq, Nk]``; one (batched) backward pass.

    Every map must be connected to the logits: a map autograd cannot reach (e.g. one captured
    inside a compiled graph) is an error, never a zero gradient."""
    names = names or [f"call {index}" for index in range(len(probs))]
    unconnected = [name for name, p in zip(names, probs) if not p.requires_grad]
    batched = seeds.shape[0] > 1
    if not unconnected:
        found = torch.autograd.grad(
            logits,
            probs,
            grad_outputs=seeds if batched else seeds[0],
            is_grads_batched=batched,
            allow_unused=True,
            retain_graph=retain_graph,
        )
        unconnected = [name for name, gradient in zip(names, found) if gradient is None]
    if unconnected:
        raise RuntimeError(
            f"The explained output does not depend on the attention maps {unconnected} through autograd, so their "
            "gradients are unknown. forward_func must return the output of the model's own forward pass, not "
            "computed by a compiled (torch.compile) or detached copy."
        )
    return [gradient if batched else gradient[None] for gradient in found]


def _read_out(schedule: Schedule, matrices: Dict[Tuple[str, str], Tensor]) -> Dict[str, Tensor]:
    """Each output's readout row, the row token's own entry zeroed, padding zeroed."""
    outputs = {}
    for name, spec in schedule.outputs.items():
        rows = read_rows(matrices[spec.pair], spec.rows) * schedule.masks[spec.key]
        if spec.key == spec.row:
            rows = rows.scatter(1, spec.rows[:, None], 0.0)
        rows = rows[:, spec.columns]
        if spec.positions is not None:
            rows = rows.new_zeros(rows.shape[0], spec.grid[0] * spec.grid[1]).scatter(1, spec.positions, rows)
        outputs[name] = rows.reshape(rows.shape[0], *spec.grid) if spec.grid else rows
    return outputs


def _assemble(schedule: Schedule, selection: TargetSelection, outputs: Dict[str, Tensor], num_samples: int) -> Explanation:
    """Elements back to samples: ``[B, ...]``, or ``[B, K, ...]`` when queries are explained."""
    if selection.queries is None:
        def place(values: Tensor, fill: float = 0.0) -> Tensor:
            placed = values.new_full((num_samples, *values.shape[1:]), fill)
            placed[selection.sample] = values
            return placed
    else:
        slots = selection.grad_outputs.shape[0]

        def place(values: Tensor, fill: float = 0.0) -> Tensor:
            placed = values.new_full((num_samples, slots, *values.shape[1:]), fill)
            placed[selection.sample, selection.slot] = values
            return placed

    return Explanation(
        text=place(outputs["text"]) if "text" in outputs else None,
        image=place(outputs["image"]) if "image" in outputs else None,
        target=place(selection.classes, -1),
        scores=place(selection.scores.to(torch.get_default_dtype())),
        queries=place(selection.queries, -1) if selection.queries is not None else None,
    )


def _infer_modality(relevance: Dict[str, Tensor], tensor: Tensor) -> Optional[str]:
    candidates = [
        name
        for name, values in relevance.items()
        if (values.dim() == 3 and tensor.dim() >= 3) or (values.dim() == 2 and tensor.dim() >= 2 and tensor.shape[1] == values.shape[1])
    ]
    if len(candidates) > 1:
        raise ValueError(
            f"Cannot tell which modality an input of shape {tuple(tensor.shape)} belongs to ({' or '.join(candidates)}): "
            "pass input_modalities, e.g. ('text', 'image', None)."
        )
    return candidates[0] if candidates else None


def spread_to_inputs(
    explanation: Explanation, inputs: Tuple[Tensor, ...], input_modalities: Optional[Sequence[Optional[str]]] = None
) -> Tuple[Tensor, ...]:
    """Per-token relevance spread over each input's shape (see ``attribute``)."""
    relevance = explanation.outputs()
    if explanation.queries is not None:
        relevance = {name: values[:, 0] for name, values in relevance.items()}
    if input_modalities is None:
        input_modalities = [_infer_modality(relevance, tensor) for tensor in inputs]
    if len(input_modalities) != len(inputs):
        raise ValueError(f"input_modalities has {len(input_modalities)} entries for {len(inputs)} inputs.")
    spread = []
    for tensor, modality in zip(inputs, input_modalities):
        if modality is not None and modality not in relevance:
            raise ValueError(f"Unknown modality {modality!r}: this model explains {sorted(relevance)} (or None).")
        values = relevance.get(modality) if modality else None
        dtype = accumulation_dtype(tensor.dtype) if tensor.is_floating_point() else torch.get_default_dtype()
        if values is None:
            spread.append(torch.zeros(tensor.shape, dtype=dtype, device=tensor.device))
        elif values.dim() == 3:
            if tensor.dim() < 3:
                raise ValueError(f"A spatial input needs rank >= 3, got shape {tuple(tensor.shape)}.")
            cells = F.interpolate(values[:, None], size=tensor.shape[-2:], mode="nearest")[:, 0]
            shape = (cells.shape[0],) + (1,) * (tensor.dim() - 3) + tuple(cells.shape[-2:])
            spread.append(cells.reshape(shape).expand(tensor.shape).to(dtype).contiguous())
        else:
            if tensor.dim() < 2 or tensor.shape[1] != values.shape[1]:
                raise ValueError(
                    f"An input of shape {tuple(tensor.shape)} cannot hold {modality} relevance for {values.shape[1]} tokens."
                )
            shape = tuple(values.shape) + (1,) * (tensor.dim() - 2)
            spread.append(values.reshape(shape).expand(tensor.shape).to(dtype).contiguous())
    return tuple(spread)
