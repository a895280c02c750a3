"""Raw attention: the head mean of the last attention reaching the readout."""

from typing import Dict, List, cast

from torch import Tensor

from captum_mm.attr._base import AttentionAttribution, AttentionBundle, Needs
from captum_mm.relevance.heads import head_mean
from captum_mm.relevance.propagation import Matrices, last_event, last_layer_relevance
from captum_mm.relevance.schedule import AttentionEvent, Schedule


class LastLayerAttribution(AttentionAttribution):
    """Shared by the last-layer baselines: only the last event from the readout modality to each key is used."""

    def _events(self, schedule: Schedule) -> List[AttentionEvent]:
        return list(dict.fromkeys(last_event(schedule, *pair) for pair in schedule.pairs))

    def _relevance_matrices(self, schedule: Schedule, maps: Dict[int, Tensor]) -> Matrices:
        return last_layer_relevance(schedule, maps)


class RawAttention(LastLayerAttribution):
    r"""
    Raw attention, as Chefer, Gur & Wolf (ICCV 2021, https://arxiv.org/abs/2103.15679)
    compare against it: the head mean of the last layer's attention, read at the
    readout row. LXMERT: the last x-layer's text->image cross-attention for the image
    and its language self-attention for the text; VisualBERT: the last layer; DETR:
    the last decoder cross-attention. No backward pass is run.

    Examples::

        >>> explanation = RawAttention(model).explain((input_ids, visual_feats, visual_pos))
    """

    needs = Needs(probabilities=True, fusion="head_mean")

    def _fuse(self, bundle: AttentionBundle) -> Tensor:
        return head_mean(cast(Tensor, bundle.probs))
