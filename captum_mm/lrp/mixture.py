"""Sparse mixture-of-experts blocks (Mixtral's, Qwen3-MoE's) under LRP.

The block computes, per token, ``sum_k g_k E_k(x)`` over the ``k`` experts its router selects, ``g_k`` the router's
weight of expert ``k`` (softmax over the experts' logits, taken at the top ``k``, optionally renormalised to sum to
1) and ``E_k`` a gated MLP ``down(act(gate) * up)`` whose ``gate`` and ``up`` come from one ``gate_up`` map. Each
term is a product (docs/METHOD.md, "Mixture of experts"): its relevance splits in half between ``g_k`` and
``E_k(x)``, as the gated product's (AttnLRP's uniform rule; LXT does the same). ``E_k(x)`` then takes the linear
rule through ``down`` and ``gate_up`` and the gated product's halves (the activation passing relevance through);
``g_k``'s half passes the renormalisation and the softmax unchanged (as the attention softmax does) to the expert's
router logit, and the router's linear map takes the linear rule back to ``x``. Unselected experts get no relevance.
The experts are no modules (3-D parameters ``[experts, out, in]``), so the rule is one switch at the block's output
that hands the modified gradient straight to its input; their linear maps take the rule a
:class:`~captum_mm.lrp.rules.RuleSet` gives linear modules (the reference's ``AlphaBeta()`` by default).

AttnLRP (:func:`~captum_mm.lrp.attnlrp.attnlrp_rules`, as LXT's): the same halves, the linear maps by the epsilon rule,
and ``g_k``'s half through the renormalisation and the softmax by the softmax's rule at its input (their plain
gradient). CP-LRP: the router weights and the experts' gates constant, each term's relevance all to ``E_k(x)``.
"""

from dataclasses import dataclass, replace
from typing import Any, Callable, List, Tuple, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from captum_mm._offload import forward_parameter
from captum_mm._precision import exact
from captum_mm.lrp.canonizers import Canonizer
from captum_mm.lrp.rules import AlphaBeta, LinearRule, RuleSet, safe_divide
from captum_mm.lrp.switch import Mode, Switch
from captum_mm.spec import TensorSource


