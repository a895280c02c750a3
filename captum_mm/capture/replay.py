"""Replaying a module's forward after the fact, from the random state it started from (ViLT samples its image
patches at random: the adapter reads which ones it kept)."""

import inspect
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


def _random_states() -> Tuple[Tensor, List[Tensor]]:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [])


def _set_random_states(states: Tuple[Tensor, List[Tensor]]) -> None:
    torch.set_rng_state(states[0])
    if states[1]:
        torch.cuda.set_rng_state_all(states[1])


def replay_after_forward(module: nn.Module, replay: Callable[[Dict[str, Any], Any], None]) -> List[RemovableHandle]:
    """Hooks calling ``replay(arguments, output)`` after every forward of ``module``, without gradients,
    from the random state that forward started from: a module that draws at random (ViLT's patch
    sampling) draws the same again. The random state after the forward is restored."""
    signature = inspect.signature(module.forward)
    started: List[Tuple[Tensor, List[Tensor]]] = []

    def before(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        started.append(_random_states())

    def after(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> None:
        finished = _random_states()
        _set_random_states(started.pop())
        try:
            with torch.no_grad():
                replay(signature.bind_partial(*args, **kwargs).arguments, output)
        finally:
            _set_random_states(finished)

    return [module.register_forward_pre_hook(before, with_kwargs=True), module.register_forward_hook(after, with_kwargs=True)]
