"""The methods every contract test runs over; a new method adds a line here."""

import pytest
import torch

from captum_mm.attr import (
    AttentionGradCam,
    AttentionRollout,
    GenericAttention,
    PartialLRP,
    RawAttention,
    TransformerAttribution,
)

METHODS = {
    "generic": lambda forward, model=None: GenericAttention(forward, model),
    "generic-no-norm": lambda forward, model=None: GenericAttention(forward, model, normalize=False),
    "generic-no-aggregation": lambda forward, model=None: GenericAttention(forward, model, normalize=False, aggregate=False),
    "generic-no-self-in-eq10": lambda forward, model=None: GenericAttention(forward, model, self_in_bimodal=False),
    "generic-drop-zero-rows": lambda forward, model=None: GenericAttention(forward, model, zero_row_update="drop"),
    "generic-start-layer-1": lambda forward, model=None: GenericAttention(forward, model, start_layer=1),
    "raw-attention": lambda forward, model=None: RawAttention(forward, model),
    "rollout": lambda forward, model=None: AttentionRollout(forward, model),
    "rollout-start-layer-1": lambda forward, model=None: AttentionRollout(forward, model, start_layer=1),
    "grad-cam": lambda forward, model=None: AttentionGradCam(forward, model),
    "generic-lrp": lambda forward, model=None: GenericAttention(forward, model, head_weighting="lrp"),
    "partial-lrp": lambda forward, model=None: PartialLRP(forward, model),
    "transformer-attribution": lambda forward, model=None: TransformerAttribution(forward, model),
}

#: Methods whose relevance may be negative (none of those above).
SIGNED = set()

#: Methods whose relevance may be all zero on a random-init model. Without aggregation, Eq. 11
#: replaces R^tt by A_bar . R^it, still zero at LXMERT's first cross-attention, so relevance
#: collapses (the paper's identical positive/negative AUCs for this ablation, supplementary
#: Table 2, show the same). Dropping Eq. 10 updates at zero rows of R - I (the reference DETR code)
#: drops every update of a random-init DETR: its zero value biases make the first decoder
#: self-attention's gradient map all zero. Grad-CAM takes the positive part after the head mean,
#: which erases a readout row whose gradient-weighted heads sum to a negative value.
MAY_VANISH = {"generic-no-aggregation", "generic-drop-zero-rows", "grad-cam"}

#: Methods running an LRP backward (their half-precision models computed in float32).
LRP_BASED = {"generic-lrp", "partial-lrp", "transformer-attribution"}


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
