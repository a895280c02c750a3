"""Generic attention-model explainability (Chefer, Gur & Wolf, ICCV 2021) and its ablations."""

from typing import Dict, Optional, cast

from torch import Tensor

from captum_mm.attr._base import AttentionAttribution, AttentionBundle, Needs
from captum_mm.attr.attnlrp import check_supported
from captum_mm.lrp import RuleSet, attnlrp_rules
from captum_mm.relevance.heads import gradient_weighted, relevance_weighted
from captum_mm.relevance.propagation import Matrices, generic_relevance
from captum_mm.relevance.schedule import Schedule
from captum_mm.relevance.streaming import RowRule

HEAD_WEIGHTINGS = ("gradient", "lrp", "attnlrp")
ZERO_ROW_UPDATES = ("keep", "drop")


class GenericAttention(AttentionAttribution):
    r"""
    Relevancy maps of Chefer, Gur & Wolf, "Generic Attention-model Explainability
    for Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV 2021,
    https://arxiv.org/abs/2103.15679), for self-attention, co-attention and
    encoder-decoder transformers.

    Relevance matrices start at the identity (Eq. 1-2) and are updated at every
    attention call in the order of the model's schedule: self-attention by Eq. 6-7,
    bi-modal attention by Eq. 10-11 with the normalised self relevance of Eq. 8-9.
    Each attention map enters as ``mean_h((grad A * A)^+)`` (Eq. 5), the gradient
    taken from the pre-softmax logit of the explained class. One forward and one
    backward pass explain a whole batch (for DETR, all explained queries of the
    batch share the forward and one batched backward).

    The paper's ablations are options: ``normalize=False`` ("w/o norm."),
    ``aggregate=False`` ("w/o aggregation", which the paper runs with
    ``normalize=False``), ``self_in_bimodal=False`` ("Eq. 10 w/o self-att.").

    Examples::

        >>> model = LxmertForQuestionAnswering.from_pretrained(path).eval()
        >>> explainer = GenericAttention(model)
        >>> explanation = explainer.explain(
        ...     (input_ids, visual_feats, visual_pos), additional_forward_args=(attention_mask,)
        ... )
        >>> explanation.text.shape, explanation.image.shape  # [B, T], [B, R]
        >>> attributions = explainer.attribute((input_ids, visual_feats, visual_pos),
        ...                                    additional_forward_args=(attention_mask,))
    """

    def __init__(
        self,
        forward_func,
        model=None,
        normalize: bool = True,
        aggregate: bool = True,
        self_in_bimodal: bool = True,
        head_weighting: str = "gradient",
        start_layer: int = 0,
        rules: Optional[RuleSet] = None,
        zero_row_update: str = "keep",
    ) -> None:
        r"""
        Args:
            forward_func (Callable or torch.nn.Module): The HuggingFace model, or a
                        callable running it and returning its logits.
            model (torch.nn.Module, optional): The model to explain when
                        ``forward_func`` is not the model. Default: None
            normalize (bool, optional): Normalise self relevance inside Eq. 10
                        (Eq. 8-9). Default: True
            aggregate (bool, optional): Add each update to the relevance (False
                        replaces it: the "w/o aggregation" ablation). Default: True
            self_in_bimodal (bool, optional): Use the self relevance in Eq. 10
                        (False: ``dR^{sq} = A_bar``). Default: True
            head_weighting (str, optional): How heads are weighted: ``"gradient"``
                        (Eq. 5, gradient times attention), ``"lrp"`` (Eq. 13, gradient
                        times the LRP relevance at the map: "Ours w/ LRP") or ``"attnlrp"``
                        (Eq. 13 with AttnLRP's relevance at the map, its rules
                        :func:`~captum_mm.lrp.attnlrp_rules`; families AttnLRP refuses are
                        refused). Default: "gradient"
            start_layer (int, optional): Leave out each modality's first
                        ``start_layer`` self-attention layers (the reference CLIP
                        demo's option against context over-expansion); cross-attention
                        is always kept. Default: 0 (the paper's method)
            rules (RuleSet, optional): LRP rules for ``head_weighting="lrp"`` or ``"attnlrp"``.
                        Default: None (the reference implementation's rules; AttnLRP's for ``"attnlrp"``)
            zero_row_update (str, optional): What Eq. 10 does when a row of ``R^{ss} - I``
                        or ``R^{qq} - I`` sums to zero, so that Eq. 8-9 would divide 0 by 0:
                        ``"keep"`` normalises that row to zero and applies the rest of the
                        update; ``"drop"`` drops the whole update of that layer, as the
                        reference DETR implementation does (there the NaN of that row spreads
                        over the update, which is then set to 0). Frequent in DETR, whose first
                        decoder self-attention often has all-zero rows. Default: "keep"
        """
        if head_weighting not in HEAD_WEIGHTINGS:
            raise ValueError(f"head_weighting must be one of {HEAD_WEIGHTINGS}, got {head_weighting!r}.")
        if zero_row_update not in ZERO_ROW_UPDATES:
            raise ValueError(f"zero_row_update must be one of {ZERO_ROW_UPDATES}, got {zero_row_update!r}.")
        super().__init__(forward_func, model)
        self.normalize = normalize
        self.aggregate = aggregate
        self.self_in_bimodal = self_in_bimodal
        self.head_weighting = head_weighting
        lrp = head_weighting in ("lrp", "attnlrp")
        self.needs = Needs(probabilities=not lrp, gradients=True, relevance=lrp, fusion=None if lrp else "gradient_weighted",
                           rows=RowRule(aggregate))
        self.rules = rules
        if head_weighting == "attnlrp":
            check_supported(self.adapter)
            self.rules = rules or attnlrp_rules()
        self.zero_row_update = zero_row_update
        self._set_start_layer(start_layer)

    def fuse(self, bundle: AttentionBundle) -> Tensor:
        if self.needs.relevance:
            return relevance_weighted(cast(Tensor, bundle.relevance), cast(Tensor, bundle.grads))
        return gradient_weighted(cast(Tensor, bundle.probs), cast(Tensor, bundle.grads))

    def relevance_matrices(self, schedule: Schedule, maps: Dict[int, Tensor]) -> Matrices:
        return generic_relevance(
            schedule, maps, self.normalize, self.aggregate, self.self_in_bimodal, self.zero_row_update == "drop"
        )
