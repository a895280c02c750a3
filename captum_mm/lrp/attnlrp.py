"""AttnLRP's rules (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers",
ICML 2024; docs/METHOD.md, "AttnLRP") and its CP-LRP variant, as a :class:`~captum_mm.lrp.rules.RuleSet` of the
composable LRP: each rule a modified gradient (relevance ``x * g``), installed by
:func:`~captum_mm.lrp.composite.lrp_rules` as hooks on the unmodified model.

- linear layers: the epsilon rule, whose modified gradient is the plain gradient when ``epsilon`` is 0 (the ε-rule
  with ε → 0, as the reference's efficient mode computes it);
- attention: the uniform rule on both matmuls (``A · V``: half to ``A``, half to ``V``; ``Q K^T``: half to each),
  the softmax's rule at its input with bias (its plain gradient), the scores' scale and additive terms (mask,
  position biases) linear, a soft cap ``c tanh(s / c)`` (Gemma 2) by the identity rule; CP-LRP: ``A`` constant,
  ``V`` takes everything;
- normalisation: the division by the root mean square (standard deviation) constant: RMSNorm passes relevance
  through; LayerNorm's centering stays linear and its bias absorbs its share (:class:`DetachedNorm`);
- residual additions: the z-rule (each summand its share ``x / z``: the plain gradient), position embeddings added to
  a projection's input (DETR's) too;
- activations: the identity rule; gated products: half each (CP-LRP: the gate constant);
- mixtures of experts: each selected expert's term ``g_k E_k(x)`` half to each factor, the router weight's half through
  the renormalised softmax by the softmax's rule (its plain gradient), as LXT's; CP-LRP: the router weights constant.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from captum_mm._offload import forward_parameter
from captum_mm.lrp.rules import Epsilon, HalvedAttention, LinearRule, PassThrough, ProportionalResidual, RuleSet


class PlainLinear(LinearRule):
    """The epsilon rule with ``epsilon = 0`` in its exact form: ``g_x = g_out W`` (the bias absorbs its share)."""

    def weight_gradient(self, weight: Tensor, x: Tensor, out: Tensor, g_out: Tensor) -> Tensor:
        """``g_out @ weight`` for the linear map ``x @ weight.T`` (see :meth:`LinearRule.weight_gradient`)."""
        return g_out @ weight


class DetachedNorm(PassThrough):
    """LayerNorm with its standard deviation held constant: ``y = w (x - mean(x)) / sigma + b`` is then linear in
    ``x``, crossed by its transpose ``g_x = u - mean(u)``, ``u = w g_y / sigma``; the bias absorbs ``b g_y``.
    A module that is no ``nn.LayerNorm`` (an RMSNorm, whose relevance the division by a constant passes unchanged)
    takes the identity rule."""

    def module_gradient(self, module: nn.Module, x: Tensor, out: Tensor, g_out: Tensor) -> Tensor:
        """The modified gradient at the norm's input (see the class)."""
        if not isinstance(module, nn.LayerNorm):
            return self.input_gradient(x, out, g_out)
        dims = tuple(range(-len(module.normalized_shape), 0))
        sigma = (x.var(dim=dims, unbiased=False, keepdim=True) + module.eps).sqrt()
        weight = forward_parameter(module, "weight") if module.elementwise_affine else None
        u = g_out / sigma if weight is None else weight.to(g_out.dtype) * g_out / sigma
        return u - u.mean(dim=dims, keepdim=True)


class ZResidual(ProportionalResidual):
    """The z-rule on ``z = a + b``: each summand keeps its share ``a / z`` of the relevance (the plain gradient)."""

    def branch_gradients(self, a: Tensor, b: Tensor, g_z: Tensor) -> Tuple[Tensor, Tensor]:
        """``(g_z, g_z)``: relevance ``a g_z`` and ``b g_z``, which sum to ``z g_z``."""
        return g_z, g_z


