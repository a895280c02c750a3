"""LRP rules as modified gradients.

Convention: at every tensor ``x`` of the graph the backward pass carries a
*modified gradient* ``g`` such that the relevance of ``x`` is ``x * g``. A rule
maps the modified gradient of a module's output to that of its inputs. Seeding
the backward with ``onehot / logits`` gives relevance 1 at the target logit.

The defaults are the rules of the reference implementation (docs/METHOD.md, "LRP
rules of the reference"): alpha=1, beta=0 for linear layers with the bias left
out of the denominator; LayerNorm, activations, softmax and dropout pass
relevance through; both operands of each attention matmul take half of the
z-rule relevance; residual additions split in proportion to each branch's total.
:class:`RuleSet` chooses among them per module.
"""

from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any, Callable, Optional, Tuple, TypeVar, Union, cast

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from captum_mm._offload import forward_parameter
from captum_mm._precision import exact
from captum_mm.lrp.quantized import dense_weight
from captum_mm.spec import LinearModule, TensorSource

STABILIZER = 1e-9


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / (denominator + 1e-9)``, and 0 where the denominator is exactly 0 (as the reference)."""
    shifted = denominator + STABILIZER
    shifted = torch.where(shifted == 0, torch.full_like(shifted, STABILIZER), shifted)
    return torch.where(denominator == 0, torch.zeros_like(numerator), numerator / shifted)


def per_sample_sum(tensor: Tensor) -> Tensor:
    """Sum over every dimension but the first, kept for broadcasting: ``[B, ...] -> [B, 1, ..., 1]``."""
    return tensor.sum(dim=tuple(range(1, tensor.dim())), keepdim=True)


def linear_weight(module: LinearModule) -> Tensor:
    """A linear module's weight as ``nn.Linear`` holds it, ``[out, in]`` (GPT-2's ``Conv1D`` transposed): the
    value its forward used, also where accelerate offloaded it (a meta tensor between forwards; read from the
    module's offloading hook's weights map), dequantized where the layer is quantized (:mod:`captum_mm.lrp.quantized`).

    Args:
        module (nn.Linear or Conv1D): The module.

    Returns:
        *Tensor*: ``[out, in]``.
    """
    weight = dense_weight(module, forward_parameter(module, "weight"))
    return weight.T if isinstance(module, Conv1D) else weight


class LinearRule:
    """How relevance crosses a linear module (``nn.Linear``, or GPT-2's ``Conv1D``): ``g_out`` at its
    output to ``g_x`` at its input. Read the weight with :func:`linear_weight`.

    ``x``, ``out`` and ``g_out`` come in float32 for a half-precision model, whose weights stay
    float16/bfloat16: cast them to ``x.dtype``.
    """

    def input_gradient(self, module: LinearModule, x: Tensor, out: Tensor, g_out: Tensor) -> Tensor:
        """The modified gradient at the linear layer's input ``x`` for the modified gradient ``g_out`` at its output
        (by default :meth:`weight_gradient` with the module's weight)."""
        return self.weight_gradient(linear_weight(module).to(x.dtype), x, out, g_out)

    def weight_gradient(self, weight: Tensor, x: Tensor, out: Tensor, g_out: Tensor) -> Tensor:
        """:meth:`input_gradient` for the linear map ``x @ weight.T`` (``weight`` ``[out, in]``, in ``x``'s dtype) of
        a layer that is no module (a mixture's experts, stored as one parameter).

        Args:
            weight (Tensor): ``[out, in]``.
            x (Tensor): The input ``[..., in]``.
            out (Tensor): The output ``[..., out]``.
            g_out (Tensor): The modified gradient at the output.

        Returns:
            *Tensor*: The modified gradient at ``x``.
        """
        raise NotImplementedError(f"{type(self).__name__} defines no weight_gradient (nor input_gradient): it cannot cross "
                                  "linear maps that are no modules, such as a mixture's experts.")


@dataclass(frozen=True)
class AlphaBeta(LinearRule):
    """The alpha-beta rule, bias left out: ``R_x = alpha * R_act - beta * R_inh``.

    ``R_act = x+ . W+^T (R / z) + x- . W-^T (R / z)`` with ``z = W+ x+ + W- x-``
    (positive contributions); ``R_inh`` swaps ``W+`` and ``W-``.

    Attributes:
        alpha (float): Weight of positive contributions. Default: 1
        beta (float): Weight of negative contributions. Default: 0
        conserve (bool): Rescale each sample's input relevance to its output total
                    (the reference's DETR linear layers do). Default: False
    """

    alpha: float = 1.0
    beta: float = 0.0

    conserve: bool = False

    def weight_gradient(self, weight: Tensor, x: Tensor, out: Tensor, g_out: Tensor) -> Tensor:
        """:meth:`input_gradient` for the linear map ``x @ weight.T`` (see :meth:`LinearRule.weight_gradient`)."""
        relevance = out * g_out
        positive, negative = x.clamp(min=0), x.clamp(max=0)
        w_positive, w_negative = weight.clamp(min=0), weight.clamp(max=0)

        def share(w_first: Tensor, w_second: Tensor) -> Tensor:
            ratio = safe_divide(relevance, positive @ w_first.T + negative @ w_second.T)
            return torch.where(x > 0, ratio @ w_first, ratio @ w_second)

        g_x = self.alpha * share(w_positive, w_negative)
        if self.beta:
            g_x = g_x - self.beta * share(w_negative, w_positive)
        if self.conserve:
            g_x = g_x * safe_divide(per_sample_sum(relevance), per_sample_sum(x * g_x))
        return g_x


@dataclass(frozen=True)
class Epsilon(LinearRule):
    """The epsilon rule: ``R_x = x . W^T (R / (z + epsilon * sign(z)))`` with ``z = W x + b``.

    Attributes:
        epsilon (float): The stabiliser. Default: 1e-6
    """

    epsilon: float = 1e-6

    def weight_gradient(self, weight: Tensor, x: Tensor, out: Tensor, g_out: Tensor) -> Tensor:
        """:meth:`input_gradient` for the linear map ``x @ weight.T`` (see :meth:`LinearRule.weight_gradient`)."""
        stabilized = out + self.epsilon * torch.where(out >= 0, 1.0, -1.0)
        return ((out * g_out) / stabilized) @ weight


class PassThrough:
    """An elementwise module whose input takes its output's relevance unchanged (LayerNorm, GELU, dropout)."""

    def input_gradient(self, x: Tensor, out: Tensor, g_out: Tensor) -> Tensor:
        """``out * g_out / x``: the output's relevance passed to the input unchanged."""
        return safe_divide(out * g_out, x)

    def module_gradient(self, module: nn.Module, x: Tensor, out: Tensor, g_out: Tensor) -> Tensor:
        """The modified gradient at ``module``'s input (a rule reading the module's parameters overrides this; by
        default :meth:`input_gradient`)."""
        return self.input_gradient(x, out, g_out)


class ProportionalResidual:
    """``z = a + b``: take ``a * R/z`` and ``b * R/z``, then rescale each branch so that it carries
    ``|sum a| / (|sum a| + |sum b|)`` of the total (sums per sample)."""

    def branch_gradients(self, a: Tensor, b: Tensor, g_z: Tensor) -> Tuple[Tensor, Tensor]:
        """The modified gradients at the two branches ``a`` and ``b`` of ``z = a + b`` for ``g_z`` at the sum."""
        total = per_sample_sum((a + b) * g_z)
        sum_a, sum_b = per_sample_sum(a * g_z), per_sample_sum(b * g_z)
        magnitude = sum_a.abs() + sum_b.abs()
        share_a = safe_divide(sum_a.abs(), magnitude) * total
        share_b = safe_divide(sum_b.abs(), magnitude) * total
        return g_z * safe_divide(share_a, sum_a), g_z * safe_divide(share_b, sum_b)


@dataclass(frozen=True)
class TanhGate:
    """A residual branch scaled by ``tanh(gate)`` (and by a per-token 0/1 ``row_mask``, ``[B, ..., N, 1]``, recorded at
    a module's argument) before the sum (Mllama's gated layers): a constant factor, so the residual rule splits the sum
    by the scaled branch and the branch's modified gradient carries the factor (relevance passes it proportionally).

    Attributes:
        gate (nn.Parameter): The gate, ``tanh`` taken.
        row_mask (TensorSource, optional): Where the per-token factor is read. Default: none
    """

    gate: nn.Parameter
    row_mask: Optional[TensorSource] = None

    def factor(self, get: Callable[[TensorSource], Any]) -> Tensor:
        """The factor, ``[B, N, 1]`` with a row mask (``get`` reads the recorded sources), else a scalar.

        Args:
            get (callable): The recorder's getter.

        Returns:
            *Tensor*
        """
        factor = exact(self.gate.detach()).tanh()
        mask = None if self.row_mask is None else get(self.row_mask)
        return factor if mask is None else factor * exact(mask).reshape(mask.shape[0], -1, 1)


@dataclass(frozen=True)
class LayerScale:
    """A residual branch scaled elementwise by a learned per-channel factor before the sum (InternViT's ``lambda_1`` and
    ``lambda_2``): a constant factor, handled as :class:`TanhGate`'s (the residual rule splits the sum by the scaled
    branch, the branch's modified gradient carries the factor).

    Attributes:
        scale (nn.Parameter): The factor, ``[hidden]``.
    """

    scale: nn.Parameter
    row_mask: Optional[TensorSource] = None  # none: the factor is the same for every token

    def factor(self, get: Callable[[TensorSource], Any]) -> Tensor:
        """The factor, ``[hidden]``.

        Args:
            get (callable): The recorder's getter (unused: the factor is the parameter).

        Returns:
            *Tensor*
        """
        return exact(self.scale.detach())


class HalvedAttention:
    """Attention ``context = A . V`` with ``A = softmax(Q K^T * scale + mask)``, per head.

    z-rule on ``A . V`` for both operands, each halved; ``R_A`` passes softmax, mask and
    scale unchanged to the scores; z-rule on ``Q K^T`` (unscaled), each operand halved.
    """

    #: The rule reads the factor of ``Q K^T`` in the scores and their soft cap (:attr:`~captum_mm.spec.AttentionParts.score_cap`):
    #: :meth:`gradients` then takes them as ``scaling=`` and ``cap=``.
    reads_scaling = False

    def gradients(
        self, query: Tensor, key: Tensor, value: Tensor, probs: Tensor, g_context: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Head-split ``[B, H, N, d]`` tensors in; ``(g_query, g_key, g_value, R_A)`` out."""
        relevance_probs = probs * (g_context @ value.transpose(-1, -2)) / 2
        g_value = probs.transpose(-1, -2) @ g_context / 2
        ratio = safe_divide(relevance_probs, query @ key.transpose(-1, -2))
        return ratio @ key / 2, ratio.transpose(-1, -2) @ query / 2, g_value, relevance_probs


#: A rule of any kind; its class says which modules it can apply to.
Rule = Union[LinearRule, PassThrough, ProportionalResidual, HalvedAttention]
#: A module class (``isinstance``), or a glob on the module's name in the model (``"*.layer.1.*"``).
ModuleMatch = Union[type, str]
R = TypeVar("R", LinearRule, PassThrough, ProportionalResidual, HalvedAttention)


@dataclass(frozen=True)
class RuleSet:
    """The rules an LRP pass applies, composed like Zennit's composites: a rule of each kind for every
    module, e.g. ``RuleSet(linear=Epsilon(1e-6))``, and ``modules``, rules for particular modules by
    class or name (the first entry whose match and kind fit wins).

    Kinds: linear rules apply to ``nn.Linear`` and ``Conv1D`` modules, pass-through rules to elementwise
    ones, attention rules to attention modules (by the module of their spec), residual rules to residual
    additions (by the module where the sum appears).

    Attributes:
        linear (LinearRule): For every linear module. Default: ``AlphaBeta()`` (the reference's)
        pass_through (PassThrough): For every elementwise module. Default: ``PassThrough()``
        residual (ProportionalResidual): For every residual addition. Default: ``ProportionalResidual()``
        attention (HalvedAttention): For every attention module. Default: ``HalvedAttention()``
        modules (tuple): ``(match, rule)`` pairs for particular modules, by class or a glob on their names.
        constant_gates (bool): Gated products (:class:`~captum_mm.lrp.canonizers.GatedProduct`) treat the gate as a
                    constant: the up factor takes the whole relevance (CP-LRP); so do mixtures of experts
                    (:class:`~captum_mm.lrp.mixture.SparseMixture`) their router weights and experts' gates. Default:
                    False (half each)
        softmax_routers (bool): A mixture's router weights pass their relevance through their renormalisation and
                    softmax by the softmax's rule at its input (AttnLRP's), not unchanged (the reference's). Default: False
        position_shares (bool): A position embedding added to a projection's input
                    (:class:`~captum_mm.lrp.canonizers.PositionEmbeddingInput`, DETR's) takes its share of the sum
                    (AttnLRP's z-rule), not none (the reference's). Default: False
    """

    linear: LinearRule = AlphaBeta()
    pass_through: PassThrough = PassThrough()
    residual: ProportionalResidual = ProportionalResidual()
    attention: HalvedAttention = HalvedAttention()
    modules: Tuple[Tuple[ModuleMatch, Rule], ...] = ()
    constant_gates: bool = False
    softmax_routers: bool = False
    position_shares: bool = False

    def override(self, match: ModuleMatch, rule: Rule) -> "RuleSet":
        """A copy in which ``rule`` applies to the modules ``match`` selects (ahead of earlier entries)."""
        return replace(self, modules=((match, rule), *self.modules))

    def for_module(self, name: str, module: nn.Module, default: R) -> R:
        """The rule of ``default``'s kind for ``module`` (named ``name`` in the model)."""
        kind = next(k for k in (LinearRule, PassThrough, ProportionalResidual, HalvedAttention) if isinstance(default, k))
        for match, rule in self.modules:
            fits = isinstance(module, match) if isinstance(match, type) else fnmatchcase(name, match)
            if fits and isinstance(rule, kind):
                return cast(R, rule)
        return default
