"""Models with gradient checkpointing switched on (``gradient_checkpointing_enable()``, left on after fine-tuning), in
eval or training mode: every method explains them exactly as the model without it. Checkpointing is paused while
explaining (a checkpointed layer re-runs its forward in the backward pass, which ran the capture hooks again: every
attention call was recorded twice), so each attention module runs once per explanation, and it is on again after.
In training mode lean capture is off (the eager maps are taken instead), whose float32 rounding differs from the
reference's lean capture by at most 1.1e-6 of the maximum (measured, Grad-CAM on LLaVA): tolerance 1e-5 there (about
80 float32 epsilons), 0 in eval mode."""

import copy
from typing import Any, Dict, List

import pytest
import torch
from torch import nn

from big_models import EXPLAINED, KINDS, Kind, relative_error


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request: Any) -> Dict[str, Any]:
    torch.manual_seed(0)
    family: Kind = KINDS[request.param]()
    return {"family": family, "references": {method: family.relevance(method, family.model) for method in EXPLAINED}}


def checkpointed(model: nn.Module, training: bool) -> nn.Module:
    """A copy with gradient checkpointing on, in training mode without dropout (deterministic) or in eval mode."""
    model = copy.deepcopy(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model.train(training)


def flags(model: nn.Module) -> List[bool]:
    return [module.gradient_checkpointing for module in model.modules() if hasattr(module, "gradient_checkpointing")]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_checkpointed_model_explained_as_without(kind: Dict[str, Any], training: bool) -> None:
    family: Kind = kind["family"]
    model = checkpointed(family.model, training)
    attention = next(module for name, module in model.named_modules() if name.endswith("layers.0.self_attn")
                     or name.endswith("layer.0.attention.self"))
    calls: List[int] = []
    handle = attention.register_forward_hook(lambda *args: calls.append(1))
    try:
        for method in EXPLAINED:
            calls.clear()
            error = relative_error(family.relevance(method, model), kind["references"][method])
            assert error <= (1e-5 if training else 0), method
            assert len(calls) == 1, f"{method}: the attention module ran {len(calls)} times"
    finally:
        handle.remove()
    assert any(flags(model)) and all(flags(model)) == any(flags(model)) and model.training == training
