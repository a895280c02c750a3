"""bfloat16 end to end on every method, for a decoder-only LM, a VLM and an encoder generating or classifying (the
families' encoders alone: tests/attr/test_half_precision.py), also quantized: relevance comes back in float32.

Tolerances as tests/attr/test_half_precision.py's: methods without LRP run in bfloat16, within 16 bfloat16 epsilons
of the maximum of the float32 result; LRP-based methods run the model in float32 while explaining, so their result is
the float32 explanation of the same bfloat16 weights, identically. A torchao-quantized bfloat16 model keeps its
quantized layers in bfloat16 (torchao's weights do not upcast), so its LRP is checked finite and float32 only.
"""

import copy
from typing import Any, Dict

import pytest
import torch
from torchao.quantization import Int8WeightOnlyConfig, quantize_

from big_models import EXPLAINED, KINDS, Kind, is_lrp, relative_error

ULPS = 16
TOLERANCE = ULPS * torch.finfo(torch.bfloat16).eps


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request: Any) -> Dict[str, Any]:
    """The float32 model, its bfloat16 copy, and the float32 model holding the bfloat16-rounded weights."""
    torch.manual_seed(0)
    family: Kind = KINDS[request.param]()
    half = copy.deepcopy(family.model).bfloat16()
    return {"family": family, "half": half, "rounded": copy.deepcopy(half).float()}


def _in_float32(relevance: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    assert all(value.dtype == torch.float32 for value in relevance.values()), relevance
    assert any(value.count_nonzero() > 0 for value in relevance.values()), relevance
    return relevance


@pytest.mark.parametrize("method", EXPLAINED)
def test_bfloat16_model_explained_in_float32(kind: Dict[str, Any], method: str) -> None:
    family: Kind = kind["family"]
    got = _in_float32(family.relevance(method, kind["half"]))
    if is_lrp(method):
        assert relative_error(got, family.relevance(method, kind["rounded"])) == 0
    else:
        assert relative_error(got, family.relevance(method, family.model)) <= TOLERANCE
    assert next(kind["half"].parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("method", EXPLAINED)
def test_quantized_bfloat16_model_explained_in_float32(kind: Dict[str, Any], method: str) -> None:
    quantized = copy.deepcopy(kind["half"])
    quantize_(quantized, Int8WeightOnlyConfig())
    got = _in_float32(kind["family"].relevance(method, quantized))
    if not is_lrp(method):  # int8 rounding (tests/attr/test_quantized.py: 1e-1) on top of bfloat16's other kernels
        assert relative_error(got, kind["family"].relevance(method, kind["half"])) <= 1e-1 + TOLERANCE
