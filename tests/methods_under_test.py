"""The methods every contract test runs over: the package's registry (``captum_mm.attr.catalog.REGISTRY``,
where a new method is one entry), by key, and two ``start_layer`` variants of registered methods."""

from functools import partial

import pytest
import torch

from captum_mm.attr.catalog import REGISTRY

#: Option variants of registered methods, run by the contract tests beside them.
OPTION_VARIANTS = {"generic-start-layer-1": ("generic", 1), "rollout-start-layer-1": ("rollout", 1)}

#: Registered for the main job's comparison, not run by the every-family suites: the sinks variants wrap a registered
#: method in WithoutSinks (tests/attr/test_sinks.py), the Captum baselines replay the model through captum.attr
#: (tests/attr/test_captum_baselines.py).
STUDY_ONLY = {"generic-without-sinks", "rollout-without-sinks", "generic-lrp-without-sinks", "generic-attnlrp-without-sinks",
              "captum-lig", "captum-feature-ablation"}

_BY_KEY = {method.key: method.factory for method in REGISTRY if method.key not in STUDY_ONLY}

METHODS = {
    **_BY_KEY,
    **{key: partial(_BY_KEY[base], start_layer=start) for key, (base, start) in OPTION_VARIANTS.items()},
}

#: Methods whose relevance may be negative.
SIGNED = {"attnlrp", "cp-lrp"}

#: Families a method refuses with a TypeError, skipped by the tests running every method (tests/conftest.py).
#: AttnLRP's rules: none of the families (tests/lrp/test_attnlrp.py refuses families of one's own). AttnLRP's readout at
#: the inputs refuses none of the families these suites run.
_RULES_REFUSED: set = set()
_INPUTS_REFUSED = _RULES_REFUSED
REFUSED = {"attnlrp": _INPUTS_REFUSED, "cp-lrp": _INPUTS_REFUSED, "generic-attnlrp": _RULES_REFUSED}
#: Registered variants that only the contract suite runs on every family (the other every-method suites skip them,
#: tests/conftest.py): CP-LRP is AttnLRP with two rule flags, "ours w/ AttnLRP" is "ours w/ LRP" with AttnLRP's rules;
#: AttnLRP and "ours w/ LRP" run those suites, and tests/lrp/test_attnlrp.py tests the flags (suite time).
CONTRACT_ONLY = {"cp-lrp", "generic-attnlrp"}

def methods_for(family: str) -> dict:
    """The methods the every-method suites run on ``family``: those not refusing it, but the contract-only ones."""
    return {key: make for key, make in METHODS.items() if family not in REFUSED.get(key, set()) and key not in CONTRACT_ONLY}


#: The family of the tests naming none (in a parameter or their module's name).
FAMILY_OF_TEST = {"test_detr_padded_images": "detr", "test_detr_returns_to_sdpa": "detr",
                  "test_vectorized_backward_equals_one_backward_per_query": "detr"}

#: Methods whose relevance may be all zero on a random-init model. Without aggregation, Eq. 11
#: replaces R^tt by A_bar . R^it, still zero at LXMERT's first cross-attention, so relevance
#: collapses (the paper's identical positive/negative AUCs for this ablation, supplementary
#: Table 2, show the same). Dropping Eq. 10 updates at zero rows of R - I (the reference DETR code)
#: drops every update of a random-init DETR: its zero value biases make the first decoder
#: self-attention's gradient map all zero. Grad-CAM takes the positive part after the head mean,
#: which erases a readout row whose gradient-weighted heads sum to a negative value.
MAY_VANISH = {"generic-no-aggregation", "generic-drop-zero-rows", "grad-cam"}

#: Methods running an LRP backward (their half-precision models computed in float32).
LRP_BASED = {"generic-lrp", "partial-lrp", "transformer-attribution", "attnlrp", "cp-lrp", "generic-attnlrp"}


def padded_cases(families, methods, float32_family: str):
    """``(family, method, dtype)`` for the batched == alone tests: every family and method in float64 (exact, so the
    comparison checks batching, not LRP's conditioning in float32 on random models; float64 models get captum_mm's
    float64 softmax, without which their left padding turns NaN), and every method of ``float32_family`` but the
    LRP-based ones in float32 too: in float32 their relevance (after the residual z-rule's near-cancellations on a
    random model) differs between a batch and a sample alone by the matmul kernels' rounding, which differs between
    CPUs (AVX2, AVX-512): such a comparison tests the CPU, not the batching."""
    float32 = [(float32_family, m, torch.float32) for m in methods if m not in LRP_BASED]
    cases = [(f, m, torch.float64) for f in families for m in methods] + float32
    return [pytest.param(*case, id=f"{case[0]}-{case[1]}-{str(case[2])[6:]}") for case in cases]
