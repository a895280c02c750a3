"""Positive and negative perturbation tests (Chefer, Gur & Wolf, ICCV 2021, supplementary Tables 2-3).

For each sample the tokens of one modality are removed in order of relevance --
most relevant first (*positive*: a good explanation makes accuracy drop fast, lower
AUC is better) or least relevant first (*negative*: higher AUC is better) -- and the
model is run again at each fraction removed. Removal *drops* tokens: the kept ones
are packed to the front in their original order and the rest masked out, which is
what dropping them from the sequence gives (right padding changes nothing for the
real tokens), so all samples and steps go through a few batched forwards. A
modality with no token left is passed as one masked-out token: HuggingFace LXMERT
cannot run on zero regions (its attention reshapes fail on empty tensors), and for
VisualBERT, whose text tokens always remain as keys, a masked region gets exactly
zero attention, as a dropped one.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

#: Fractions removed (docs/METHOD.md); VisualBERT's image regions use their own.
DEFAULT_STEPS = (0.0, 0.25, 0.5, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
VISUAL_BERT_IMAGE_STEPS = (0.0, 0.5, 0.75, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0)

ScoreFunction = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TokenGroup:
    """The forward arguments that carry one modality's tokens.

    Attributes:
        tensors (tuple[str, ...]): Keyword arguments ``[B, N, ...]`` whose tokens are
                    dropped together (absent ones are skipped).
        mask (str): Keyword argument ``[B, N]`` marking real tokens (all real if absent).
        keep_ends (bool): Never remove the first and last real token (``[CLS]``, ``[SEP]``).
    """

    tensors: Tuple[str, ...]
    mask: str
    keep_ends: bool = False


LXMERT_TEXT = TokenGroup(("input_ids", "token_type_ids"), "attention_mask", keep_ends=True)
LXMERT_IMAGE = TokenGroup(("visual_feats", "visual_pos"), "visual_attention_mask")
VISUAL_BERT_TEXT = LXMERT_TEXT
VISUAL_BERT_IMAGE = TokenGroup(("visual_embeds", "visual_token_type_ids"), "visual_attention_mask")


@dataclass
class PerturbationCurve:
    """Scores of every sample at every fraction removed.

    Attributes:
        steps (tuple[float, ...]): Fractions removed.
        scores (Tensor): ``[B, S]`` score of each sample at each step (1 = correct).
    """

    steps: Tuple[float, ...]
    scores: Tensor

    @property
    def accuracy(self) -> Tensor:
        """Mean score per step, in %."""
        return self.scores.double().mean(0) * 100

    @property
    def auc(self) -> float:
        """Trapezoid area under accuracy (%) over the fraction removed."""
        return area_under_curve(self.accuracy.tolist(), self.steps)


def area_under_curve(accuracy: Sequence[float], steps: Sequence[float]) -> float:
    """The trapezoid area under accuracy over the fraction removed.

    Args:
        accuracy (sequence of float): Accuracy (%) at each step.
        steps (sequence of float): The fractions removed, increasing.

    Returns:
        *float*: The area (in % x fraction).
    """
    return float(np.trapezoid(np.asarray(accuracy, dtype=np.float64), np.asarray(steps, dtype=np.float64)))


def accuracy(answers: Tensor) -> ScoreFunction:
    """A score function: 1 when the predicted class is the sample's answer.

    Args:
        answers (Tensor): ``[B]`` the answer of each sample.

    Returns:
        *Callable*: ``score(logits, samples) -> [M]`` for the samples of each row of ``logits``.
    """
    return lambda logits, samples: (logits.argmax(-1) == answers.to(logits.device)[samples]).double()


def vqa_score(answer_scores: Tensor) -> ScoreFunction:
    """A score function: VQA soft accuracy, ``answer_scores[sample, predicted class]``.

    Args:
        answer_scores (Tensor): ``[B, C]`` soft labels of each sample.

    Returns:
        *Callable*: ``score(logits, samples) -> [M]``.
    """
    return lambda logits, samples: answer_scores.to(logits.device)[samples, logits.argmax(-1)].double()


def keeps_prediction(predictions: Tensor) -> ScoreFunction:
    """A score function: 1 while the model keeps its original prediction.

    Args:
        predictions (Tensor): ``[B]`` the unperturbed prediction of each sample.

    Returns:
        *Callable*: ``score(logits, samples) -> [M]``.
    """
    return accuracy(predictions)


def check_steps(steps: Sequence[float]) -> Tuple[float, ...]:
    steps = tuple(float(step) for step in steps)
    if not steps or any(not 0.0 <= step <= 1.0 for step in steps):
        raise ValueError(f"Perturbation steps must be fractions in [0, 1], got {list(steps)}.")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"Perturbation steps must be strictly increasing, got {list(steps)}.")
    return steps


def kept_tokens(relevance: Tensor, mask: Tensor, fraction: float, positive: bool, keep_ends: bool) -> Tensor:
    """``[B, N]`` tokens kept after removing ``fraction`` of each sample's removable tokens.

    Of ``n`` removable tokens ``int((1 - fraction) * n)`` are kept (the reference's
    count): the most relevant ones for a negative test, the least relevant for a
    positive one; ties go to the earlier token.
    """
    mask = mask.bool()
    protected = torch.zeros_like(mask)
    if keep_ends:
        lengths = mask.long().sum(1)
        rows = torch.arange(mask.shape[0], device=mask.device)
        protected[rows, 0] = lengths > 0
        protected[rows, (lengths - 1).clamp(min=0)] |= lengths > 0
    removable = mask & ~protected
    counts = [int((1 - fraction) * int(n)) for n in removable.sum(1).tolist()]
    keep = torch.tensor(counts, device=mask.device)[:, None]
    order = torch.where(removable, -relevance if positive else relevance, -torch.inf)
    rank = torch.empty_like(mask, dtype=torch.long)
    sorted_positions = order.argsort(dim=1, descending=True, stable=True)
    rank.scatter_(1, sorted_positions, torch.arange(mask.shape[1], device=mask.device).expand_as(mask))
    return protected | (removable & (rank < keep))


def pack(inputs: Mapping[str, Any], group: TokenGroup, samples: Tensor, kept: Tensor) -> Dict[str, Any]:
    """Rows ``samples`` of ``inputs``, the group's tokens reduced to ``kept`` ones packed to the
    front in order (at least one, masked out when none is kept); the mask follows."""
    batch_size = _token_mask(inputs, group).shape[0]
    width = max(1, int(kept.sum(1).max()))
    order = (~kept).long().argsort(dim=1, stable=True)[:, :width]
    packed = {}
    for name, value in inputs.items():
        if name in group.tensors and isinstance(value, Tensor):
            packed[name] = value[samples[:, None].to(value.device), order.to(value.device)]
        elif isinstance(value, Tensor) and value.dim() and value.shape[0] == batch_size:
            packed[name] = value[samples.to(value.device)]
        else:
            packed[name] = value
    mask_like = inputs.get(group.mask)
    dtype = mask_like.dtype if isinstance(mask_like, Tensor) else torch.long
    packed[group.mask] = kept.gather(1, order).to(dtype)
    return packed


def _token_mask(inputs: Mapping[str, Any], group: TokenGroup) -> Tensor:
    reference = next(inputs[name] for name in group.tensors if isinstance(inputs.get(name), Tensor))
    mask = inputs.get(group.mask)
    return torch.ones(reference.shape[:2], dtype=torch.bool, device=reference.device) if mask is None else mask.bool()


def perturbation_curve(
    forward_func: Callable[..., Tensor],
    inputs: Mapping[str, Any],
    relevance: Tensor,
    group: TokenGroup,
    score: ScoreFunction,
    positive: bool,
    steps: Sequence[float] = DEFAULT_STEPS,
    batch_size: int = 64,
) -> PerturbationCurve:
    r"""
    Accuracy while the tokens of one modality are removed in order of relevance.

    Args:
        forward_func (Callable): Called with keyword arguments (``inputs`` with the
                    group's tokens dropped); returns logits ``[M, C]``.
        inputs (Mapping[str, Any]): The model's keyword arguments for ``B`` samples,
                    batch first.
        relevance (Tensor): ``[B, N]`` per-token relevance of the group's tokens (from
                    any captum_mm explainer, or per-token scores of any Captum method).
        group (TokenGroup): Which arguments carry the tokens (e.g. ``LXMERT_IMAGE``).
        score (Callable): ``score(logits, samples) -> [M]`` for the samples of each
                    row, e.g. ``vqa_score(answer_scores)`` or ``accuracy(answers)``.
        positive (bool): Remove the most relevant tokens first (True) or the least
                    relevant first (False).
        steps (sequence of float, optional): Increasing fractions removed, in [0, 1].
                    Default: ``DEFAULT_STEPS``
        batch_size (int, optional): Rows (sample x step) per forward. Default: 64

    Returns:
        PerturbationCurve: per-sample scores, accuracy per step (%) and its AUC.
    """
    steps = check_steps(steps)
    mask = _token_mask(inputs, group)
    batch, tokens = mask.shape
    if batch == 0:
        raise ValueError("The sample set is empty: pass at least one sample.")
    if tuple(relevance.shape) != (batch, tokens):
        raise ValueError(
            f"relevance has shape {tuple(relevance.shape)} but the {group.tensors[0]} tokens are {(batch, tokens)}: "
            "pass one score per token of the perturbed modality."
        )
    relevance = relevance.to(mask.device).double()
    kept = torch.cat([kept_tokens(relevance, mask, step, positive, group.keep_ends) for step in steps])
    samples = torch.arange(batch, device=mask.device).repeat(len(steps))
    scores = torch.empty(len(steps) * batch, dtype=torch.float64)
    with torch.no_grad():
        for rows in torch.arange(kept.shape[0], device=kept.device).split(batch_size):
            packed = pack(inputs, group, samples[rows], kept[rows])
            scores[rows.cpu()] = score(forward_func(**packed), samples[rows]).cpu()
    return PerturbationCurve(steps, scores.reshape(len(steps), batch).T.contiguous())
