"""Half-precision models: every method on every family is close to its float32 result, in float32.

Errors are relative to the largest float32 value. Methods without LRP stay within a few machine
epsilons of the half dtype. LRP (the reference's rules) amplifies rounding: the z-rule on ``Q K^T``
divides by near-zero scores, and the residual rule splits relevance by the sign of each branch's
total ``sum(a * g)``, which rounding can flip where that total nearly cancels (cancellation
``|sum(a g)| / sum(|a g|)`` within a few epsilons; a tiny LXMERT cancelling to 3e-3 had its
bfloat16 text relevance change completely). LRP results must be within a quarter of the maximum,
or, where a split can flip (here LXMERT, and DETR and ViT in bfloat16), non-zero and finite.
"""

from typing import Dict, List, Tuple

import pytest
import torch
from torch import Tensor

from captum_mm.lrp.rules import ProportionalResidual, per_sample_sum
from helpers import CASES
from methods_under_test import METHODS

HALF_DTYPES = (torch.float16, torch.bfloat16)
ULPS = 16  # methods without LRP: measured at most 10 eps
LRP_TOLERANCE = 0.25  # measured at most 0.15 (ViT in float16) where no split can flip
FLIP_REACH = 2  # a residual split may flip when its cancellation is below FLIP_REACH * eps


def _cast(values: Tuple, dtype: torch.dtype) -> Tuple:
    return tuple(v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v for v in values)


def _explain(case, method: str, target, dtype: torch.dtype):
    torch.manual_seed(1)  # ViLT samples its patch order
    explainer = METHODS[method](case.forward, case.model)
    return explainer.explain(_cast(case.inputs, dtype), target, _cast(case.additional, dtype))


def _cancellations(monkeypatch) -> List[float]:
    """Record ``|sum(t g)| / sum(|t g|)`` of both branches at every residual split of the next LRP backward."""
    found: List[float] = []
    split = ProportionalResidual.branch_gradients

    def recording(self, a: Tensor, b: Tensor, g_z: Tensor):
        for branch in (a, b):
            total, magnitude = per_sample_sum(branch * g_z).flatten(), per_sample_sum((branch * g_z).abs()).flatten()
            found.extend((total[magnitude > 0].abs() / magnitude[magnitude > 0]).tolist())
        return split(self, a, b, g_z)

    monkeypatch.setattr(ProportionalResidual, "branch_gradients", recording)
    return found


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", list(CASES))
def test_half_precision_matches_float32(family, method, monkeypatch):
    case = CASES[family]()
    target = [[0, 3], [1]] if family == "detr" else case.target(case.inputs[0].shape[0])
    cancellations = _cancellations(monkeypatch)
    reference = _explain(case, method, target, torch.float32).outputs()
    monkeypatch.undo()
    weights: Dict[str, Tensor] = {name: value.clone() for name, value in case.model.state_dict().items()}
    for dtype in HALF_DTYPES:
        case.model.float().load_state_dict(weights)
        case.model.to(dtype)
        half = _explain(case, method, target, dtype).outputs()
        eps = torch.finfo(dtype).eps
        uses_lrp = bool(cancellations)  # only an LRP backward splits residuals
        tolerance = LRP_TOLERANCE if uses_lrp else ULPS * eps
        may_flip = uses_lrp and min(cancellations) < FLIP_REACH * eps
        for name, expected in reference.items():
            got = half[name]
            assert got.dtype == torch.float32, (dtype, name)
            assert torch.isfinite(got).all(), (dtype, name)
            scale = expected.abs().max()
            if scale == 0:
                assert got.count_nonzero() == 0, (dtype, name)
                continue
            assert got.count_nonzero() > 0, f"{dtype} {name}: all zeros"
            assert not torch.equal(got, expected), f"{dtype} {name}: the model did not run in {dtype}"
            if not may_flip:
                error = (got - expected).abs().max() / scale
                assert error <= tolerance, f"{dtype} {name}: error {error:.3g} of the max"


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_attributions_of_half_inputs_are_float32(dtype):
    case = CASES["vit"]()
    case.model.to(dtype)
    (pixels,) = _cast(case.inputs, dtype)
    attributions = METHODS["transformer-attribution"](case.forward, case.model).attribute(pixels, case.target(pixels.shape[0]))
    assert attributions.dtype == torch.float32 and attributions.shape == pixels.shape
    assert attributions.count_nonzero() > 0


def test_nothing_to_explain_is_float32_too():
    case = CASES["detr"]()
    case.model.half()
    explanation = METHODS["generic"](case.model).explain(_cast(case.inputs, torch.float16), threshold=0.999)
    assert explanation.image.dtype == torch.float32 and explanation.image.shape[1] == 0
