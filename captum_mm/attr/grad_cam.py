"""Grad-CAM on attention maps."""

from typing import cast

from torch import Tensor

from captum_mm.attr._base import AttentionBundle, Needs
from captum_mm.attr.last_layer import LastLayerAttribution
from captum_mm.relevance.heads import grad_cam
from captum_mm.relevance.streaming import RowRule


class AttentionGradCam(LastLayerAttribution):
    r"""
    Grad-CAM (Selvaraju et al., ICCV 2017) applied to the last attention layer, as
    Chefer, Gur & Wolf (ICCV 2021, https://arxiv.org/abs/2103.15679) compare against
    it: each head weighted by the mean gradient of the explained logit over its whole
    map (the entries between real tokens; a generated token's: those up to its readout
    row), ``cam = (mean_h(w_h A_h))^+`` (positive part after the head mean), read at the
    readout row. Same layers as :class:`RawAttention`.

    Examples::

        >>> explanation = AttentionGradCam(model).explain((input_ids, visual_feats, visual_pos))
    """

    needs = Needs(probabilities=True, gradients=True, fusion="grad_cam", rows=RowRule(aggregate=False))

    def fuse(self, bundle: AttentionBundle) -> Tensor:
        return grad_cam(cast(Tensor, bundle.probs), cast(Tensor, bundle.grads), bundle.valid)
