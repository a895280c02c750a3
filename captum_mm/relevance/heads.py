"""Head fusion: one ``[..., N_query, N_key]`` map from per-head maps ``[..., H, N_query, N_key]``."""

from torch import Tensor


def gradient_weighted(probs: Tensor, grads: Tensor) -> Tensor:
    """Eq. 5: ``mean_h((grad A * A)^+)`` -- positive part per head and element, then the head mean."""
    return (grads * probs).clamp(min=0).mean(dim=-3)


def head_mean(probs: Tensor) -> Tensor:
    """Plain head mean, as raw attention and rollout use it."""
    return probs.mean(dim=-3)


def grad_cam(probs: Tensor, grads: Tensor) -> Tensor:
    """Attention Grad-CAM: head weight = mean gradient over the map; ``(mean_h(w_h A_h))^+``."""
    weights = grads.mean(dim=(-2, -1), keepdim=True)
    return (weights * probs).mean(dim=-3).clamp(min=0)


def relevance_weighted(relevance: Tensor, grads: Tensor) -> Tensor:
    """Eq. 13: ``mean_h((grad A * R_A)^+)`` with ``R_A`` the LRP relevance at the map."""
    return gradient_weighted(relevance, grads)
