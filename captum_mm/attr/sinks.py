"""Attention sinks (docs/METHOD.md, "Attention sinks"): the tokens a model parks attention on regardless of content
(the first token, a few image tokens), found per explanation, and relevance reported without them."""

from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, cast

import torch
from torch import Tensor, nn

from captum_mm.attr._base import AttentionAttribution, AttentionBundle, Explanation, Needs
from captum_mm.attr._inputs import read_columns
from captum_mm.attr.engine import ForwardPass, fused_maps
from captum_mm.relevance.heads import head_mean
from captum_mm.relevance.propagation import Matrices
from captum_mm.relevance.schedule import AttentionEvent, Schedule

__all__ = ["AttentionSinks", "WithoutSinks", "without_sinks"]


class AttentionSinks(AttentionAttribution):
    r"""
    A diagnostic, not an explanation: for every token an explanation's outputs read,
    the share of attention it receives -- the attention weight on it, averaged over
    the heads and self-attention layers of its modality and over the real query rows
    that can see it (in a causal stream: it and the rows after it); with
    ``first_token``, each modality's first real token is a sink by position and its
    share is reported as 1 (``first_token=False`` shows its measured share). Its
    :meth:`~captum_mm.attr.AttentionAttribution.explain` returns these shares in an
    :class:`Explanation` shaped like any method's (generated tokens included); an
    output read through an earlier stage (a VLM's image through its vision tower) or
    with no self-attention of its modality is left out. :meth:`sinks` names the sink
    tokens; :func:`without_sinks` reports a method's relevance without them.

    Examples::

        >>> diagnostic = AttentionSinks(model)
        >>> shares = diagnostic.explain(input_ids, additional_forward_args=(mask,))
        >>> sinks = diagnostic.sinks(shares)  # {"text": [B, T] bool}
        >>> cleaned = without_sinks(GenericAttention(model).explain(input_ids, None, (mask,)), sinks)
    """

    needs = Needs(probabilities=True)
    lean = False

    def __init__(self, forward_func: Callable, model: Optional[nn.Module] = None, share: float = 0.25,
                 first_token: bool = True) -> None:
        r"""
        Args:
            forward_func (Callable or torch.nn.Module): The HuggingFace model, or a
                        callable running it and returning its logits.
            model (torch.nn.Module, optional): The model when ``forward_func`` is not it. Default: None
            share (float, optional): A token receiving at least this share of attention is a sink. Default: 0.25
            first_token (bool, optional): The first real token of each modality is a sink. Default: True
        """
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share!r}.")
        super().__init__(forward_func, model)
        self.share, self.first_token = share, first_token

    def events(self, schedule: Schedule) -> List[AttentionEvent]:
        """The self-attention events (the shares are read from them)."""
        return [event for event in schedule.events if event.is_self]

    def fuse(self, bundle: AttentionBundle) -> Tensor:
        """The head mean of the attention probabilities."""
        return head_mean(cast(Tensor, bundle.probs))

    def relevance_matrices(self, schedule: Schedule, maps: Dict[int, Tensor]) -> Matrices:
        """Not used: the shares are read from the maps directly."""
        raise RuntimeError("AttentionSinks reads attention shares, not relevance matrices.")

    def sinks(self, shares: Explanation) -> Dict[str, Tensor]:
        r"""
        The sink tokens of each output of ``shares`` (this diagnostic's explanation).

        Args:
            shares (Explanation): What :meth:`explain` returned.

        Returns:
            dict[str, Tensor]: Booleans shaped like each output: the tokens receiving at
            least ``share`` of attention, and (``first_token``) the first real token.
        """
        return {name: values >= self.share for name, values in shares.outputs().items()}

    def _outputs_in_groups(self, forward: ForwardPass, max_memory: Any, streaming: bool) -> Dict[str, Tensor]:
        # the shares need every map whole: never streamed
        schedule, events = forward.schedule, self.events(forward.schedule)
        maps = fused_maps(forward, events, self.fuse, self.needs)
        outputs = {}
        for name, spec in schedule.outputs.items():
            modality_events = schedule.self_events(spec.key)
            if spec.through is not None or not modality_events:
                continue
            received = _received(schedule, spec.key, [maps[event.call] for event in modality_events])
            if self.first_token:
                first = schedule.masks[spec.key].to(torch.int8).argmax(-1)
                received = received.scatter(1, first[:, None], 1.0)
            outputs[name] = read_columns(received, spec, schedule.masks[spec.key])
        return outputs


