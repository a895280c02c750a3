"""Dual-encoder heads (CLIP, and SigLIP-style ones): a batch of image-text pairs scored by the
scaled cosine similarity of their pooled embeddings, each image explained with its own text."""

from typing import Any, Tuple

import torch
from torch import Tensor, nn

from captum_mm.lrp.composite import LRPState, relevance_seed
from captum_mm.models.arguments import require
from captum_mm.models.targets import TargetSelection


def paired_targets(logits: Tensor, target: Any, family: str) -> TargetSelection:
    """The similarity of each image with its own text (``logits[b, b]``): one slot per pair."""
    require(
        target is None,
        f"{family} explains the similarity of each image with its own text (the pairs of the batch): "
        f"pass target=None, got {target!r}.",
    )
    pairs = torch.arange(logits.shape[0], device=logits.device)
    seeds = torch.zeros_like(logits)
    seeds[pairs, pairs] = 1.0
    return TargetSelection(seeds[None], pairs, torch.zeros_like(pairs), pairs, logits.detach()[pairs, pairs])


def cosine_lrp_start(
    state: LRPState, logits: Tensor, seeds: Tensor, projections: Tuple[nn.Linear, nn.Linear], scale: Tensor
) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
    """LRP enters each tower at its projected embedding (the outputs of ``projections``, image then
    text), the L2 normalisation passed through as LayerNorm is: dimension ``d`` of a pair's embeddings
    gets ``scale * x_d y_d / (|x| |y|)``, its share of the logit (the ordinary gradient would give
    shares summing to zero: the cosine is scale-invariant). Relevance per target sums to 1 in each tower."""
    image, text = (state.output_of(projection) for projection in projections)
    image_norm, text_norm = (t.detach().norm(dim=-1, keepdim=True) for t in (image, text))
    weights = relevance_seed(logits, seeds) * scale.detach()  # [K, images, texts]
    image_grad = torch.einsum("kij,jd->kid", weights, text.detach() / text_norm) / image_norm
    text_grad = torch.einsum("kij,id->kjd", weights, image.detach() / image_norm) / text_norm
    return (image, text), (image_grad, text_grad)
