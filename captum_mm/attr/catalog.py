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


def select_methods(names=None) -> Dict[str, Callable]:
    """Methods and ablations by name or :func:`method_alias` (all of them when ``names`` is None)."""
    available = {**PAPER_METHODS, **ABLATIONS}
    if names is None:
        return available
    by_alias = {method_alias(name): name for name in available}
    unknown = [name for name in names if name not in available and name not in by_alias]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; available: {list(available)} (or their aliases {list(by_alias)}).")
    return {by_alias.get(name, name): available[by_alias.get(name, name)] for name in names}


def method_alias(name: str) -> str:
    """A spelling of a method's name that needs no shell quoting: "ours w/ LRP" -> "ours-with-lrp"."""
    words = name.lower().replace(".", "").replace("w/o", "without").replace("w/", "with")
    return re.sub(r"[^a-z0-9]+", "-", words).strip("-")
