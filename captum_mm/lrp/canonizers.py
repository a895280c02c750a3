"""Canonizers: model-specific blocks shown to LRP in a canonical form while the rules are installed.

As Zennit's canonizers do, a canonizer makes a block that the generic rules would treat wrongly
look like one they treat right -- but through hooks only: the model's modules and parameters are
never touched, and every hook is removed when the rules are (also on error). An adapter declares
its canonizers in :class:`~captum_mm.lrp.composite.LRPStructure`.
"""

import inspect
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from captum_mm._precision import exact
from captum_mm.lrp.rules import RuleSet, safe_divide
from captum_mm.lrp.switch import Mode, Switch
from captum_mm.spec import TensorSource


class Canonizer:
    """One model-specific block. ``sources`` are the forward tensors it reads (recorded for it);
    ``register`` installs its hooks, which route relevance through :class:`Switch` es reading ``mode``."""

    def sources(self) -> List[TensorSource]:
        """The forward tensors the canonizer's rule reads (recorded for it)."""
        return []

    def register(self, mode: Mode, recorded: Callable[[TensorSource], Tensor]) -> List[RemovableHandle]:
        """Install the canonizer's hooks on the model; their handles (removed on exit)."""
        raise NotImplementedError

    def under(self, rules: RuleSet) -> "Canonizer":
        """The canonizer as ``rules`` have it (its own rule options set from them); by default itself.

        Args:
            rules (RuleSet): The installed rules.

        Returns:
            *Canonizer*
        """
        return self


@dataclass(frozen=True)
class PositionEmbeddingInput(Canonizer):
    """``linear``'s input is ``source`` plus a position embedding (DETR's queries and keys): the relevance goes to
    ``source`` alone, the position embedding receives none.

    Attributes:
        linear (nn.Linear): The projection reading the sum.
        source (TensorSource): Where the content part of its input comes from.
        content_only (bool): The position embedding receives none; False: the sum's z-rule, each summand its share
                    (the plain gradient: no hook), where the rule set says so (AttnLRP's). Default: True
    """

    linear: nn.Linear
    source: TensorSource
    content_only: bool = True

    def under(self, rules: RuleSet) -> "PositionEmbeddingInput":
        """Each summand its share where ``rules`` give position embeddings theirs (``RuleSet.position_shares``)."""
        return replace(self, content_only=False) if rules.position_shares else self

    def sources(self) -> List[TensorSource]:
        """The forward tensors the canonizer's rule reads (recorded for it)."""
        return [self.source] if self.content_only else []

    def register(self, mode: Mode, recorded: Callable[[TensorSource], Tensor]) -> List[RemovableHandle]:
        """Install the canonizer's hooks on the model; their handles (removed on exit)."""
        if not self.content_only:
            return []

        def hook(module: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
            x, origin = args[0], recorded(self.source)
            rule = lambda g: (safe_divide(exact(x) * g, exact(origin)),)  # noqa: E731
            return (Switch.apply(x, mode, rule, origin),) + tuple(args[1:])

        return [self.linear.register_forward_pre_hook(hook)]


@dataclass(frozen=True)
class GatedProduct(Canonizer):
    """``consumer``'s input is the product ``gate * up`` of a gated MLP (``down(act(gate(x)) * up(x))``;
    the consumer is ``down``, or a dropout before it): each factor takes half of the product's relevance
    (AttnLRP's uniform rule for a product), which the ordinary gradient would give in full to both.

    Attributes:
        consumer (nn.Module): The module reading the product.
        gate (TensorSource): Where ``act(gate(x))`` appears (the activation's output).
        up (TensorSource): Where ``up(x)`` appears (the up projection's output).
        fused (bool): ``up`` is one projection whose output holds the gate's input and ``up(x)`` concatenated on
                    the last dimension, in this order (Phi-3's ``gate_up_proj``): the up factor is its second half,
                    whose modified gradient goes there (the first half's comes through the activation). Default: False
        constant_gate (bool): The gate is a constant (CP-LRP): the up factor takes the whole relevance, the gate none.
                    Default: False
    """

    consumer: nn.Module
    gate: TensorSource
    up: TensorSource
    fused: bool = False
    constant_gate: bool = False

    def under(self, rules: RuleSet) -> "GatedProduct":
        """The gate constant where ``rules`` hold gates constant (CP-LRP)."""
        return replace(self, constant_gate=True) if rules.constant_gates else self

    def sources(self) -> List[TensorSource]:
        """The forward tensors the canonizer's rule reads (recorded for it)."""
        return [self.gate, self.up]

    def register(self, mode: Mode, recorded: Callable[[TensorSource], Tensor]) -> List[RemovableHandle]:
        """Install the canonizer's hooks on the model; their handles (removed on exit)."""
        def hook(module: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
            gate, projected = recorded(self.gate), recorded(self.up)
            up = projected.chunk(2, dim=-1)[1] if self.fused else projected

            def rule(g: Tensor) -> Tuple[Tensor, Tensor]:
                share = 1.0 if self.constant_gate else 0.5
                g_up = exact(gate) * g * share
                g_gate = exact(up) * g * (1 - share)
                return g_gate, torch.cat((torch.zeros_like(g_up), g_up), dim=-1) if self.fused else g_up

            return (Switch.apply(args[0], mode, rule, gate, projected),) + tuple(args[1:])

        return [self.consumer.register_forward_pre_hook(hook)]


@dataclass(frozen=True)
class FunctionalActivation(Canonizer):
    """``consumer``'s ``argument`` is ``act(source)`` for an elementwise activation the model applies as a function
    (no module to hook: Whisper's convolutional stem, ``gelu(conv(x))``), with its last two dimensions swapped where
    ``transposed``, plus ``added`` where given (a position embedding): the activation takes the identity rule of the
    activation modules (``R_source = R_act``), ``added`` keeps its share ``added * g`` (the z-rule).

    Attributes:
        consumer (nn.Module): The module reading the activation.
        argument (str): Its argument holding it.
        source (TensorSource): Where the activation's input appears.
        transposed (bool): The argument is the activation with its last two dimensions swapped. Default: False
        added (TensorSource, optional): A term added to the activation before the consumer. Default: None
    """

    consumer: nn.Module
    argument: str
    source: TensorSource
    transposed: bool = False
    added: Optional[TensorSource] = None

    def sources(self) -> List[TensorSource]:
        """The forward tensors the canonizer's rule reads (recorded for it)."""
        return [self.source] + ([self.added] if self.added is not None else [])

    def register(self, mode: Mode, recorded: Callable[[TensorSource], Tensor]) -> List[RemovableHandle]:
        """Install the canonizer's hooks on the model; their handles (removed on exit)."""
        signature = inspect.signature(self.consumer.forward)

        def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
            bound = signature.bind(*args, **kwargs)
            x, source = bound.arguments[self.argument], recorded(self.source)
            added = recorded(self.added) if self.added is not None else torch.zeros((), dtype=x.dtype, device=x.device)
            flip = (lambda t: t.transpose(-1, -2)) if self.transposed else (lambda t: t)  # noqa: E731

            def rule(g: Tensor) -> Tuple[Tensor, Tensor]:
                activation = flip(exact(x) - exact(added))
                return safe_divide(activation * flip(g), exact(source)), g.sum_to_size(added.shape)

            bound.arguments[self.argument] = Switch.apply(x, mode, rule, source, added)
            return bound.args, bound.kwargs

        return [self.consumer.register_forward_pre_hook(hook, with_kwargs=True, prepend=True)]  # before what reads it