@dataclass(frozen=True)
class SparseMixture(Canonizer):
    """A sparse mixture-of-experts block: its output's relevance to its input through the selected experts (half
    of each term) and the router (the other half).

    Attributes:
        block (nn.Module): The block; its first argument is the tokens ``[..., D]``, its output their mixture.
        router (nn.Module): Its router: ``weight`` ``[E, D]``, output ``(logits [T, E], weights [T, k], indices [T, k])``.
        experts (nn.Module): Its experts: ``gate_up_proj`` ``[E, 2I, D]``, ``down_proj`` ``[E, D, I]``, ``act_fn``.
        linear (LinearRule): The rule of the experts' and router's linear maps (one with ``weight_gradient``); the
                    rule set's linear rule while rules are installed (:meth:`under`). Default: ``AlphaBeta()``
        softmax_router (bool): The router weights' half crosses the renormalisation and the softmax by the softmax's
                    rule at its input (their plain gradient, AttnLRP's), not unchanged. Default: False
        constant_gates (bool): The router weights and the experts' gates are constants (CP-LRP): each expert's term
                    and its up factor take the whole relevance, the router and the gates none. Default: False
    """

    block: nn.Module
    router: nn.Module
    experts: nn.Module
    linear: LinearRule = AlphaBeta()
    softmax_router: bool = False
    constant_gates: bool = False

    def under(self, rules: RuleSet) -> "SparseMixture":
        """This block under ``rules``: their linear rule, router rule and constant gates."""
        return replace(self, linear=rules.linear, softmax_router=rules.softmax_routers, constant_gates=rules.constant_gates)

    def sources(self) -> List[TensorSource]:
        """The router's logits, weights and selected experts (recorded for the rule)."""
        return [TensorSource(self.router, index=index) for index in range(3)]

    def register(self, mode: Mode, recorded: Callable[[TensorSource], Tensor]) -> List[RemovableHandle]:
        """Install the canonizer's hooks on the model; their handles (removed on exit)."""
        def hook(module: nn.Module, args: Tuple[Any, ...], output: Tensor) -> Tensor:
            x = args[0]
            logits, weights, indices = (recorded(source) for source in self.sources())
            routed = (exact(x).reshape(-1, x.shape[-1]), exact(logits), exact(weights), indices)

            def rule(g: Tensor) -> Tuple[Tensor]:
                g_x, _ = self.input_gradient(*routed, g.reshape(-1, g.shape[-1]))
                return (g_x.reshape(x.shape),)

            return Switch.apply(output, mode, rule, x)

        return [self.block.register_forward_hook(hook, prepend=True)]

    def input_gradient(self, x: Tensor, logits: Tensor, weights: Tensor, indices: Tensor, g: Tensor) -> Tuple[Tensor, Tensor]:
        """The modified gradient at the block's tokens ``x`` ``[T, D]`` for ``g`` at its output, and the relevance
        each expert's term ``g_k E_k(x)`` hands the router weight ``g_k``, ``[T, E]`` (zero for unselected experts).

        Args:
            x (Tensor): The tokens ``[T, D]``.
            logits (Tensor): The router's logits ``[T, E]``.
            weights (Tensor): The selected experts' weights ``[T, k]``.
            indices (Tensor): The selected experts ``[T, k]``.
            g (Tensor): The modified gradient at the block's output ``[T, D]``.

        Returns:
            *(Tensor, Tensor)*: ``g_x`` ``[T, D]`` and the router weights' relevance ``[T, E]``.
        """
        gate_up = forward_parameter(self.experts, "gate_up_proj").to(x.dtype)
        down = forward_parameter(self.experts, "down_proj").to(x.dtype)
        g_x, halves = torch.zeros_like(g), [torch.zeros_like(g[:, 0])] * logits.shape[-1]
        for expert in indices.unique().tolist():
            tokens, slots = torch.where(indices == expert)
            g_tokens, g_expert = self._expert_gradient(x[tokens], gate_up[expert], down[expert], weights[tokens, slots], g[tokens])
            g_x = g_x.index_add(0, tokens, g_tokens)
            halves[expert] = halves[expert].index_add(0, tokens, g_expert)
        half = torch.stack(halves, dim=-1)
        if self.constant_gates:
            return g_x, torch.zeros_like(half)
        router = forward_parameter(self.router, "weight").to(x.dtype)
        g_x = g_x + self.linear.weight_gradient(router, x, logits, self._router_gradient(logits, weights, indices, half))
        return g_x, half

    def _router_gradient(self, logits: Tensor, weights: Tensor, indices: Tensor, half: Tensor) -> Tensor:
        """The modified gradient at the router's logits for the relevance ``half`` ``[T, E]`` of its weights: passed
        unchanged, or by the softmax's rule at its input, ``g_l = R - q sum_k R_k``, ``q`` the renormalised weights
        (the softmax over the selected logits; zero elsewhere) or, not renormalised, the softmax of all logits."""
        if not self.softmax_router:
            return safe_divide(half, logits)
        if getattr(self.router, "norm_topk_prob", True):
            probs = torch.zeros_like(half).scatter(1, indices, weights.to(half.dtype))
        else:
            probs = torch.softmax(logits.to(half.dtype), dim=-1)
        return half - probs * half.sum(-1, keepdim=True)

    def _expert_gradient(self, x: Tensor, gate_up: Tensor, down: Tensor, weight: Tensor, g: Tensor) -> Tuple[Tensor, Tensor]:
        """One expert's tokens: the modified gradient at them through ``E(x)``'s share, and the relevance of the
        router weight's share."""
        share = 1.0 if self.constant_gates else 0.5
        projected = x @ gate_up.T
        gate, up = projected.chunk(2, dim=-1)
        activated = cast(nn.Module, self.experts.act_fn).forward(gate)  # its hooks (LRP's pass-through) not run
        hidden = activated * up
        out = hidden @ down.T
        g_out = weight[:, None] * g * share  # the term's share at E(x)
        g_hidden = self.linear.weight_gradient(down, hidden, out, g_out)
        g_gate = safe_divide(activated * up * g_hidden * (1 - share), gate)  # the product's share, through the activation
        g_x = self.linear.weight_gradient(gate_up, x, projected, torch.cat((g_gate, activated * g_hidden * share), dim=-1))
        return g_x, (out * weight[:, None] * g * (1 - share)).sum(-1)
