"""Gradients of the logits at the recorded attention maps, over the one forward graph."""

from typing import Callable, List, Optional, Sequence, Union, cast

import torch
from torch import Tensor

from captum_mm.capture.windows import concatenate_images


def attention_gradients(
    logits: Tensor,
    probs: Sequence[Union[Tensor, Sequence[Tensor]]],
    seeds: Tensor,
    retain_graph: bool = False,
    names: Optional[List[str]] = None,
    joins: Optional[Sequence[Callable[[Sequence[Tensor]], Tensor]]] = None,
) -> List[Tensor]:
    """``d(seed . logits)/dA`` for every map, ``[K, B, H, Nq, Nk]``; one (batched) backward pass. A map
    given as the tensors the forward used (one per image) gets their gradients concatenated, or joined by its
    entry of ``joins`` (each taking the parts' gradients, the batch at dimension -4; windows joined block-diagonally).

    Every map must be connected to the logits: a map autograd cannot reach (e.g. one captured
    inside a compiled graph) is an error, never a zero gradient."""
    names = names or [f"call {index}" for index in range(len(probs))]
    parts = [[p] if isinstance(p, Tensor) else list(p) for p in probs]
    unconnected = [name for name, tensors in zip(names, parts) if not all(t.requires_grad for t in tensors)]
    batched = seeds.shape[0] > 1
    if not unconnected:
        found = torch.autograd.grad(
            logits,
            [t for tensors in parts for t in tensors],
            grad_outputs=seeds if batched else seeds[0],
            is_grads_batched=batched,
            allow_unused=True,
            retain_graph=retain_graph,
        )
        unconnected = [name for name, gradient in zip(names, _regroup(found, parts)) if any(g is None for g in gradient)]
    if unconnected:
        raise RuntimeError(
            f"The explained output does not depend on the attention maps {unconnected} through autograd, so their "
            "gradients are unknown. forward_func must return the output of the model's own forward pass, not "
            "computed by a compiled (torch.compile) or detached copy."
        )
    joins = joins or [concatenate_images] * len(parts)
    grouped = [join(cast(List[Tensor], gradients)) for join, gradients in zip(joins, _regroup(found, parts))]
    return [gradient if batched else gradient[None] for gradient in grouped]


def _regroup(flat: Sequence[Optional[Tensor]], parts: List[List[Tensor]]) -> List[List[Optional[Tensor]]]:
    """``flat`` (one entry per part) back into one list per map."""
    grouped, start = [], 0
    for tensors in parts:
        grouped.append(list(flat[start : start + len(tensors)]))
        start += len(tensors)
    return grouped
