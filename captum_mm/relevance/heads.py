"""Head fusion: one ``[..., N_query, N_key]`` map from per-head maps ``[..., H, N_query, N_key]``."""

from typing import Optional

from torch import Tensor


def gradient_weighted(probs: Tensor, grads: Tensor) -> Tensor:
    """Eq. 5: ``mean_h((grad A * A)^+)`` -- positive part per head and element, then the head mean.

    Args:
        probs (Tensor): ``[..., H, Nq, Nk]`` the attention probabilities ``A``.
        grads (Tensor): Their gradients, the same shape.

    Returns:
        *Tensor*: ``[..., Nq, Nk]``.
    """
    return (grads * probs).clamp(min=0).mean(dim=-3)


def head_mean(probs: Tensor) -> Tensor:
    """Plain head mean, as raw attention and rollout use it.

    Args:
        probs (Tensor): ``[..., H, Nq, Nk]``.

    Returns:
        *Tensor*: ``[..., Nq, Nk]``.
    """
    return probs.mean(dim=-3)


def grad_cam(probs: Tensor, grads: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """Attention Grad-CAM: head weight = mean gradient over the map; ``(mean_h(w_h A_h))^+``.

    Args:
        probs (Tensor): ``[..., H, Nq, Nk]`` the attention probabilities.
        grads (Tensor): Their gradients, the same shape.
        valid (Tensor, optional): ``[..., Nq, Nk]`` the entries between real tokens that the explained element
                    sees: the mean runs over them only, so a padded sample gets the weights it gets alone, and a
                    generated token weights that no later token changes. Default: None (every entry)

    Returns:
        *Tensor*: ``[..., Nq, Nk]``.
    """
    if valid is None:
        weights = grads.mean(dim=(-2, -1), keepdim=True)
    else:
        valid = valid.unsqueeze(-3).to(grads.dtype)
        weights = (grads * valid).sum(dim=(-2, -1), keepdim=True) / valid.sum(dim=(-2, -1), keepdim=True).clamp(min=1)
    return weighted_head_mean(weights, probs)


def weighted_head_mean(weights: Tensor, probs: Tensor) -> Tensor:
    """``(mean_h(w_h A_h))^+``.

    Args:
        weights (Tensor): ``[..., H, 1, 1]`` one weight per head.
        probs (Tensor): ``[..., H, Nq, Nk]``.

    Returns:
        *Tensor*: ``[..., Nq, Nk]``.
    """
    return (weights * probs).mean(dim=-3).clamp(min=0)


def relevance_weighted(relevance: Tensor, grads: Tensor) -> Tensor:
    """Eq. 13: ``mean_h((grad A * R_A)^+)`` with ``R_A`` the LRP relevance at the map ("Ours w/ LRP").

    Args:
        relevance (Tensor): ``[..., H, Nq, Nk]`` the LRP relevance ``R_A``.
        grads (Tensor): The gradients of ``A``, the same shape.

    Returns:
        *Tensor*: ``[..., Nq, Nk]``.
    """
    return gradient_weighted(relevance, grads)
