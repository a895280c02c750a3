"""Half-precision models: every method on every family is close to its float32 result, in float32.

Methods without LRP run in the model's dtype; errors relative to the largest float32 value stay within a few
machine epsilons of the half dtype. LRP-based methods run the model in float32 while explaining (its half weights
upcast, restored after): their result is the float32 explanation of the same half-precision weights and inputs,
identically (tolerance 0: the same computation). Not compared with the weights before rounding: on these random
models LRP is ill-conditioned in the weights (the z-rule divides by near-zero scores, the residual rule splits by
the sign of totals that nearly cancel), so rounding them to bfloat16 alone moves OPT's relevance by 2.3 times its
maximum (in float32, itself within 2e-4 of float64 here), while the model's token probabilities move by 1e-3.
Computed in the half dtype itself (before), LRP was up to 0.8 of the maximum off the float64 value of the same
weights (OPT in bfloat16; BLIP-2 in float16: 0.16, and NaN).
"""

import warnings
from typing import Dict, Tuple

import pytest
import torch
from torch import Tensor, nn

from captum_mm._precision import computed_in_float32
from helpers import (CASES, VLMS, assert_same_state, blip2, blip_questions, blip_vqa, bert_case, family_prompts, in_dtype, language_model,
                     mllama, mllama_prompts,
                     model_state, prompt_batch, vlm_prompts)
from methods_under_test import LRP_BASED, METHODS

HALF_DTYPES = (torch.float16, torch.bfloat16)
ULPS = 16  # methods without LRP: measured at most 10 eps
LRP_TOLERANCE = 0.0  # LRP: the float32 computation of the same weights, identically


def _cast(values: Tuple, dtype: torch.dtype) -> Tuple:
    return tuple(v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v for v in values)


def _explain(case, method: str, target, dtype: torch.dtype, rounded_to: torch.dtype = torch.float32):
    """``case`` explained with its inputs in ``dtype``, first rounded to ``rounded_to``."""
    torch.manual_seed(1)  # ViLT samples its patch order
    explainer = METHODS[method](case.forward, case.model)
    inputs, additional = _cast(_cast(case.inputs, rounded_to), dtype), _cast(_cast(case.additional, rounded_to), dtype)
    return explainer.explain(inputs, target, additional)


def _assert_close_to(got: Dict[str, Tensor], expected: Dict[str, Tensor], tolerance: float, label: str) -> None:
    """Each output finite, float32, never all zero where ``expected`` is not, within ``tolerance`` of its maximum."""
    for name, value in expected.items():
        half = got[name]
        assert half.dtype == torch.float32 and torch.isfinite(half).all(), (label, name)
        scale = value.abs().max()
        if scale == 0:
            assert half.count_nonzero() == 0, (label, name)
            continue
        assert half.count_nonzero() > 0, f"{label} {name}: all zeros"
        error = (half.double() - value.double()).abs().max() / scale
        assert error <= tolerance, f"{label} {name}: error {error:.3g} of the max"


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", list(CASES))
def test_half_precision_matches_float32(family, method):
    case = CASES[family]()
    target = [[0, 3], [1]] if family == "detr" else case.target(case.inputs[0].shape[0])
    reference = _explain(case, method, target, torch.float32).outputs()
    weights: Dict[str, Tensor] = {name: value.clone() for name, value in case.model.state_dict().items()}
    for dtype in HALF_DTYPES:
        case.model.float().load_state_dict(weights)
        case.model.to(dtype)
        half = _explain(case, method, target, dtype).outputs()
        if method in LRP_BASED:  # the half weights, in float32
            case.model.float()
            expected = _explain(case, method, target, torch.float32, rounded_to=dtype).outputs()
            _assert_close_to(half, expected, LRP_TOLERANCE, str(dtype))
        else:
            _assert_close_to(half, reference, ULPS * torch.finfo(dtype).eps, str(dtype))
            ran = [torch.equal(half[name], value) for name, value in reference.items() if value.count_nonzero()]
            assert not ran or not all(ran), f"{dtype}: the model did not run in {dtype}"


