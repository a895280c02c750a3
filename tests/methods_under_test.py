"""The methods every contract test runs over; later methods add a line here."""

from captum_mm.attr import GenericAttention

METHODS = {
    "generic": lambda forward, model=None: GenericAttention(forward, model),
    "generic-no-norm": lambda forward, model=None: GenericAttention(forward, model, normalize=False),
    "generic-no-aggregation": lambda forward, model=None: GenericAttention(forward, model, normalize=False, aggregate=False),
    "generic-no-self-in-eq10": lambda forward, model=None: GenericAttention(forward, model, self_in_bimodal=False),
}

#: Methods whose relevance may be negative (none of those above).
SIGNED = set()

#: Methods whose relevance may vanish on LXMERT: without aggregation, Eq. 11 replaces R^tt by
#: A_bar . R^it, which is still zero at the first cross-attention, so relevance collapses (the
#: paper's identical positive/negative AUCs for this ablation, supplementary Table 2, show the same).
MAY_VANISH = {"generic-no-aggregation"}
