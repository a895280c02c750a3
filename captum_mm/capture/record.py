"""Recording every attention call of an unmodified HuggingFace model.

:func:`capture_attention` is a context manager: inside it the model's attention
probabilities are recorded call by call (a module called twice, like LXMERT's
shared cross-attention, is recorded twice), together with the arguments the model
was called with. Everything it does to the model -- hooks, the attention
implementation, ``requires_grad`` flags -- is undone on exit, also on error.
"""

import inspect
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers import AttentionInterface

from captum_mm._handles import HandleList
from captum_mm.capture.eager import (
    NO_ATTENTION_FUNCTIONS,
    AttentionFunctions,
    exact_eager_attention,
)
from captum_mm.capture.lean import Fusion, LeanMaps, LeanSite, MapSink, lean_module, recording, stop_recording
from captum_mm.capture.settings import RECORDED_EAGER, pause_gradient_checkpointing, require_parameter_gradients, use_eager_attention
from captum_mm.capture.windows import concatenate_images, join_windows
from captum_mm.relevance.schedule import AttentionEvent
from captum_mm.spec import AttentionSpec


@dataclass
class AttentionCall:
    """One recorded attention call.

    Attributes:
        spec (AttentionSpec): The module's spec.
        count (int): Its call count in this forward pass.
        probs (Tensor, optional): ``[B, H, Nq, Nk]`` the live probabilities; under lean capture the head mean
                    ``[B, 1, Nq, Nk]`` (methods needing no gradient) or None.
        probe (Tensor, optional): With LRP rules installed, the tensor receiving the map's relevance.
        parts (list of Tensor, optional): The tensors the forward used when ``probs`` concatenates them (one
                    attention call per image).
        lean (LeanMaps, optional): Under lean capture, the call's head-reduced maps.
        recompute (Callable, optional): Recomputes the head mean ``probs`` would hold, chunk by chunk into a
                    :class:`~captum_mm.capture.lean.MapSink` (``recompute_head_means``; then ``probs`` is None).
        join (Callable): How ``parts`` (or their gradients) make up the recorded map: along the batch (the default),
                    windows joined block-diagonally (:func:`~captum_mm.capture.windows.join_windows`).
        layout (Callable, optional): How the recorded map is expressed in token positions after the forward
                    (:meth:`lay_out`: Swin's windows, a prompt's several images); None: it already is.
    """

    spec: AttentionSpec
    count: int
    probs: Optional[Tensor]
    probe: Optional[Tensor] = None
    parts: Optional[List[Tensor]] = None  # autograd reaches them, not their join
    lean: Optional[LeanMaps] = None
    join: Callable[[Sequence[Tensor]], Tensor] = field(default=concatenate_images)
    layout: Optional[Callable[[Tensor], Tensor]] = None
    recompute: Optional[Callable[[MapSink], None]] = None

    def lay_out(self, layout: Callable[[Tensor], Tensor]) -> None:
        """Express the map in token positions (``probs`` becomes ``layout(map)``, ``[B, H, N, N]``) when the module
        computes it over other units (Swin's windows, each image of a prompt); the module's own map is kept in
        ``parts`` for autograd. A second layout applies after the first.

        Args:
            layout (Callable): ``[..., units, H, n, n]`` to ``[..., B, H, N, N]``.
        """
        earlier = self.layout
        self.layout = layout if earlier is None else _composed(layout, earlier)
        if self.probs is not None:
            if self.parts is None and self.lean is None:
                self.parts = [self.probs]
            self.probs = layout(self.probs.detach())

    def in_token_layout(self, tensor: Optional[Tensor]) -> Optional[Tensor]:
        """A tensor shaped like the recorded map (its LRP relevance, a lean call's map) in ``probs``' token positions.

        Args:
            tensor (Tensor, optional): ``[..., units, H, n, n]``, or None.

        Returns:
            *Tensor or None*: ``tensor`` laid out as ``probs`` (itself when the recorded map already is).
        """
        return tensor if tensor is None or self.layout is None else self.layout(tensor)

    def gradient_in_token_layout(self, pieces: Sequence[Tensor]) -> Tensor:
        """The gradients of :attr:`differentiable` as one gradient of ``probs`` (a lean call's probe's as it is).

        Args:
            pieces (sequence of Tensor): The gradients, the batch at dimension -4.

        Returns:
            *Tensor*: Joined and laid out.
        """
        joined = self.join(pieces)
        return joined if self.lean is not None else cast(Tensor, self.in_token_layout(joined))

    @property
    def differentiable(self) -> List[Tensor]:
        """The tensors whose gradients make up the gradient of ``probs`` (concatenated along the batch); under
        lean capture the probe whose gradient runs the call's backward."""
        if self.lean is not None:
            return [self.lean.probe]
        return self.parts if self.parts is not None else [cast(Tensor, self.probs)]

    @property
    def site(self) -> str:
        return self.spec.name

    @property
    def name(self) -> str:
        """The site, and the direction when the module serves several (LXMERT's cross-attention)."""
        return self.site if len(self.spec.roles) == 1 else f"{self.site} {'->'.join(self.roles)}"

    @property
    def roles(self) -> Tuple[str, str]:
        """``(query, key)`` modalities of this call."""
        return self.spec.role(self.count)


