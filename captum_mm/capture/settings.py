"""What capture switches on a model while it is explained, each undone by the handle it returns: the attention
implementation of every config (eager; recorded, lean or exact-eager where the adapter declares it), the
parameters' ``requires_grad`` flags and gradient checkpointing (paused)."""

from typing import Any, Sequence

from torch import nn

from captum_mm._handles import Restore
from captum_mm.capture.eager import (
    EXACT_EAGER,
    NO_ATTENTION_FUNCTIONS,
    AttentionFunctions,
    declare_attention_functions,
    exact_eager_configs,
    model_configs,
)
from captum_mm.capture.lean import LEAN

EAGER = "eager"
#: The attention-interface key under which :func:`~captum_mm.capture.record.recorded_eager_attention` is registered.
RECORDED_EAGER = "captum_mm_recorded_eager"


def use_eager_attention(model: nn.Module, recorded: Sequence[Any] = (), lean: Sequence[Any] = (),
                        attention_functions: AttentionFunctions = NO_ATTENTION_FUNCTIONS) -> Restore:
    """Switch every config of ``model`` to eager attention (``recorded`` configs to eager attention
    whose weights are recorded, :func:`~captum_mm.capture.record.recorded_eager_attention`; ``lean`` ones to lean capture,
    :mod:`captum_mm.capture.lean`; those of modules ``attention_functions``, the adapter's declaration, says take
    the softmax in float32 to :func:`~captum_mm.capture.eager.exact_eager_attention`); the returned handle restores them.

    The saved values are written back as they were (not through
    ``set_attn_implementation``, which some backbones refuse).
    """
    saved = [(config, config._attn_implementation_internal) for config in model_configs(model)]
    recorded_ids, lean_ids = {id(config) for config in recorded}, {id(config) for config in lean}
    exact_ids, declared = exact_eager_configs(model, attention_functions), declare_attention_functions(attention_functions)
    for config, implementation in saved:
        if id(config) in recorded_ids:
            config._attn_implementation_internal = RECORDED_EAGER
        elif id(config) in lean_ids:
            config._attn_implementation_internal = LEAN
        elif id(config) in exact_ids:
            config._attn_implementation_internal = EXACT_EAGER
        elif implementation not in (None, EAGER):
            config._attn_implementation_internal = EAGER

    def restore() -> None:
        for config, implementation in saved:
            config._attn_implementation_internal = implementation
        declared.remove()

    return Restore(restore)


def require_parameter_gradients(model: nn.Module, skip: Sequence[nn.Module] = ()) -> Restore:
    """Make every parameter require grad (so attention maps join the graph), except those of ``skip``
    (modules no attention map depends on) and integer ones (quantized weights: bitsandbytes' packed codes); the handle
    restores the flags, by owner and name: accelerate's offloading hooks replace a module's parameter objects at every
    forward (carrying the flag over)."""
    skipped = {id(p) for module in skip for p in module.parameters()}
    frozen = [(owner, name) for owner in model.modules() for name, p in owner.named_parameters(recurse=False)
              if not p.requires_grad and id(p) not in skipped and p.is_floating_point()]
    for owner, name in frozen:
        getattr(owner, name).requires_grad_(True)

    def restore() -> None:
        for owner, name in frozen:
            getattr(owner, name).requires_grad_(False)

    return Restore(restore)


def pause_gradient_checkpointing(model: nn.Module) -> Restore:
    """Switch off the gradient checkpointing of ``model``'s layers (HF's ``gradient_checkpointing`` flags, which
    ``gradient_checkpointing_enable()`` sets and which act in training mode): a checkpointed layer runs its forward
    again in the backward pass, which would run the capture and LRP hooks of its modules a second time, recording
    every attention call twice. An explanation keeps each attention map and its graph anyway, so checkpointing saves
    little there; the handle switches it back on.

    Args:
        model (nn.Module): The model.

    Returns:
        *Restore*: Its ``remove()`` sets the flags back.
    """
    paused = [module for module in model.modules() if getattr(module, "gradient_checkpointing", False) is True]
    for module in paused:
        setattr(module, "gradient_checkpointing", False)

    def restore() -> None:
        for module in paused:
            setattr(module, "gradient_checkpointing", True)

    return Restore(restore)
