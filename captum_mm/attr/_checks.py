"""Model states and outputs that cannot be explained: a clear error, or a warning when only doubtful."""

import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

#: Float attributes through which HF attention modules apply functional dropout while training.
_FUNCTIONAL_DROPOUT = ("attention_dropout", "dropout", "dropout_prob")

_INFERENCE_HELP = (
    "torch.inference_mode() tensors cannot take part in the backward pass this method needs. "
    "Run explain/attribute outside inference mode and create the inputs there (or clone them there: "
    "x.clone()); torch.no_grad() around the call is fine, captum_mm re-enables gradients inside."
)


def uncompiled(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile(model)`` wrapper compiles (hooks go on its modules)."""
    return model._orig_mod if isinstance(model, torch._dynamo.eval_frame.OptimizedModule) else model


def check_grad_mode(needs_backward: bool, method: str) -> None:
    """A method that needs a backward pass cannot run under torch.inference_mode()."""
    if needs_backward and torch.is_inference_mode_enabled():
        raise RuntimeError(f"{method} was called under torch.inference_mode(). {_INFERENCE_HELP}")


def check_lean(lean: Any, name: str = "lean") -> None:
    """``lean`` (the argument or the explainer's attribute ``name``) is a bool."""
    if not isinstance(lean, bool):
        raise ValueError(f"{name} must be True or False (None as an argument: the explainer's {name}), got {lean!r}.")


def run_forward(forward_func: Callable, args: Sequence[Any], method: str) -> Any:
    """``forward_func(*args)``, uncompiled, with autograd's error about inference tensors explained."""
    try:
        # compiled graphs hide the attention maps autograd differentiates: run compiled code eagerly
        with torch._dynamo.config.patch(disable=True):
            return forward_func(*args)
    except RuntimeError as error:
        if "Inference tensors" not in str(error):
            raise
        raise RuntimeError(f"{method}: an input was created under torch.inference_mode(). {_INFERENCE_HELP}") from error


def active_dropout(model: nn.Module) -> List[str]:
    """Names of the modules that apply dropout in the model's current mode."""
    active = []
    for name, module in model.named_modules():
        if not module.training:
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd):
            rate = module.p
        else:
            rate = next((getattr(module, a) for a in _FUNCTIONAL_DROPOUT if isinstance(getattr(module, a, None), float)), 0.0)
        if rate > 0:
            active.append(name)
    return active


def warn_if_training(model: nn.Module) -> None:
    """Dropout left on makes every explanation random: warn (the mode is the user's to change)."""
    active = active_dropout(model)
    if active:
        warnings.warn(
            f"{type(model).__name__} is in training mode with {len(active)} active dropout modules "
            f"(e.g. {active[0]!r}): the explanation uses random dropout masks and changes from call to call. "
            "Call model.eval() before explaining.",
            UserWarning,
            stacklevel=4,
        )


def check_connected(logits: Tensor, method: str) -> None:
    """The backward passes need the logits in the autograd graph."""
    if not logits.requires_grad:
        raise RuntimeError(
            f"{method}: the output of forward_func is not connected to the model by autograd: forward_func "
            "must not detach its output (.detach(), .item(), numpy) or run the model under torch.no_grad() "
            "itself (torch.no_grad() around explain/attribute is fine)."
        )


def _bad_samples(bad_elements: Tensor, element_sample: Optional[Tensor]) -> List[int]:
    samples = bad_elements.nonzero().flatten()
    if element_sample is not None:
        samples = element_sample[samples]
    return sorted(set(samples.tolist()))


def check_finite_logits(per_sample: Tensor) -> None:
    """``per_sample``: ``[B, ...]`` the outputs of each sample that explanations read."""
    bad = ~torch.isfinite(per_sample.detach()).reshape(per_sample.shape[0], -1).all(dim=1)
    if bad.any():
        raise ValueError(
            f"The model's output is NaN or infinite for samples {_bad_samples(bad, None)}: such outputs cannot be "
            "explained. Check those samples' inputs for NaN/inf values (or the model's weights)."
        )


def all_finite(tensor: Tensor) -> bool:
    """Whether every value of ``tensor`` is finite: one pass when it is (a sum overflowing is rare)."""
    return bool(torch.isfinite(tensor.sum()) or torch.isfinite(tensor).all())


def check_finite_map(probs: Tensor, valid: Callable[[], Tensor], element_sample: Tensor, site: str) -> None:
    """``probs`` ``[B, H, Nq, Nk]``; ``valid()`` ``[E, Nq, Nk]`` the entries between real tokens of each element (made
    only when some value is not finite)."""
    if all_finite(probs):
        return
    finite = torch.isfinite(probs.detach()).all(dim=1)[element_sample.to(probs.device)]
    bad = (~finite & valid().to(finite.device)).flatten(1).any(dim=1).to(element_sample.device)
    if bad.any():
        raise ValueError(
            f"The attention probabilities of '{site}' are NaN or infinite for samples "
            f"{_bad_samples(bad, element_sample)}: such attention cannot be explained. Check those samples' inputs "
            "for NaN/inf values, and that no sample has every key masked out."
        )


def check_finite_relevance(outputs: Dict[str, Tensor], element_sample: Tensor, method: str) -> None:
    """Every returned relevance is finite: ``outputs`` ``{name: [E, ...]}`` per explained element, ``element_sample``
    ``[E]`` each element's sample. Outputs and attention maps were found finite before, so NaN/inf here is the
    relevance computation breaking down."""
    broken = {name: ~torch.isfinite(values).reshape(values.shape[0], -1).all(dim=1) for name, values in outputs.items()}
    broken = {name: bad for name, bad in broken.items() if bad.any()}
    if broken:
        bad = torch.stack(list(broken.values())).any(dim=0)
        raise ValueError(
            f"{method} computed NaN or infinite relevance ({', '.join(broken)}) for samples "
            f"{_bad_samples(bad, element_sample)}, whose model outputs and attention maps are finite: the relevance "
            "computation broke down numerically (e.g. LRP rules dividing by values that underflow in float16/bfloat16, "
            "or a custom rule). No relevance is returned; try the model in float32 or float64."
        )
