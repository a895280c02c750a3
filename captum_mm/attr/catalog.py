"""The method registry: the methods and ablations of the paper's comparison, by name and key."""

import re
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, Optional, Tuple

from torch import nn

from captum_mm.attr.attnlrp import AttnLRP
from captum_mm.attr.captum_baselines import CaptumFeatureAblation, CaptumIntegratedGradients
from captum_mm.attr.generic import GenericAttention
from captum_mm.attr.grad_cam import AttentionGradCam
from captum_mm.attr.lrp import PartialLRP, TransformerAttribution
from captum_mm.attr.raw_attention import RawAttention
from captum_mm.attr.rollout import AttentionRollout
from captum_mm.attr.sinks import WithoutSinks


def _without_sinks(method: Callable, forward_func: Callable, model: Optional[nn.Module] = None) -> WithoutSinks:
    """``method``'s explainer wrapped in :class:`~captum_mm.attr.WithoutSinks` (default options)."""
    return WithoutSinks(method(forward_func, model))


@dataclass(frozen=True)
class RegisteredMethod:
    """One method configuration of the registry.

    Attributes:
        key (str): Its identifier (shell-safe; the contract tests' ids).
        name (str): Its name in the paper's tables and the reports.
        factory (Callable): ``(forward_func, model=None) -> explainer``.
        table (str or None): Where the paper reports it: ``"paper"`` (the methods compared),
                    ``"ablation"`` (supplementary Tables 1-2), ``"reference DETR"`` ("ours" as the
                    reference DETR code computes it, reported beside "ours" in the DETR study), ``"beyond"``
                    (methods beside the paper's: AttnLRP and its variants, four methods without attention sinks,
                    two Captum baselines; in ``captum-mm reproduce``'s perturbation and plausibility tables, not in
                    DETR's) or None (in no table; selectable by name).
    """

    key: str
    name: str
    factory: Callable
    table: Optional[str]


#: Every method configuration, the one list that the catalog below, the CLI and the contract tests read;
#: each table's methods in the order of the paper's tables. A new method is one entry here.
REGISTRY: Tuple[RegisteredMethod, ...] = (
    RegisteredMethod("generic", "ours", GenericAttention, "paper"),
    RegisteredMethod("generic-lrp", "ours w/ LRP", partial(GenericAttention, head_weighting="lrp"), "paper"),
    RegisteredMethod("transformer-attribution", "transformer att.", TransformerAttribution, "paper"),
    RegisteredMethod("raw-attention", "raw attn.", RawAttention, "paper"),
    RegisteredMethod("partial-lrp", "partial LRP", PartialLRP, "paper"),
    RegisteredMethod("grad-cam", "Grad-CAM", AttentionGradCam, "paper"),
    RegisteredMethod("rollout", "rollout", AttentionRollout, "paper"),
    RegisteredMethod("generic-no-norm", "w/o norm.", partial(GenericAttention, normalize=False), "ablation"),
    # No aggregation runs without normalisation, as in supplementary Tables 1-2.
    RegisteredMethod("generic-no-aggregation", "w/o aggregation",
                     partial(GenericAttention, normalize=False, aggregate=False), "ablation"),
    RegisteredMethod("generic-no-self-in-eq10", "Eq.10 w/o self-att.",
                     partial(GenericAttention, self_in_bimodal=False), "ablation"),
    # The reference DETR code's unguarded Eq. 8-9 drops a layer's whole Eq. 10 update when a row of R - I sums to zero.
    RegisteredMethod("generic-drop-zero-rows", "ours (reference Eq. 8-9)",
                     partial(GenericAttention, zero_row_update="drop"), "reference DETR"),
    # AttnLRP (Achtibat et al., ICML 2024) and CP-LRP: relevance at the inputs; "ours" with AttnLRP's R_A.
    RegisteredMethod("attnlrp", "AttnLRP", AttnLRP, "beyond"),
    RegisteredMethod("cp-lrp", "CP-LRP", partial(AttnLRP, constant_attention=True), "beyond"),
    RegisteredMethod("generic-attnlrp", "ours w/ AttnLRP", partial(GenericAttention, head_weighting="attnlrp"), "beyond"),
    # Attention sinks (the first token, tokens taking >= 25% of attention) left out and the rest renormalised: on ours
    # and on the attention methods winning the most tests of a model (rollout: VisualBERT; ours w/ LRP: LXMERT's
    # plausibility; ours w/ AttnLRP: LLaVA).
    RegisteredMethod("generic-without-sinks", "ours w/o sinks", partial(_without_sinks, GenericAttention), "beyond"),
    RegisteredMethod("rollout-without-sinks", "rollout w/o sinks", partial(_without_sinks, AttentionRollout), "beyond"),
    RegisteredMethod("generic-lrp-without-sinks", "ours w/ LRP w/o sinks",
                     partial(_without_sinks, partial(GenericAttention, head_weighting="lrp")), "beyond"),
    RegisteredMethod("generic-attnlrp-without-sinks", "ours w/ AttnLRP w/o sinks",
                     partial(_without_sinks, partial(GenericAttention, head_weighting="attnlrp")), "beyond"),
    # Captum's own methods through captum.attr, read out per token, region and patch.
    RegisteredMethod("captum-lig", "LIG (Captum)", CaptumIntegratedGradients, "beyond"),
    RegisteredMethod("captum-feature-ablation", "FeatureAblation (Captum)", CaptumFeatureAblation, "beyond"),
)


def _table(table: str) -> Dict[str, Callable]:
    return {method.name: method.factory for method in REGISTRY if method.table == table}


#: Name -> factory ``(forward_func, model=None) -> explainer``, in the order of the paper's tables.
PAPER_METHODS: Dict[str, Callable] = _table("paper")

#: The ablations of supplementary Tables 1-2.
ABLATIONS: Dict[str, Callable] = _table("ablation")

#: "ours" as the reference DETR code computes it, reported beside "ours" in the DETR study.
REFERENCE_DETR: Dict[str, Callable] = _table("reference DETR")

#: Methods beside the paper's: AttnLRP, CP-LRP, "ours w/ AttnLRP", "ours" and rollout without sinks, two Captum baselines.
BEYOND_PAPER: Dict[str, Callable] = _table("beyond")


def study_methods() -> Dict[str, Callable]:
    """The main job's default methods: the paper's, the ablations and those beside the paper (:data:`BEYOND_PAPER`)."""
    return {**PAPER_METHODS, **ABLATIONS, **BEYOND_PAPER}


def every_method() -> Dict[str, Callable]:
    """Every method and ablation a name or alias can select."""
    return {method.name: method.factory for method in REGISTRY}


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
