"""Methods built on LRP relevance at the attention maps: partial LRP and Transformer attribution."""

from typing import Callable, Dict, List, Optional, cast

from torch import Tensor, nn

from captum_mm.attr._base import AttentionAttribution, AttentionBundle, Needs
from captum_mm.attr.last_layer import LastLayerAttribution
from captum_mm.lrp import RuleSet
from captum_mm.relevance.heads import head_mean, relevance_weighted
from captum_mm.relevance.propagation import Matrices, last_event, last_layer_relevance, transformer_attribution_relevance
from captum_mm.relevance.scaling import min_max_scaled
from captum_mm.relevance.schedule import AttentionEvent, Schedule
from captum_mm.relevance.streaming import RowRule

_RULES_DOC = """rules (RuleSet, optional): The LRP rules. Default: None (the reference
                        implementation's: alpha=1 beta=0 linear layers, pass-through
                        LayerNorm/activations/softmax, halved matmuls, proportional
                        residual splits; see :mod:`captum_mm.lrp.rules`)"""


class PartialLRP(LastLayerAttribution):
    r"""
    Partial LRP (Voita et al., ACL 2019) as Chefer, Gur & Wolf (ICCV 2021,
    https://arxiv.org/abs/2103.15679) compare against it: the LRP relevance at the
    last layer's attention map (the same layers as :class:`RawAttention`), head
    mean without clamping, each relevance matrix min-max scaled over its real
    tokens as the reference does (rankings are unchanged; a generated token's over
    the entries up to its readout row, the others 0). One forward and one LRP
    backward pass.

    Examples::

        >>> explanation = PartialLRP(model).explain((input_ids, visual_feats, visual_pos))
    """

    needs = Needs(probabilities=False, relevance=True)

    def __init__(self, forward_func: Callable, model: Optional[nn.Module] = None, rules: Optional[RuleSet] = None) -> None:
        super().__init__(forward_func, model)
        self.rules = rules

    def fuse(self, bundle: AttentionBundle) -> Tensor:
        return head_mean(cast(Tensor, bundle.relevance))

    def relevance_matrices(self, schedule: Schedule, maps: Dict[int, Tensor]) -> Matrices:
        return {
            (row, key): min_max_scaled(matrix, schedule.masks[row], schedule.masks[key],
                                       schedule.segments.get(row) if row == key else None)
            for (row, key), matrix in last_layer_relevance(schedule, maps).items()
        }


class TransformerAttribution(AttentionAttribution):
    r"""
    Transformer attribution (Chefer, Gur & Wolf, "Transformer Interpretability
    Beyond Attention Visualization", CVPR 2021), as the ICCV 2021 paper compares
    against it: ``R = prod_l (I + mean_h((grad A_l * R_{A_l})^+))`` over the
    readout modality's self-attention layers, ``R_A`` the LRP relevance at each
    map. Across modalities (LXMERT's image, DETR) the term of the last
    cross-attention alone. One forward, one ordinary and one LRP backward pass.

    Examples::

        >>> explanation = TransformerAttribution(model).explain((input_ids, visual_feats, visual_pos))
    """

    needs = Needs(probabilities=False, gradients=True, relevance=True, rows=RowRule())

    def __init__(self, forward_func: Callable, model: Optional[nn.Module] = None, rules: Optional[RuleSet] = None) -> None:
        super().__init__(forward_func, model)
        self.rules = rules

    def events(self, schedule: Schedule) -> List[AttentionEvent]:
        events: List[AttentionEvent] = []
        for row, key in schedule.pairs:
            events += schedule.self_events(row) if key == row else [last_event(schedule, row, key)]
        return list(dict.fromkeys(events))

    def fuse(self, bundle: AttentionBundle) -> Tensor:
        return relevance_weighted(cast(Tensor, bundle.relevance), cast(Tensor, bundle.grads))

    def relevance_matrices(self, schedule: Schedule, maps: Dict[int, Tensor]) -> Matrices:
        return transformer_attribution_relevance(schedule, maps)


for _method in (PartialLRP, TransformerAttribution):
    _method.__init__.__doc__ = f"""
        Args:
            forward_func (Callable or torch.nn.Module): The HuggingFace model, or a
                        callable running it and returning its logits.
            model (torch.nn.Module, optional): The model to explain when
                        ``forward_func`` is not the model. Default: None
            {_RULES_DOC}
        """
