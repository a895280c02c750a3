"""Attention rollout (Abnar & Zuidema, ACL 2020), extended to bi-modal models as the reference does."""

from typing import Callable, Dict, Optional, cast

from torch import Tensor, nn

from captum_mm.attr._base import AttentionAttribution, AttentionBundle, Needs
from captum_mm.relevance.heads import head_mean
from captum_mm.relevance.streaming import RowRule
from captum_mm.relevance.propagation import Matrices, rollout_relevance
from captum_mm.relevance.schedule import Schedule


class AttentionRollout(AttentionAttribution):
    r"""
    Attention rollout: ``prod_l norm(A_l + I)`` over the self-attention layers of a
    modality (``A_l`` the head mean, ``norm`` row normalisation, later layers on the
    left). Across modalities, as in the reference implementation of Chefer, Gur &
    Wolf (ICCV 2021, https://arxiv.org/abs/2103.15679):
    ``R^{ti} = rollout_tt^T . A^{ti}_last . rollout_ii`` with both rollouts over the
    self-attentions before the last cross-attention (LXMERT ignores earlier x-layer
    cross-attentions; DETR: ``rollout_qq^T . A^{qi}_last . rollout_ii``). A decoder's
    generated token reads its own row, ``rollout_tt . A^{ts}_last . rollout_ss``, which
    sees no later token. No backward pass is run.

    Examples::

        >>> explanation = AttentionRollout(model).explain((input_ids, visual_feats, visual_pos))
    """

    needs = Needs(probabilities=True, fusion="head_mean", rows=RowRule(normalize=True))

    def __init__(self, forward_func: Callable, model: Optional[nn.Module] = None, start_layer: int = 0) -> None:
        r"""
        Args:
            forward_func (Callable or torch.nn.Module): The HuggingFace model, or a
                        callable running it and returning its logits.
            model (torch.nn.Module, optional): The model to explain when
                        ``forward_func`` is not the model. Default: None
            start_layer (int, optional): Start each modality's rollout at its
                        ``start_layer``-th self-attention layer. Default: 0
        """
        super().__init__(forward_func, model)
        self._set_start_layer(start_layer)

    def fuse(self, bundle: AttentionBundle) -> Tensor:
        return head_mean(cast(Tensor, bundle.probs))

    def relevance_matrices(self, schedule: Schedule, maps: Dict[int, Tensor]) -> Matrices:
        return rollout_relevance(schedule, maps)
