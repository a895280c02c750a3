"""Captum's own attribution methods (``captum.attr``) as captum_mm explainers: relevance per text token and per image
region or patch, in the :class:`~captum_mm.attr.Explanation` every captum_mm method returns, for the same targets
(classes, generated tokens), so that the main job compares them with the attention-based methods.

What is attributed: the output of the word embeddings (where integer token ids enter) and every floating forward
argument that carries an output (region features, ``visual_pos``, ``pixel_values``), read out per token, region or patch
as AttnLRP's relevance is (:mod:`captum_mm.attr._inputs`).
"""

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from captum.attr import FeatureAblation, LayerIntegratedGradients
from torch import Tensor, nn

from captum_mm._compat import _format_additional_forward_args
from captum_mm.attr._base import AttentionAttribution, AttentionBundle, Explanation, Needs
from captum_mm.attr._checks import check_finite_relevance
from captum_mm.attr._inputs import EMBEDDINGS, read_inputs
from captum_mm.attr._readout import assemble
from captum_mm.attr._replay import Replay, ReplayInputs, group_masks, spread_over_groups
from captum_mm.attr.engine import check_inputs, forward_pass
from captum_mm.generation import Continuation
from captum_mm.models import TargetOptions
from captum_mm.relevance.propagation import Matrices
from captum_mm.relevance.schedule import AttentionEvent, Schedule

__all__ = ["CaptumBaseline", "CaptumFeatureAblation", "CaptumIntegratedGradients"]


class CaptumBaseline(AttentionAttribution):
    r"""
    Base of the Captum baselines: one captured forward for the targets and the schedule (no attention map is used),
    then, per explained slot (a class, a generated token), a ``captum.attr`` method on a replay of the model whose
    output is the explained logit of each sample (:meth:`slot_relevance`), read out per token, region or patch.

    The baseline input replaces every token id by ``baseline_token`` (the config's ``pad_token_id``, else 0) but the
    image placeholders a VLM fills with image features (the config's ``image_token_id``/``image_token_index``), and
    every floating input by zeros.
    """

    needs = Needs(probabilities=False)

    def __init__(self, forward_func: Callable, model: Optional[nn.Module] = None,
                 baseline_token: Optional[int] = None) -> None:
        r"""
        Args:
            forward_func (Callable or torch.nn.Module): The HuggingFace model, or a callable running it and
                        returning its logits.
            model (torch.nn.Module, optional): The model when ``forward_func`` is not it. Default: None
            baseline_token (int, optional): The token id of the baseline input. Default: None (the config's
                        ``pad_token_id``, else 0)
        """
        super().__init__(forward_func, model)
        config = getattr(self.model, "config", None)
        pad = getattr(config, "pad_token_id", None)
        self.baseline_token = baseline_token if baseline_token is not None else (pad if isinstance(pad, int) else 0)

    def events(self, schedule: Schedule) -> List[AttentionEvent]:
        """None: the Captum baselines read no attention map."""
        return []

    def fuse(self, bundle: AttentionBundle) -> Tensor:
        """Not used: no attention map is fused (:meth:`events` is empty)."""
        raise RuntimeError(f"{type(self).__name__} reads no attention map.")

    def relevance_matrices(self, schedule: Schedule, maps: Dict[int, Tensor]) -> Matrices:
        """Not used: the relevance is read at the inputs."""
        raise RuntimeError(f"{type(self).__name__} builds no relevance matrix.")

    def slot_relevance(self, replay: Replay) -> Dict[str, Tensor]:
        r"""
        One slot's relevance at the inputs, by the Captum method.

        Args:
            replay (Replay): The model's forward giving each sample's explained logit of the slot.

        Returns:
            *dict[str, Tensor]*: ``[B, ...]`` per input read out (:data:`~captum_mm.attr._inputs.EMBEDDINGS` for the
            word embeddings, else the argument's name), summing over each token's (region's, patch's) entries to its
            relevance.
        """
        raise NotImplementedError

    def _explain(self, inputs: Tuple[Tensor, ...], target: Any, additional_forward_args: Any,
                 forward_func: Optional[Callable] = None, *, options: TargetOptions = TargetOptions(),
                 **ignored: Any) -> Tuple[Explanation, Dict[str, Any]]:
        if forward_func is None:
            check_inputs(inputs)
        additional = _format_additional_forward_args(additional_forward_args) or ()
        with forward_pass(self.model, forward_func or self.forward_func, inputs, additional, target=target,
                          needs=self.needs, adapter=self.adapter, method=type(self).__name__,
                          target_options=options) as forward:
            selection, schedule, arguments = forward.selection, forward.schedule, dict(forward.record.arguments)
            batch = int(forward.logits.shape[0])
        replay_inputs = ReplayInputs.probe(self.model, arguments, self.adapter.argument_outputs, self.baseline_token)
        relevance: Dict[str, Tensor] = {}
        for slot in range(selection.grad_outputs.shape[0]):
            members = (selection.slot == slot).nonzero()[:, 0]
            replay = Replay(self.model, self.adapter.logits, arguments, replay_inputs, selection.grad_outputs[slot], schedule,
                            target if isinstance(target, Continuation) else None)
            for name, values in self.slot_relevance(replay).items():
                relevance.setdefault(name, values.new_zeros(selection.num_elements, *values.shape[1:]))
                relevance[name][members] = values.detach()[selection.sample[members]]
        outputs = read_inputs(schedule, relevance, self.adapter.argument_outputs)
        check_finite_relevance(outputs, selection.sample, type(self).__name__)
        return assemble(selection, outputs, batch), arguments


