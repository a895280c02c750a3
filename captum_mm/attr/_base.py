"""The Captum-facing base of every captum_mm method: Captum's contract over the engine."""

from dataclasses import replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from captum.attr import GradientAttribution, LayerAttribution
from torch import Tensor, nn

from captum_mm._compat import (
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    log_usage,
)
from captum_mm._precision import accumulation_dtype
from captum_mm.attr._checks import check_finite_relevance, check_lean, uncompiled
from captum_mm.attr._memory import MaxMemory, check_max_memory, slot_groups
from captum_mm.attr._readout import Explanation, assemble, input_outputs, read_out, spread_to_inputs
from captum_mm.attr.engine import AttentionBundle, ForwardPass, Needs, check_inputs, forward_pass, fused_maps
from captum_mm.attr.method import AttentionMethod
from captum_mm.generation import ContinuationLike, check_generative, generation_forward, prompt_arguments
from captum_mm.lrp import RuleSet
from captum_mm.models import TargetOptions, adapter_for
from captum_mm.relevance.schedule import AttentionEvent

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]

__all__ = ["AttentionAttribution", "AttentionBundle", "Explanation", "Needs"]


class AttentionAttribution(LayerAttribution, GradientAttribution, AttentionMethod):
    """Base of every captum_mm method: an attention schedule in, per-token relevance out.

    A method subclass implements the abstract interface of :class:`AttentionMethod`:
    it declares its :attr:`needs`, implements :meth:`fuse` (one event's per-head
    tensors to one map) and :meth:`relevance_matrices` (fused maps to relevance
    matrices whose readout row is the explanation), and may restrict the fused events
    with :meth:`events`. The engine (:mod:`captum_mm.attr.engine`) runs the model, its
    backward passes and nothing a method does not need.
    """

    #: LRP rules (None: the adapter's default, the reference implementation's rules).
    rules: Optional[RuleSet] = None
    #: Explain all DETR queries of a batch in one vectorised backward (``is_grads_batched``)
    #: rather than one backward per query over the same forward graph. None: vectorised on
    #: accelerators only (on CPU the loop is faster, see benchmarks/README.md).
    vectorized_backward: Optional[bool] = None
    #: Self-attention events of each modality before this one are left out (see ``Schedule.starting_at``).
    start_layer: int = 0
    #: Bytes the explained elements' relevance buffers (fused maps, relevance matrices) may take at once: the
    #: elements (generated tokens, DETR queries) are then explained in groups of backward passes, with the same
    #: results; a warning says when one backward's elements alone need more. ``"auto"`` (the default): a quarter of
    #: the memory available on the model's device when the explanation starts (``MemAvailable`` on CPU, free memory on
    #: CUDA), at most 1 GiB. None: all elements at once. The model's own forward and backward are not counted. The
    #: default of the ``max_memory`` argument of :meth:`explain` and :meth:`attribute` (as :attr:`lean` of ``lean``).
    max_memory: MaxMemory = "auto"
    #: Capture attention lean where the method's head reduction and the model's attention function allow it
    #: (:mod:`captum_mm.capture.lean`: no per-head map kept, memory close to an SDPA forward and backward);
    #: False records every map's probabilities in eager attention (the reference path).
    lean: bool = True
    #: Apply each self-attention map to the readout rows while the backward pass computes it, keeping no ``[N, N]``
    #: map (methods whose rows take ``v <- v + v A_bar`` or ``v A_bar``: GenericAttention, Transformer attribution;
    #: :mod:`captum_mm.relevance.streaming`); False keeps every fused map and propagates afterwards (the stored path,
    #: the same values). The default of the ``streaming`` argument of :meth:`explain` and :meth:`attribute`.
    streaming: bool = True

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
        """Not available: explanations run synchronously (Captum's ``attribute_future`` contract)."""
        raise NotImplementedError(f"{type(self).__name__} has no asynchronous attribute.")

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        input_modalities: Optional[Sequence[Optional[str]]] = None,
        *,
        max_memory: MaxMemory = None,
        lean: Optional[bool] = None,
        streaming: Optional[bool] = None,
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
                        image's most confident query: one query per image, so no
                        ``threshold`` applies)
            additional_forward_args (Any, optional): Passed to ``forward_func`` after
                        ``inputs`` and not attributed.
                        Default: None
            input_modalities (sequence of str or None, optional): The output each
                        input carries (``"text"``, ``"image"`` or None for no
                        relevance). Default: None (as the family's adapter declares it
                        for the model argument the input is passed as, unchanged)
            max_memory (int, float or str, optional): :attr:`max_memory` for this call
                        (``math.inf``: no limit). Default: None (:attr:`max_memory`)
            lean (bool, optional): :attr:`lean` for this call (False: the eager path).
                        Default: None (:attr:`lean`)
            streaming (bool, optional): :attr:`streaming` for this call (False: the stored
                        maps). Default: None (:attr:`streaming`)

        Returns:
            *Tensor* or *tuple[Tensor, ...]*: Attributions shaped like ``inputs``, in each
            input's dtype (float32 for float16/bfloat16 inputs, the default dtype for integer ones).
        """
        is_inputs_tuple = _is_tuple(inputs)
        input_tuple: Tuple[Tensor, ...] = _format_tensor_into_tuples(inputs)
        explanation, arguments = self._explain(
            input_tuple, target, additional_forward_args, options=TargetOptions(single=True), max_memory=max_memory, lean=lean,
            streaming=streaming,
        )
        if input_modalities is None:
            input_modalities = input_outputs(input_tuple, arguments, self.adapter.argument_outputs)
        attributions = spread_to_inputs(explanation, input_tuple, input_modalities)
        return _format_output(is_inputs_tuple, attributions)

    def explain(
        self,
        inputs: Union[TensorOrTuple, Mapping[str, Any]],
        target: Any = None,
        additional_forward_args: Any = None,
        threshold: float = 0.5,
        continuation: Optional[ContinuationLike] = None,
        generate: bool = False,
        generation_args: Optional[Dict[str, Any]] = None,
        *,
        max_memory: MaxMemory = None,
        lean: Optional[bool] = None,
        streaming: Optional[bool] = None,
    ) -> Explanation:
        r"""
        Per-token relevance per modality, as an :class:`Explanation`.

        Args:
            inputs (Tensor, tuple[Tensor, ...] or dict): As for :meth:`attribute`; for
                        generated tokens, the prompt (left-padded): the model's forward
                        arguments in order, or by name as a dict (a tokenizer's batch).
            target (optional): As for :meth:`attribute`; for DETR also a list of
                        query-index lists (several queries per image). Default: None
                        (each sample's predicted class; for DETR every query whose
                        best class, "no object" excluded, has probability above
                        ``threshold``, as in Algorithm 1)
            additional_forward_args (Any, optional): As for :meth:`attribute`
                        (e.g. the prompt's ``attention_mask``).
            threshold (float, optional): DETR's query-keeping threshold, in ``[0, 1)``
                        (other families have no threshold). Default: 0.5
            continuation (Tensor or list of lists of int, optional): Generative models: the
                        tokens to explain after the prompt, ``[B, C]`` ids or one id list
                        per sample; every token is one explained element. Default: None
            generate (bool, optional): Generative models: explain what
                        ``model.generate(**prompt, **generation_args)`` produces (tokens
                        after a sample's end-of-sequence token are not explained). A
                        ``max_new_tokens`` (else ``max_length``) exceeding the model's
                        positions is refused before generating. Default: False
            generation_args (dict, optional): Passed to ``model.generate``; its
                        ``eos_token_id`` (else the generation config's) ends the explained
                        tokens; ``return_dict_in_generate`` is overridden (the sequences are
                        read); with ``num_return_sequences=R`` each of the ``R`` sequences is
                        explained after its prompt (``B·R`` samples, sample ``i·R + r`` the
                        ``r``-th sequence of prompt ``i``, as ``generate`` orders them).
                        Default: None
            max_memory (int, float or str, optional): As for :meth:`attribute`. Default: None
            lean (bool, optional): As for :meth:`attribute`. Default: None
            streaming (bool, optional): As for :meth:`attribute`. Default: None

        Returns:
            Explanation: relevance per output, explained classes (and queries, or, for
            generated tokens, their ids in ``generated_ids`` and their positions; an LM's
            class is a token id, so ``target`` holds the same ids, and ``scores`` their
            probabilities).
        """
        if continuation is not None or generate:
            check_generative(self.adapter, self.model, target, self.forward_func)
            additional = _format_additional_forward_args(additional_forward_args) or ()
            prompt = inputs if isinstance(inputs, Mapping) else (*_format_tensor_into_tuples(inputs), *additional)
            forward, arguments, tokens = generation_forward(
                self.model, prompt_arguments(self.model, prompt), continuation, generate, generation_args, self.adapter
            )
            explanation = self._explain(arguments, tokens, None, forward, max_memory=max_memory, lean=lean, streaming=streaming)[0]
            return replace(explanation, generated_ids=tokens.explained_ids())
        if isinstance(inputs, Mapping):
            raise ValueError("inputs as a dict is taken for generated tokens only (with continuation= or generate=True).")
        tensors, options = _format_tensor_into_tuples(inputs), TargetOptions(threshold=threshold)
        return self._explain(tensors, target, additional_forward_args, options=options, max_memory=max_memory, lean=lean,
                             streaming=streaming)[0]

    # The shared part ---------------------------------------------------------------

    def _explain(
        self,
        inputs: Tuple[Tensor, ...],
        target: Any,
        additional_forward_args: Any,
        forward_func: Optional[Callable] = None,
        *,
        options: TargetOptions = TargetOptions(),
        max_memory: MaxMemory = None,
        lean: Optional[bool] = None,
        streaming: Optional[bool] = None,
    ) -> Tuple[Explanation, Dict[str, Any]]:
        """The explanation, and the model's forward arguments (``target``: the explained classes, a
        :class:`~captum_mm.generation.Continuation` for generated tokens; ``forward_func``: their own forward,
        whose arguments :func:`generation_forward` has checked; None options: the attributes)."""
        max_memory, lean = self.max_memory if max_memory is None else max_memory, self.lean if lean is None else lean
        streaming = self.streaming if streaming is None else streaming
        check_max_memory(max_memory)
        check_lean(lean)
        check_lean(streaming, "streaming")
        if forward_func is None:
            check_inputs(inputs)
        additional = _format_additional_forward_args(additional_forward_args) or ()
        with forward_pass(
            self.model, forward_func or self.forward_func, inputs, additional, target=target, needs=self.needs, rules=self.rules,
            start_layer=self.start_layer, adapter=self.adapter, method=type(self).__name__, lean=lean, target_options=options,
            recompute=streaming and self.needs.rows is not None and not self.needs.backward,
        ) as forward:
            selection, schedule = forward.selection, forward.schedule
            if not selection.num_elements:
                like = forward.logits.new_zeros((), dtype=accumulation_dtype(forward.logits.dtype))
                empty = {(row, key): like.new_zeros(0, schedule.sizes[row], schedule.sizes[key]) for row, key in schedule.pairs}
                outputs = read_out(schedule, empty)
            else:
                outputs = self._outputs_in_groups(forward, max_memory, streaming)
                check_finite_relevance(outputs, selection.sample, type(self).__name__)
        return assemble(selection, outputs, int(forward.logits.shape[0])), forward.record.arguments

    def _outputs_in_groups(self, forward: ForwardPass, max_memory: MaxMemory, streaming: bool) -> Dict[str, Tensor]:
        """Every element's outputs, the elements taken in groups of backward slots whose relevance buffers fit in
        ``max_memory`` (the same values as all at once)."""
        selection, events = forward.selection, self.events(forward.schedule)
        outputs: Dict[str, Tensor] = {}
        for slots in slot_groups(forward, events, self.needs, self.vectorized_backward, max_memory, streaming):
            elements = torch.isin(selection.slot, slots).nonzero()[:, 0]
            for name, values in self._group_outputs(forward, events, slots, elements, streaming).items():
                if name not in outputs:
                    outputs[name] = values.new_zeros(selection.num_elements, *values.shape[1:])
                outputs[name][elements] = values
        return outputs

    def _group_outputs(self, forward: ForwardPass, events: List[AttentionEvent], slots: Tensor, elements: Tensor,
                       streaming: bool) -> Dict[str, Tensor]:
        """The outputs of the ``elements`` of the backward ``slots`` (their buffers freed on return, before the next group's)."""
        schedule = forward.schedule.of_elements(elements)
        maps = fused_maps(forward, events, self.fuse, self.needs, self.vectorized_backward, slots, streaming)
        return read_out(schedule, self.relevance_matrices(schedule, maps))
