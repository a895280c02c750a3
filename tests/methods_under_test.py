"""The methods every contract test runs over: the package's registry (``captum_mm.attr.catalog.REGISTRY``,
where a new method is one entry), by key, and two ``start_layer`` variants of registered methods."""

from functools import partial

from captum_mm.attr.catalog import REGISTRY

#: Option variants of registered methods, run by the contract tests beside them.
OPTION_VARIANTS = {"generic-start-layer-1": ("generic", 1), "rollout-start-layer-1": ("rollout", 1)}

_BY_KEY = {method.key: method.factory for method in REGISTRY}

METHODS = {
    **_BY_KEY,
    **{key: partial(_BY_KEY[base], start_layer=start) for key, (base, start) in OPTION_VARIANTS.items()},
}

#: Methods whose relevance may be negative (none of those above).
SIGNED: set = set()

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
