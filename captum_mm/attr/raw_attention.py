"""Raw attention: the head mean of the last attention reaching the readout."""

from typing import cast

from torch import Tensor

from captum_mm.attr._base import AttentionBundle, Needs
from captum_mm.attr.last_layer import LastLayerAttribution
from captum_mm.relevance.heads import head_mean
from captum_mm.relevance.streaming import RowRule


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

    needs = Needs(probabilities=True, fusion="head_mean", rows=RowRule(aggregate=False))

    def fuse(self, bundle: AttentionBundle) -> Tensor:
        return head_mean(cast(Tensor, bundle.probs))
