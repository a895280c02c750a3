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
that hands the modified gradient straight to its input; their linear maps take ``linear`` (the reference's
``AlphaBeta()``), whatever rule a :class:`~captum_mm.lrp.rules.RuleSet` gives linear modules.
"""

from dataclasses import dataclass
from typing import Any, Callable, List, Tuple, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from captum_mm._offload import forward_parameter
from captum_mm._precision import exact
from captum_mm.lrp.canonizers import Canonizer
from captum_mm.lrp.rules import AlphaBeta, safe_divide
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
        linear (AlphaBeta): The rule of the experts' and router's linear maps. Default: ``AlphaBeta()``
    """

    block: nn.Module
    router: nn.Module
    experts: nn.Module
    linear: AlphaBeta = AlphaBeta()

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
        each expert's term ``g_k E_k(x)`` hands each of its factors, ``[T, E]`` (zero for unselected experts).

        Args:
            x (Tensor): The tokens ``[T, D]``.
            logits (Tensor): The router's logits ``[T, E]``.
            weights (Tensor): The selected experts' weights ``[T, k]``.
            indices (Tensor): The selected experts ``[T, k]``.
            g (Tensor): The modified gradient at the block's output ``[T, D]``.

        Returns:
            *(Tensor, Tensor)*: ``g_x`` ``[T, D]`` and the half-term relevance ``[T, E]``.
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
        router = forward_parameter(self.router, "weight").to(x.dtype)
        g_x = g_x + self.linear.weight_gradient(router, x, logits, safe_divide(half, logits))
        return g_x, half

    def _expert_gradient(self, x: Tensor, gate_up: Tensor, down: Tensor, weight: Tensor, g: Tensor) -> Tuple[Tensor, Tensor]:
        """One expert's tokens: the modified gradient at them through ``E(x)``'s half, and the relevance of that half."""
        projected = x @ gate_up.T
        gate, up = projected.chunk(2, dim=-1)
        activated = cast(nn.Module, self.experts.act_fn).forward(gate)  # its hooks (LRP's pass-through) not run
        hidden = activated * up
        out = hidden @ down.T
        g_out = weight[:, None] * g / 2  # the term's half at E(x)
        g_hidden = self.linear.weight_gradient(down, hidden, out, g_out)
        g_gate = safe_divide(activated * up * g_hidden / 2, gate)  # the product's half, through the activation
        g_x = self.linear.weight_gradient(gate_up, x, projected, torch.cat((g_gate, activated * g_hidden / 2), dim=-1))
        return g_x, (out * g_out).sum(-1)
