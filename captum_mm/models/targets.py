"""What is explained: target options, and the selected elements as seeds of a backward pass."""

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor


@dataclass(frozen=True)
class TargetOptions:
    r"""Options of target selection, checked when made (families that select no queries ignore them).

    Args:
        threshold (float, optional): DETR: with ``target=None``, the queries whose best class ("no object"
                    excluded) has probability above it are explained (Algorithm 1). In ``[0, 1)``.
                    Default: 0.5
        single (bool, optional): DETR: one query per image (``attribute`` returns one attribution per
                    input); with ``target=None`` each image's most confident query, whatever ``threshold``.
                    Default: False
    """

    threshold: float = 0.5
    single: bool = False

    def __post_init__(self) -> None:
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}.")
        if not isinstance(self.single, bool):
            raise ValueError(f"single must be a bool, got {self.single!r}.")


@dataclass
class TargetSelection:
    """The predictions to explain, as seeds for one (possibly batched) backward pass.

    Attributes:
        grad_outputs (Tensor): ``[K, *logits.shape]`` one-hot seeds, one slot per
                    backward; slot ``k`` of sample ``b`` seeds element ``(k, b)``.
        sample (Tensor): ``[E]`` sample index of every explained element.
        slot (Tensor): ``[E]`` slot index of every explained element.
        classes (Tensor): ``[E]`` explained class of every element.
        queries (Tensor, optional): ``[E]`` explained DETR query of every element.
        positions (Tensor, optional): ``[E]`` position in the model's sequence of every explained
                    generated token (it is predicted from the position before).
        scores (Tensor): ``[E]`` probability of the explained class.
    """

    grad_outputs: Tensor
    sample: Tensor
    slot: Tensor
    classes: Tensor
    scores: Tensor
    queries: Optional[Tensor] = None
    positions: Optional[Tensor] = None

    @property
    def several_per_sample(self) -> bool:
        """Whether a sample can have several elements (DETR queries, generated tokens)."""
        return self.queries is not None or self.positions is not None

    @property
    def num_elements(self) -> int:
        return int(self.sample.numel())


def _class_targets(target: Any, batch_size: int) -> Tensor:
    if isinstance(target, Tensor) and (target.is_floating_point() or target.is_complex()):
        if not torch.equal(target, target.real.round()):
            raise ValueError(
                f"target {target.tolist()} has non-integral values: a class target is an integer "
                "(an int, a list of ints or an integer tensor)."
            )
        target = target.real.long()
    if isinstance(target, Tensor):
        if target.numel() == 1:
            return target.reshape(1).long().expand(batch_size)
        if target.dim() == 1 and target.numel() == batch_size:
            return target.long()
    elif isinstance(target, int):
        return torch.full((batch_size,), target, dtype=torch.long)
    elif isinstance(target, list) and len(target) == batch_size and all(isinstance(t, int) for t in target):
        return torch.tensor(target, dtype=torch.long)
    raise ValueError(
        f"Unsupported target {target!r} for {batch_size} samples: pass None (each sample's predicted "
        "class), an int, a list of ints or a 1-D tensor with one class per sample."
    )


def select_class_targets(logits: Tensor, target: Any) -> TargetSelection:
    """Targets of a classifier with logits ``[B, C]``: one element per sample."""
    if logits.dim() != 2:
        raise ValueError(f"Expected classifier logits of shape [batch, classes], got {tuple(logits.shape)}.")
    batch_size, num_classes = logits.shape
    classes = logits.argmax(dim=-1) if target is None else _class_targets(target, batch_size).to(logits.device)
    if classes.numel() and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"target {classes.tolist()} out of range: the model has {num_classes} classes (0..{num_classes - 1}).")
    grad_outputs = torch.zeros_like(logits).scatter_(1, classes[:, None], 1.0)[None]
    samples = torch.arange(batch_size, device=logits.device)
    scores = logits.detach().softmax(-1)[samples, classes]
    return TargetSelection(grad_outputs, samples, torch.zeros_like(samples), classes, scores)
