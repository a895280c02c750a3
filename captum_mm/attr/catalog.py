"""The methods and ablations of the paper's comparison, by name."""

import re
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


def every_method() -> Dict[str, Callable]:
    """Every method and ablation a name or alias can select."""
    return {**PAPER_METHODS, **ABLATIONS, **REFERENCE_DETR}


def select_methods(names=None) -> Dict[str, Callable]:
    """Methods and ablations by name or :func:`method_alias` (the paper's methods and ablations when
    ``names`` is None)."""
    if names is None:
        return {**PAPER_METHODS, **ABLATIONS}
    available = every_method()
    by_alias = {method_alias(name): name for name in available}
    unknown = [name for name in names if name not in available and name not in by_alias]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; available: {list(available)} (or their aliases {list(by_alias)}).")
    return {by_alias.get(name, name): available[by_alias.get(name, name)] for name in names}


def method_alias(name: str) -> str:
    """A spelling of a method's name that needs no shell quoting: "ours w/ LRP" -> "ours-with-lrp"."""
    words = name.lower().replace(".", "").replace("w/o", "without").replace("w/", "with")
    return re.sub(r"[^a-z0-9]+", "-", words).strip("-")


def with_reference_detr(methods: Dict[str, Callable]) -> Dict[str, Callable]:
    """``methods`` with the reference DETR variant of "ours" right after "ours" (unchanged without "ours")."""
    extended: Dict[str, Callable] = {}
    for name, factory in methods.items():
        extended[name] = factory
        if name == "ours":
            extended.update(REFERENCE_DETR)
    return extended