#: Generative families whose LRP the probe found off in half precision: a model and its (left-padded) prompts.
GENERATIVE = {
    "opt": (lambda: language_model("opt"), lambda: dict(zip(("input_ids", "attention_mask"), prompt_batch()))),
    # the mixture rule (Mixtral, Qwen3-MoE), QK-norm's operands (Qwen3-MoE)
    **{name: (lambda name=name: language_model(name), lambda: dict(zip(("input_ids", "attention_mask"), prompt_batch())))
       for name in ("mixtral", "qwen3-moe")},
    "llava": (VLMS["llava"], lambda: family_prompts("llava")),
    "paligemma": (VLMS["paligemma"], lambda: family_prompts("paligemma")),
    "mllama": (mllama, mllama_prompts),
    "idefics3": (VLMS["idefics3"], lambda: family_prompts("idefics3")),
    "gemma3_vl": (VLMS["gemma3_vl"], lambda: family_prompts("gemma3_vl")),
    "internvl": (VLMS["internvl"], lambda: family_prompts("internvl")),
    "qwen3_vl": (VLMS["qwen3_vl"], lambda: family_prompts("qwen3_vl")),  # the deepstack sums, the QK-norm
    "llava_next": (VLMS["llava_next"], lambda: family_prompts("llava_next")),
    "blip": (blip_vqa, lambda: blip_questions(pad=False)),
    "blip2": (lambda: blip2(language="opt", vision_init=0.02), vlm_prompts),
    # BLIP-2's default vision init (1e-10) rounds to 0 in float16: that model sees no image, its image relevance is 0
    "blip2-default-init": (lambda: blip2(language="opt"), vlm_prompts),
}
CONTINUATION = [[5, 6], [7], [8, 9]]


@pytest.mark.parametrize("method", sorted(LRP_BASED))
@pytest.mark.parametrize("family", sorted(GENERATIVE))
def test_generated_tokens_lrp_in_half_precision_is_the_float32_value_of_its_weights(family, method):
    make, prompts = GENERATIVE[family]
    model, batch = make(), prompts()
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    for dtype in HALF_DTYPES:
        model.float().load_state_dict(weights)
        half = METHODS[method](model).explain(in_dtype(model, batch, dtype), continuation=CONTINUATION)
        assert half.scores.dtype == torch.float32 and next(model.parameters()).dtype == dtype
        rounded = in_dtype(model, batch, dtype)  # the inputs as the half model got them
        single = METHODS[method](model).explain(in_dtype(model, rounded, torch.float32), continuation=CONTINUATION)
        _assert_close_to(half.outputs(), single.outputs(), LRP_TOLERANCE, str(dtype))


def test_the_upcast_model_is_restored_also_after_an_error():
    case = bert_case()
    case.model.half()
    before = model_state(case.model)
    storage = {name: (p.dtype, p.data_ptr()) for name, p in case.model.named_parameters()}
    with pytest.raises(ValueError, match="out of range"):
        _explain(case, "transformer-attribution", [99] * 3, torch.float16)  # raised after the float32 forward
    _explain(case, "partial-lrp", case.target(3), torch.float16)
    assert_same_state(before, model_state(case.model))
    assert {name: (p.dtype, p.data_ptr()) for name, p in case.model.named_parameters()} == storage


def test_a_model_with_offloaded_weights_keeps_its_dtype_with_a_warning():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)).bfloat16()
    model[1].weight = nn.Parameter(torch.empty(2, 2, dtype=torch.bfloat16, device="meta"))  # as accelerate offloads
    with pytest.warns(UserWarning, match="bfloat16 with offloaded .meta-device. weights.*LRP runs in the model's dtype"):
        with computed_in_float32(model):
            assert model[0].weight.dtype == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with computed_in_float32(model[0]):
            assert model[0].weight.dtype == torch.float32 and model[0](torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert model[0].weight.dtype == torch.bfloat16