def _composed(later: Callable[[Tensor], Tensor], earlier: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda maps: later(earlier(maps))


@dataclass
class AttentionRecord:
    """What one forward pass left behind.

    Attributes:
        calls (list of AttentionCall): Every attention call, in forward order.
        arguments (dict): The model's forward arguments by name.
        extras (dict): What adapters' hooks keep (e.g. ViLT's sampled patches).
    """

    calls: List[AttentionCall] = field(default_factory=list)
    arguments: Dict[str, Any] = field(default_factory=dict)
    extras: Dict[str, Any] = field(default_factory=dict)

    def events(self) -> List[AttentionEvent]:
        """Every call as a schedule event with its declared roles, in forward order."""
        return [AttentionEvent(index, *call.roles, call.name) for index, call in enumerate(self.calls)]

    def latest(self, spec: AttentionSpec) -> AttentionCall:
        """The most recent call of ``spec``'s module."""
        return next(call for call in reversed(self.calls) if call.spec is spec)


def _record_arguments(model: nn.Module, record: AttentionRecord, check: Callable[[Dict[str, Any]], None]) -> RemovableHandle:
    signature = inspect.signature(model.forward)

    def pre_hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        record.arguments.update(signature.bind_partial(*args, **kwargs).arguments)
        record.arguments.update(record.arguments.pop("kwargs", None) or {})
        check(record.arguments)

    return model.register_forward_pre_hook(pre_hook, with_kwargs=True)


#: id(module): the weights its attention function returned so far in its current forward.
_recording: ContextVar[Optional[Dict[int, List[Tensor]]]] = ContextVar("captum_mm_recording", default=None)


def recorded_eager_attention(module: nn.Module, *args: Any, **kwargs: Any) -> Tuple[Tensor, Tensor]:
    """The module family's own eager attention function (:func:`~captum_mm.capture.eager.exact_eager_attention`),
    its weights kept for the module's current forward (for modules that discard them). Registered once under
    :data:`RECORDED_EAGER`; a model uses it only while ``capture_attention`` switches its config to it."""
    output, weights = exact_eager_attention(module, *args, **kwargs)
    recording = _recording.get()
    if recording is not None and id(module) in recording:
        recording[id(module)].append(weights)
    return output, weights


AttentionInterface.register(RECORDED_EAGER, recorded_eager_attention)


def _record_function_calls(spec: AttentionSpec, record: AttentionRecord) -> List[RemovableHandle]:
    """Each forward of ``spec.module``: the weights its attention function returned, concatenated along the batch."""
    count = [0]

    def start(module: nn.Module, args: Tuple[Any, ...]) -> None:
        cast(Dict[int, List[Tensor]], _recording.get())[id(module)] = []

    def finish(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
        chunks = cast(Dict[int, List[Tensor]], _recording.get()).pop(id(module))
        if spec.probs.map_tokens is not None:  # windows: each image's map block-diagonal
            join = partial(join_windows, tokens=spec.probs.map_tokens(record.arguments))
            record.calls.append(AttentionCall(spec, count[0], join(chunks).detach(), parts=chunks, join=join))
        else:
            if len({chunk.shape[1:] for chunk in chunks}) > 1:
                raise ValueError(f"The images of the batch differ in size at '{spec.name}' "
                                 f"({[tuple(chunk.shape[-2:]) for chunk in chunks]}): explain images of one size together.")
            record.calls.append(AttentionCall(spec, count[0], torch.cat(chunks).detach(), parts=chunks))
        count[0] += 1

    return [spec.module.register_forward_pre_hook(start), spec.module.register_forward_hook(finish)]


def _record_calls(spec: AttentionSpec, record: AttentionRecord) -> RemovableHandle:
    count = [0]

    def hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
        probs = spec.probs.of_output(output)
        if probs is None:
            raise RuntimeError(
                f"Attention module '{spec.name}' did not expose its probabilities. captum_mm switches "
                "models to eager attention while explaining; a custom attention implementation that "
                "returns no weights cannot be explained."
            )
        record.calls.append(AttentionCall(spec, count[0], probs))
        count[0] += 1

    return spec.probs.module.register_forward_hook(hook)


def _lean_sites(specs: Sequence[AttentionSpec], record: AttentionRecord, fusion: Fusion,
                attention_functions: AttentionFunctions, recompute: bool) -> Dict[nn.Module, LeanSite]:
    """The module computing the attention of each spec lean capture serves, and its site recording into ``record``."""
    sites = {}
    for spec in specs:
        module = lean_module(spec.module, attention_functions)
        if module is None or spec.probs.recorded or spec.probs.module is not spec.module or spec.probs.argument is not None:
            continue

        def record_call(mean: Optional[Tensor], maps: LeanMaps, again: Optional[Callable[[MapSink], None]],
                        spec: AttentionSpec = spec, count: List[int] = [0]) -> None:
            record.calls.append(AttentionCall(spec, count[0], None if mean is None else mean[:, None], lean=maps, recompute=again))
            count[0] += 1

        head_mean = fusion == "head_mean"
        sites[module] = LeanSite(record_call, fusion if head_mean else None, spec, attention_functions[type(module)], recompute and head_mean)
    return sites


@contextmanager
def capture_attention(
    model: nn.Module,
    specs: Sequence[AttentionSpec],
    check_arguments: Callable[[Dict[str, Any]], None] = lambda arguments: None,
    extra_hooks: Callable[[AttentionRecord], List[Any]] = lambda record: [],
    with_gradients: bool = True,
    gradient_free: Sequence[nn.Module] = (),
    lean: Optional[Fusion] = None,
    attention_functions: AttentionFunctions = NO_ATTENTION_FUNCTIONS,
    recompute_head_means: bool = False,
) -> Iterator[AttentionRecord]:
    """Record every attention call of ``model`` inside the ``with`` block.

    Args:
        model (nn.Module): The model being explained; left exactly as it was on exit.
        specs (sequence of AttentionSpec): The attention modules; each call is recorded where its
                    probabilities appear.
        check_arguments (Callable): Called with the model's bound forward arguments
                    before the model runs; raises on bad input.
        extra_hooks (Callable): Registers adapter-specific hooks on the model and
                    returns their handles.
        with_gradients (bool): If True, every parameter is made to require grad
                    so the recorded maps are part of the autograd graph...
        gradient_free (sequence of nn.Module): ... except the parameters of these
                    modules, on which no attention map depends (DETR's CNN backbone).
        lean (Fusion, optional): Capture the modules whose attention function allows it lean,
                    keeping only this head reduction (:mod:`captum_mm.capture.lean`; not in
                    training mode). Default: None (every map's probabilities)
        attention_functions (AttentionFunctions): The adapter's ``attention_functions``: the modules lean
                    capture and the exact float64 softmax serve. Default: none (every module's own function)
        recompute_head_means (bool): With ``lean="head_mean"``, keep the lean calls' queries and keys to recompute
                    their head means after the forward (``AttentionCall.recompute``) instead of keeping the maps.
                    Default: False

    Yields:
        AttentionRecord: filled in while the model runs.
    """
    record = AttentionRecord()
    handles = HandleList()
    recorded = [spec for spec in specs if spec.probs.recorded]
    sites = _lean_sites(specs, record, lean, attention_functions, recompute_head_means) if lean is not None and not model.training else {}
    leaned = {site.spec for site in sites.values()}
    token, lean_token = _recording.set({}), recording({id(module): site for module, site in sites.items()})
    try:
        configs = [getattr(spec.module, "config") for spec in recorded]
        handles.append(pause_gradient_checkpointing(model))
        handles.append(use_eager_attention(model, configs, [getattr(module, "config") for module in sites], attention_functions))
        if with_gradients:
            handles.append(require_parameter_gradients(model, gradient_free))
        handles.append(_record_arguments(model, record, check_arguments))
        handles.extend(_record_calls(spec, record) for spec in specs if not spec.probs.recorded and spec not in leaned)
        for spec in recorded:
            handles.extend(_record_function_calls(spec, record))
        handles.extend(extra_hooks(record))
        yield record
    finally:
        handles.remove()
        _recording.reset(token)
        stop_recording(lean_token)