@dataclass(frozen=True)
class UniformAttention(HalvedAttention):
    """``context = A V``, ``A = softmax(s Q K^T + bias)`` per head, by AttnLRP's rules: ``A V`` splits its relevance
    uniformly (``g_A = g V^T / 2``, ``g_V = A^T g / 2``); the softmax's modified gradient at the scores is its
    plain gradient ``A (g_A - sum_k A g_A)`` (its rule at the input with bias); the scores are linear in ``Q K^T``
    (factor ``s``: the bias terms absorb the rest), whose relevance splits uniformly
    (``g_Q = s g_S K / 2``, ``g_K = s g_S^T Q / 2``). Scores soft-capped before the mask, ``c tanh(u / c)`` with
    ``u = s Q K^T`` (Gemma 2), pass the capped part's relevance to ``u`` unchanged (the identity rule, as AttnLRP's for
    elementwise functions): ``g_u = g_S tanh(u / c) c / u``.

    Attributes:
        constant_attention (bool): CP-LRP: ``A`` is a constant, ``V`` takes the whole relevance
                    (``g_V = A^T g``), ``Q`` and ``K`` none. Default: False
    """

    constant_attention: bool = False
    reads_scaling = True

    def gradients(
        self, query: Tensor, key: Tensor, value: Tensor, probs: Tensor, g_context: Tensor, scaling: Optional[float] = None,
        cap: Optional[float] = None,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Head-split ``[B, H, N, d]`` tensors in; ``(g_query, g_key, g_value, R_A)`` out; ``scaling``: ``s``;
        ``cap``: the scores' soft cap ``c``."""
        share = 1.0 if self.constant_attention else 0.5
        g_probs = (g_context @ value.transpose(-1, -2)) * share
        relevance_probs = probs * g_probs
        g_value = probs.transpose(-1, -2) @ g_context * share
        if self.constant_attention:
            return torch.zeros_like(query), torch.zeros_like(key), g_value, relevance_probs
        if scaling is None:
            raise ValueError("AttnLRP's attention rule needs the factor of Q K^T in the scores, which this attention "
                             "module does not hold (as scaling, scale or attention_head_size).")
        g_scores = relevance_probs - probs * relevance_probs.sum(-1, keepdim=True)
        if cap is not None:
            g_scores = g_scores * soft_cap_ratio(query @ key.transpose(-1, -2) * scaling, cap)
        g_product = g_scores * (scaling / 2)
        return g_product @ key, g_product.transpose(-1, -2) @ query, g_value, relevance_probs


def soft_cap_ratio(scores: Tensor, cap: float) -> Tensor:
    """``c tanh(u / c) / u`` for the scores ``u`` (1 at ``u = 0``, its limit): the identity rule's modified gradient
    through the soft cap ``c tanh(u / c)``, per unit modified gradient at its output.

    Args:
        scores (Tensor): The uncapped scores ``u``.
        cap (float): The cap ``c``.

    Returns:
        *Tensor*: Shaped as ``scores``.
    """
    capped = torch.tanh(scores / cap) * cap
    return torch.where(scores == 0, torch.ones_like(scores), capped / torch.where(scores == 0, torch.ones_like(scores), scores))


def attnlrp_rules(epsilon: float = 0.0, constant_attention: bool = False) -> RuleSet:
    """AttnLRP's rule set (CP-LRP's with ``constant_attention``).

    Args:
        epsilon (float, optional): The linear layers' stabiliser (0: the exact gradient). Default: 0
        constant_attention (bool, optional): CP-LRP: attention maps and MLP gates held constant. Default: False

    Returns:
        *RuleSet*
    """
    linear = Epsilon(epsilon) if epsilon else PlainLinear()
    return RuleSet(linear=linear, pass_through=DetachedNorm(), residual=ZResidual(),
                   attention=UniformAttention(constant_attention), constant_gates=constant_attention, softmax_routers=True,
                   position_shares=True)
