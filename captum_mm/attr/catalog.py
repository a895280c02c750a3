"""The methods and ablations of the paper's comparison, by name."""

from functools import partial
from typing import Callable, Dict

from captum_mm.attr.generic import GenericAttention
from captum_mm.attr.grad_cam import AttentionGradCam
from captum_mm.attr.lrp import PartialLRP, TransformerAttribution
from captum_mm.attr.raw_attention import RawAttention
from captum_mm.attr.rollout import AttentionRollout

#: Name -> factory ``(forward_func, model=None) -> explainer``, in the order of the paper's tables.
PAPER_METHODS: Dict[str, Callable] = {
    "ours": GenericAttention,
    "ours w/ LRP": partial(GenericAttention, head_weighting="lrp"),
    "transformer att.": TransformerAttribution,
    "raw attn.": RawAttention,
    "partial LRP": PartialLRP,
    "Grad-CAM": AttentionGradCam,
    "rollout": AttentionRollout,
}

#: The ablations of supplementary Tables 1-2 (no aggregation runs without normalisation, as there).
ABLATIONS: Dict[str, Callable] = {
    "w/o norm.": partial(GenericAttention, normalize=False),
    "w/o aggregation": partial(GenericAttention, normalize=False, aggregate=False),
    "Eq.10 w/o self-att.": partial(GenericAttention, self_in_bimodal=False),
}

#: "ours" as the reference DETR code computes it (its unguarded Eq. 8-9 drops a layer's whole Eq. 10
#: update when a row of R - I sums to zero), reported beside "ours" in the DETR study.
REFERENCE_DETR: Dict[str, Callable] = {"ours (reference Eq. 8-9)": partial(GenericAttention, zero_row_update="drop")}


def select_methods(names=None) -> Dict[str, Callable]:
    """Methods and ablations by name (the paper's methods and ablations when ``names`` is None)."""
    if names is None:
        return {**PAPER_METHODS, **ABLATIONS}
    available = {**PAPER_METHODS, **ABLATIONS, **REFERENCE_DETR}
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; available: {list(available)}.")
    return {name: available[name] for name in names}


def with_reference_detr(methods: Dict[str, Callable]) -> Dict[str, Callable]:
    """``methods`` with the reference DETR variant of "ours" right after "ours" (unchanged without "ours")."""
    extended: Dict[str, Callable] = {}
    for name, factory in methods.items():
        extended[name] = factory
        if name == "ours":
            extended.update(REFERENCE_DETR)
    return extended
