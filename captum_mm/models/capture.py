"""Recording every attention call of an unmodified HuggingFace model.

:func:`capture_attention` is a context manager: inside it the model's attention
probabilities are recorded call by call (a module called twice, like LXMERT's
shared cross-attention, is recorded twice), together with the arguments the model
was called with. Everything it does to the model -- hooks, the attention
implementation, ``requires_grad`` flags -- is undone on exit, also on error.
"""

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from captum_mm._handles import HandleList, Restore

EAGER = "eager"


@dataclass(frozen=True)
class AttentionSite:
    """A module whose forward output holds attention probabilities.

    Attributes:
        name (str): Module name relative to the explained model.
        module (nn.Module): The module to hook.
        read (Callable): Maps the module's output to probabilities ``[B, H, Nq, Nk]``
                    (or ``None`` when the current implementation hides them).
    """

    name: str
    module: nn.Module
    read: Callable[[Any], Optional[Tensor]]


@dataclass
class AttentionCall:
    """One recorded attention call: the site, its call count, and the live probabilities."""

    site: str
    count: int
    probs: Tensor


@dataclass
class AttentionRecord:
    """What one forward pass left behind."""

    calls: List[AttentionCall] = field(default_factory=list)
    arguments: Dict[str, Any] = field(default_factory=dict)
    extras: Dict[str, Any] = field(default_factory=dict)

    def of_site(self, prefix: str) -> List[int]:
        """Indices of the calls whose site name starts with ``prefix``."""
        return [i for i, call in enumerate(self.calls) if call.site.startswith(prefix)]


def _configs_of(model: nn.Module) -> List[Any]:
    """Every distinct HF config reachable from the model's modules, sub-configs included."""
    found: Dict[int, Any] = {}
    pending = [module.config for module in model.modules() if hasattr(module, "config")]
    while pending:
        config = pending.pop()
        if id(config) in found or not hasattr(config, "_attn_implementation_internal"):
            continue
        found[id(config)] = config
        for key in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, key, None)
            if sub is not None:
                pending.append(sub)
    return list(found.values())


def use_eager_attention(model: nn.Module) -> Restore:
    """Switch every config of ``model`` to eager attention; the returned handle restores it.

    The saved values are written back as they were (not through
    ``set_attn_implementation``, which some backbones refuse).
    """
    saved = [(config, config._attn_implementation_internal) for config in _configs_of(model)]
    for config, implementation in saved:
        if implementation not in (None, EAGER):
            config._attn_implementation_internal = EAGER

    def restore() -> None:
        for config, implementation in saved:
            config._attn_implementation_internal = implementation

    return Restore(restore)


def require_parameter_gradients(model: nn.Module, skip: Sequence[nn.Module] = ()) -> Restore:
    """Make every parameter require grad (so attention maps join the graph), except those of ``skip``
    (modules no attention map depends on); the handle restores the flags."""
    skipped = {id(p) for module in skip for p in module.parameters()}
    frozen = [p for p in model.parameters() if not p.requires_grad and id(p) not in skipped]
    for parameter in frozen:
        parameter.requires_grad_(True)

    def restore() -> None:
        for parameter in frozen:
            parameter.requires_grad_(False)

    return Restore(restore)


def _record_arguments(model: nn.Module, record: AttentionRecord, check: Callable[[Dict[str, Any]], None]) -> RemovableHandle:
    signature = inspect.signature(model.forward)

    def pre_hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        record.arguments.update(signature.bind_partial(*args, **kwargs).arguments)
        record.arguments.update(record.arguments.pop("kwargs", None) or {})
        check(record.arguments)

    return model.register_forward_pre_hook(pre_hook, with_kwargs=True)


def _record_site(site: AttentionSite, record: AttentionRecord) -> RemovableHandle:
    count = [0]

    def hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
        probs = site.read(output)
        if probs is None:
            raise RuntimeError(
                f"Attention module '{site.name}' did not expose its probabilities. captum_mm switches "
                "models to eager attention while explaining; a custom attention implementation that "
                "returns no weights cannot be explained."
            )
        record.calls.append(AttentionCall(site.name, count[0], probs))
        count[0] += 1

    return site.module.register_forward_hook(hook)


@contextmanager
def capture_attention(
    model: nn.Module,
    sites: List[AttentionSite],
    check_arguments: Callable[[Dict[str, Any]], None] = lambda arguments: None,
    extra_hooks: Callable[[AttentionRecord], List[Any]] = lambda record: [],
    with_gradients: bool = True,
    gradient_free: Sequence[nn.Module] = (),
) -> Iterator[AttentionRecord]:
    """Record every attention call of ``model`` inside the ``with`` block.

    Args:
        model (nn.Module): The model being explained; left exactly as it was on exit.
        sites (list[AttentionSite]): Modules whose outputs hold attention probabilities.
        check_arguments (Callable): Called with the model's bound forward arguments
                    before the model runs; raises on bad input.
        extra_hooks (Callable): Registers adapter-specific hooks on the model and
                    returns their handles.
        with_gradients (bool): If True, every parameter is made to require grad
                    so the recorded maps are part of the autograd graph...
        gradient_free (sequence of nn.Module): ... except the parameters of these
                    modules, on which no attention map depends (DETR's CNN backbone).

    Yields:
        AttentionRecord: filled in while the model runs.
    """
    record = AttentionRecord()
    handles = HandleList()
    try:
        handles.append(use_eager_attention(model))
        if with_gradients:
            handles.append(require_parameter_gradients(model, gradient_free))
        handles.append(_record_arguments(model, record, check_arguments))
        handles.extend(_record_site(site, record) for site in sites)
        handles.extend(extra_hooks(record))
        yield record
    finally:
        handles.remove()