class CaptumIntegratedGradients(CaptumBaseline):
    r"""
    ``captum.attr.LayerIntegratedGradients`` (Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML
    2017) on the word embeddings' output and on the output of the first layer reading each floating input (a region
    feature projection, a vision tower's patch embedding): those layers are linear, so a region's (a patch's) summed
    attribution equals Integrated Gradients of the input itself. A token's relevance is its embedding's attribution
    summed over features; signed.

    Examples::

        >>> explanation = CaptumIntegratedGradients(model, n_steps=8).explain(input_ids, None, (mask,))
        >>> explanation.text  # [B, T], signed
    """

    def __init__(self, forward_func: Callable, model: Optional[nn.Module] = None, n_steps: int = 8,
                 internal_batch_size: Optional[int] = 128, baseline_token: Optional[int] = None) -> None:
        r"""
        Args:
            forward_func (Callable or torch.nn.Module): As for :class:`CaptumBaseline`.
            model (torch.nn.Module, optional): As for :class:`CaptumBaseline`. Default: None
            n_steps (int, optional): Integration steps (Gauss-Legendre). Default: 8
            internal_batch_size (int, optional): Rows per forward of the integration. Default: 128
            baseline_token (int, optional): As for :class:`CaptumBaseline`. Default: None
        """
        if n_steps < 1:
            raise ValueError(f"n_steps must be a positive count, got {n_steps!r}.")
        super().__init__(forward_func, model, baseline_token)
        self.n_steps, self.internal_batch_size = n_steps, internal_batch_size

    def slot_relevance(self, replay: Replay) -> Dict[str, Tensor]:
        r"""
        The layers' attributions (see the class).

        Args:
            replay (Replay): As for :meth:`CaptumBaseline.slot_relevance`.

        Returns:
            *dict[str, Tensor]*: As for :meth:`CaptumBaseline.slot_relevance`.
        """
        inputs = replay.inputs
        method = LayerIntegratedGradients(replay, inputs.layers)
        attributions = method.attribute(inputs.values(replay.arguments), inputs.baselines(replay.arguments),
                                        additional_forward_args=replay.additional(), n_steps=self.n_steps,
                                        internal_batch_size=self.internal_batch_size)
        names = ([EMBEDDINGS] if inputs.ids is not None else []) + inputs.floats
        return dict(zip(names, attributions))


class CaptumFeatureAblation(CaptumBaseline):
    r"""
    ``captum.attr.FeatureAblation``: each text token replaced by the baseline token, and each block of
    ``image_block x image_block`` regions or patches (runs of ``image_block**2`` regions without a grid) set to zero,
    one forward a group; the change of the explained logit is the group's relevance, shared evenly by its tokens
    (regions, patches). Tokens equal to the baseline (padding, image placeholders) form one group that changes nothing.

    Examples::

        >>> explanation = CaptumFeatureAblation(model, image_block=2).explain(input_ids, None, (mask,))
    """

    def __init__(self, forward_func: Callable, model: Optional[nn.Module] = None, image_block: int = 2,
                 perturbations_per_eval: int = 8, baseline_token: Optional[int] = None) -> None:
        r"""
        Args:
            forward_func (Callable or torch.nn.Module): As for :class:`CaptumBaseline`.
            model (torch.nn.Module, optional): As for :class:`CaptumBaseline`. Default: None
            image_block (int, optional): Side of the image blocks ablated together. Default: 2
            perturbations_per_eval (int, optional): Groups ablated per forward (Captum's). Default: 8
            baseline_token (int, optional): As for :class:`CaptumBaseline`. Default: None
        """
        if image_block < 1 or perturbations_per_eval < 1:
            raise ValueError(f"image_block and perturbations_per_eval must be positive, got {image_block!r}, "
                             f"{perturbations_per_eval!r}.")
        super().__init__(forward_func, model, baseline_token)
        self.image_block, self.perturbations_per_eval = image_block, perturbations_per_eval

    def slot_relevance(self, replay: Replay) -> Dict[str, Tensor]:
        r"""
        Each group's change of the logit, spread evenly over its entries (see the class).

        Args:
            replay (Replay): As for :meth:`CaptumBaseline.slot_relevance`.

        Returns:
            *dict[str, Tensor]*: As for :meth:`CaptumBaseline.slot_relevance`.
        """
        inputs, arguments = replay.inputs, replay.arguments
        values, baselines = inputs.values(arguments), inputs.baselines(arguments)
        masks = group_masks(values, baselines, inputs, replay.grids(), self.image_block)
        with torch.no_grad():
            attributions = FeatureAblation(replay).attribute(
                values, baselines, additional_forward_args=replay.additional(), feature_mask=masks,
                perturbations_per_eval=self.perturbations_per_eval)
        spread = spread_over_groups(attributions, masks)
        if inputs.ids is None:
            return dict(zip(inputs.floats, spread))
        return {EMBEDDINGS: spread[0][..., None], **dict(zip(inputs.floats, spread[1:]))}