def _received(schedule: Schedule, modality: str, maps: List[Tensor]) -> Tensor:
    """``[E, N]`` each token's attention, averaged over ``maps`` (head means ``[E, N, N]``) and the rows that see it."""
    real = schedule.masks[modality].to(maps[0].dtype)
    seeing = real[:, :, None].expand(-1, -1, real.shape[-1])
    if modality in schedule.causal:
        seeing = seeing.tril()
    total = torch.stack(maps).mean(0).mul(real[:, :, None]).sum(1)
    return total / seeing.sum(1).clamp(min=1)


def without_sinks(explanation: Explanation, sinks: Dict[str, Tensor], renormalize: bool = True) -> Explanation:
    """``explanation`` with its sink tokens' relevance set to 0 (outputs ``sinks`` does not name unchanged).

    Args:
        explanation (Explanation): A method's explanation.
        sinks (dict[str, Tensor]): :meth:`AttentionSinks.sinks` of the same inputs and targets.
        renormalize (bool, optional): Rescale each element's remaining relevance of an output to the absolute
                    total it had (sum of absolute values). Default: True

    Returns:
        Explanation: A copy, the other fields shared.
    """
    relevance = dict(explanation.relevance)
    for name, mask in sinks.items():
        values = relevance[name]
        if mask.shape != values.shape:
            raise ValueError(f"The sinks of {name!r} are shaped {tuple(mask.shape)}, its relevance "
                             f"{tuple(values.shape)}: find them for the same inputs and targets.")
        kept = values.masked_fill(mask, 0.0)
        if renormalize:  # per element: the dimensions after the sample's (and the slot's, [B, K, ...])
            dims = tuple(range(explanation.target.dim(), values.dim()))
            before, after = values.abs().sum(dims, keepdim=True), kept.abs().sum(dims, keepdim=True)
            kept = kept * torch.where(after > 0, before / after.clamp(min=torch.finfo(after.dtype).tiny), 0.0)
        relevance[name] = kept
    return replace(explanation, relevance=relevance)


class WithoutSinks:
    r"""
    Any method's explanations with attention sinks left out: ``explain`` runs the
    method and :class:`AttentionSinks` on the same arguments and returns
    :func:`without_sinks` of the method's explanation (outputs the diagnostic does
    not report unchanged). Attention shares do not depend on the explained class, so
    the sinks are the same for every target.

    Examples::

        >>> explainer = WithoutSinks(AttentionRollout(model), share=0.3)
        >>> explanation = explainer.explain(input_ids, additional_forward_args=(mask,))
        >>> explainer.last_sinks  # {"text": [B, T] booleans}: the sinks of that explanation
    """

    def __init__(self, explainer: AttentionAttribution, share: float = 0.25, first_token: bool = True,
                 renormalize: bool = True) -> None:
        r"""
        Args:
            explainer (AttentionAttribution): The method.
            share (float, optional): As for :class:`AttentionSinks`. Default: 0.25
            first_token (bool, optional): As for :class:`AttentionSinks`. Default: True
            renormalize (bool, optional): As for :func:`without_sinks`. Default: True
        """
        self.explainer, self.renormalize = explainer, renormalize
        self.diagnostic = AttentionSinks(explainer.forward_func, explainer.model, share, first_token)
        self.last_sinks: Dict[str, Tensor] = {}

    def explain(self, *args: Any, **kwargs: Any) -> Explanation:
        r"""
        The method's explanation without its sinks' relevance.

        Args:
            *args: As for the method's ``explain``.
            **kwargs: As for the method's ``explain``.

        Returns:
            Explanation: The method's, its sinks zeroed (:attr:`last_sinks` names them).
        """
        explanation = self.explainer.explain(*args, **kwargs)
        self.last_sinks = self.diagnostic.sinks(self.diagnostic.explain(*args, **kwargs))
        return without_sinks(explanation, self.last_sinks, self.renormalize)
