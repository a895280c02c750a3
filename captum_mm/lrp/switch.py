"""The switch every LRP rule site is routed through, and the recorder of the tensors rules read.

A :class:`Switch` returns its input unchanged and, on the way back, either passes the ordinary
gradient on (*gradient mode*) or hands its rule's modified gradients straight to the rule's inputs
(*relevance mode*), as the shared :class:`Mode` says.
"""

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_mm._handles import ForwardHook, KwargsPreHook
from captum_mm._precision import accumulation_dtype
from captum_mm.spec import LinearModule, TensorSource


class Mode:
    """The flag every switch reads. It holds no tensor: the autograd contexts keeping it then form no
    reference cycle with the graph (a cycle through a C++ autograd node is invisible to Python's
    garbage collector, so the whole graph would leak with every call)."""

    __slots__ = ("relevance",)

    def __init__(self) -> None:
        self.relevance = False


class Switch(torch.autograd.Function):
    """``output`` unchanged; backward: gradient to ``output``, or ``rule(g)`` to ``inputs``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(output: Tensor, mode: Mode, rule: Callable[[Tensor], Tuple[Tensor, ...]], *inputs: Tensor) -> Tensor:
        return output.view_as(output)

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tensor) -> None:
        ctx.mode, ctx.rule, ctx.count = inputs[1], inputs[2], len(inputs) - 3

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        if ctx.mode.relevance:
            return (None, None, None, *ctx.rule(grad.to(accumulation_dtype(grad.dtype))))  # no detach under vmap
        return (grad, None, None) + (None,) * ctx.count


class Recorder:
    """The latest tensors of the sources rule sites read, per forward call."""

    def __init__(self) -> None:
        self.values: Dict[Tuple[int, Optional[str], Optional[int]], Tensor] = {}

    def get(self, source: TensorSource) -> Tensor:
        return self.values[(id(source.module), source.argument, source.index)]

    def hooks(self, sources: List[TensorSource]) -> List[Any]:
        handles = []
        for source in {(id(s.module), s.argument, s.index): s for s in sources}.values():
            if source.argument is None:
                handles.append(source.module.register_forward_hook(self._keep_output(source)))
            else:
                hook = self._keep_argument(source, source.argument)
                handles.append(source.module.register_forward_pre_hook(hook, with_kwargs=True))
        return handles

    def _keep_output(self, source: TensorSource) -> ForwardHook:
        def hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
            value = output if source.index is None else output[source.index]
            self.values[(id(module), None, source.index)] = value

        return hook

    def _keep_argument(self, source: TensorSource, argument: str) -> KwargsPreHook:
        signature = inspect.signature(source.module.forward)

        def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
            value = signature.bind_partial(*args, **kwargs).arguments[argument]
            self.values[(id(module), argument, None)] = value

        return hook


@dataclass
class LRPState:
    """The mode shared by all rule sites (attention maps get their probes on their recorded calls).

    Attributes:
        mode (Mode): The flag every switch reads (relevance or gradient mode).
        linear_io (dict): ``id(linear)`` to its latest ``(input, switched output)``.
    """

    mode: Mode = field(default_factory=Mode)
    linear_io: Dict[int, Tuple[Tensor, Tensor]] = field(default_factory=dict)  # id(linear): (input, switched output)

    def output_of(self, linear: LinearModule) -> Tensor:
        """The latest output of ``linear``, as the rules see it (an LRP backward can start there)."""
        return self.linear_io[id(linear)][1]

    @contextmanager
    def relevance_mode(self) -> Iterator[None]:
        """Within the ``with`` block every switch hands its rule's modified gradients on (an LRP backward)."""
        self.mode.relevance = True
        try:
            yield
        finally:
            self.mode.relevance = False
