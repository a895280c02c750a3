"""Scoring captum_mm's token-level attributions with Captum's ``infidelity`` and ``sensitivity_max``.

``infidelity`` needs inputs whose perturbation ``I`` makes ``I . attribution`` comparable
with the change of the output. Here the inputs are each modality's *presence*
(its attention mask, as floats): removing a random subset of tokens sets their
presence to 0, so ``I`` is the indicator of the removed tokens and
``I . relevance`` the relevance they carried, while the model sees those tokens
dropped (masked out).
"""

from typing import Any, Callable, Mapping, Sequence, Tuple

import torch
from torch import Tensor

from captum_mm.metrics.perturbation import TokenGroup, _token_mask


def presence_inputs(
    forward_func: Callable[..., Tensor], batch: Mapping[str, Any], groups: Sequence[TokenGroup]
) -> Tuple[Callable[..., Tensor], Tuple[Tensor, ...]]:
    """A forward function of the groups' presence masks, and the unperturbed presences.

    Args:
        forward_func (Callable): Called with ``batch``'s keyword arguments; returns logits.
        batch (Mapping[str, Any]): The model's keyword arguments, batch first.
        groups (sequence of TokenGroup): The modalities whose tokens can be removed.

    Returns:
        ``(forward, presences)``: ``forward(*presences)`` runs the model with each group's
        mask replaced by the given presence; ``presences`` are the ``[B, N]`` float masks.
        Pass the explanation's per-token relevance, in the same order, as attributions.
    """
    presences = tuple(_token_mask(batch, group).to(torch.get_default_dtype()) for group in groups)

    def forward(*presence: Tensor) -> Tensor:
        repeats = presence[0].shape[0] // presences[0].shape[0]  # captum expands the batch
        expanded = {
            name: value.repeat_interleave(repeats, 0) if isinstance(value, Tensor) and value.dim() else value
            for name, value in batch.items()
        }
        for group, value in zip(groups, presence):
            mask = expanded.get(group.mask)
            expanded[group.mask] = value.to(mask.dtype) if isinstance(mask, Tensor) else value.long()
        return forward_func(**expanded)

    return forward, presences


def token_removal(groups: Sequence[TokenGroup], probability: float = 0.25, seed: int = 0) -> Callable:
    """A ``perturb_func`` for ``captum.metrics.infidelity`` on presence inputs: each real token
    (never a group's protected ``[CLS]``/``[SEP]``) is removed with ``probability``.

    Returns ``(perturbations, perturbed_inputs)``: the removal indicators and the presences
    without the removed tokens.
    """
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}.")
    generator = torch.Generator().manual_seed(seed)

    def perturb(presences):
        presences = presences if isinstance(presences, tuple) else (presences,)
        removed = []
        for group, presence in zip(groups, presences):
            draw = torch.rand(presence.shape, generator=generator).to(presence.device) < probability
            if group.keep_ends:
                lengths = (presence > 0).long().sum(1)
                draw[:, 0] = False
                draw[torch.arange(presence.shape[0]), (lengths - 1).clamp(min=0)] = False
            removed.append(draw & (presence > 0))
        perturbations = tuple(r.to(p.dtype) * p for r, p in zip(removed, presences))
        perturbed = tuple(p - i for p, i in zip(presences, perturbations))
        return perturbations, perturbed

    return perturb


def feature_noise(index: int, radius: float = 0.02, seed: int = 0) -> Callable:
    """A ``perturb_func`` for ``captum.metrics.sensitivity_max``: uniform noise in
    ``[-radius, radius]`` on input ``index`` (e.g. the image features) only."""
    generator = torch.Generator().manual_seed(seed)

    def perturb(inputs):
        noisy = list(inputs) if isinstance(inputs, tuple) else [inputs]
        noise = (torch.rand(noisy[index].shape, generator=generator) * 2 - 1) * radius
        noisy[index] = noisy[index] + noise.to(noisy[index])
        return tuple(noisy) if len(noisy) > 1 else noisy[0]

    return perturb
