"""Applying LRP rules to an unmodified model, reversibly.

Inside :func:`lrp_rules` every rule site's output is routed through a switch: an
autograd function that returns the output unchanged and, on the way back, either
passes the ordinary gradient to the original computation (*gradient mode*) or
hands its rule's modified gradients straight to the site's inputs (*relevance
mode*, see :mod:`captum_mm.lrp.rules`). So one forward pass serves an ordinary
backward (gradients of the attention maps) and an LRP backward (their relevance).
Each attention module (an :class:`~captum_mm.spec.AttentionSpec` with its ``parts``) also
gives each of its recorded calls a *probe*, a zero tensor shaped like its map, whose
"gradient" in relevance mode is the relevance ``R_A`` at the map.

The rules compute in float32 for half-precision models (see :mod:`captum_mm._precision`):
they receive ``x``, ``out`` and ``g`` in float32 (weights stay in the model's dtype), the
probes are float32, so the relevance at the maps is float32; the modified gradients
between rule sites are held in the model's dtype.

Everything is registered as hooks whose handles are removed on exit, also on error.
"""

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from captum_mm.lrp.rules import RuleSet, safe_divide
from captum_mm._handles import ForwardHook, ForwardPreHook, HandleList, KwargsPreHook
from captum_mm._precision import accumulation_dtype, exact
from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource

if TYPE_CHECKING:  # the capture module's package imports this one
    from captum_mm.models.capture import AttentionCall, AttentionRecord


@dataclass(frozen=True)
class ResidualRuleSite:
    """A residual addition ``total = branch + skip``.

    ``total`` says where the sum appears: as an argument of the module consuming it
    (post-norm layers: the LayerNorm's ``input``) or as a module's output (pre-norm
    layers ending in the addition); it is replaced there by a switch routing
    relevance to ``branch`` and ``skip``.
    """

    total: TensorSource
    branch: TensorSource
    skip: TensorSource


@dataclass
class LRPStructure:
    """What an adapter declares for LRP besides its attention specs; linear and elementwise modules
    are found by type."""

    residuals: List[ResidualRuleSite]
    pass_through_types: Tuple[type, ...] = ()


class _Mode:
    """The flag every switch reads. It holds no tensor: the autograd contexts keeping it then form no
    reference cycle with the graph (a cycle through a C++ autograd node is invisible to Python's
    garbage collector, so the whole graph would leak with every call)."""

    __slots__ = ("relevance",)

    def __init__(self) -> None:
        self.relevance = False


@dataclass
class LRPState:
    """The mode shared by all rule sites (attention maps get their probes on their recorded calls)."""

    mode: _Mode = field(default_factory=_Mode)
    linear_io: Dict[int, Tuple[Tensor, Tensor]] = field(default_factory=dict)  # id(linear): (input, switched output)

    def output_of(self, linear: nn.Linear) -> Tensor:
        """The latest output of ``linear``, as the rules see it (an LRP backward can start there)."""
        return self.linear_io[id(linear)][1]

    @contextmanager
    def relevance_mode(self) -> Iterator[None]:
        self.mode.relevance = True
        try:
            yield
        finally:
            self.mode.relevance = False


class _Switch(torch.autograd.Function):
    """``output`` unchanged; backward: gradient to ``output``, or ``rule(g)`` to ``inputs``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(output: Tensor, mode: _Mode, rule: Callable[[Tensor], Tuple[Tensor, ...]], *inputs: Tensor) -> Tensor:
        return output.view_as(output)

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tensor) -> None:
        ctx.mode, ctx.rule, ctx.count = inputs[1], inputs[2], len(inputs) - 3

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        if ctx.mode.relevance:
            return (None, None, None, *ctx.rule(grad.to(accumulation_dtype(grad.dtype))))  # no detach under vmap
        return (grad, None, None) + (None,) * ctx.count


BUILT_IN_PASS_THROUGH = (nn.LayerNorm, nn.Dropout, nn.GELU, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.SiLU)


def _is_pass_through(module: nn.Module, extra: Tuple[type, ...]) -> bool:
    return isinstance(module, BUILT_IN_PASS_THROUGH + extra) or type(module).__module__ == "transformers.activations"


class _Recorder:
    """The latest tensors of the sources rule sites read, per forward call."""

    def __init__(self, linear_io: Dict[int, Tuple[Tensor, Tensor]]) -> None:
        self.values: Dict[Tuple[int, Optional[str], Optional[int]], Tensor] = {}
        self.linear_io = linear_io

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


def _replace_first(output: Any, value: Tensor) -> Any:
    return (value,) + tuple(output[1:]) if isinstance(output, tuple) else value


@contextmanager
def lrp_rules(
    model: nn.Module,
    structure: LRPStructure,
    rules: Optional[RuleSet] = None,
    attention: Sequence[AttentionSpec] = (),
    record: Optional["AttentionRecord"] = None,
) -> Iterator[LRPState]:
    """Install ``rules`` on ``model`` for the duration of the ``with`` block.

    Args:
        attention (sequence of AttentionSpec): The attention modules, each with its ``parts``.
        record (AttentionRecord): Where ``capture_attention`` (entered first) records their calls;
                    each call gets the probe that receives its map's relevance.

    Yields:
        LRPState: set ``relevance_mode()`` around the LRP backward.
    """
    rules = rules or RuleSet()
    state, handles = LRPState(), HandleList()
    recorder = _Recorder(state.linear_io)
    missing = [spec.name for spec in attention if spec.parts is None]
    if missing or (attention and record is None):
        raise ValueError(
            f"LRP needs every attention module's projections (AttentionSpec.parts), missing for {missing}, and the "
            "capture record its calls are kept in."
        )
    attention_parts = {id(spec.probs.module) for spec in attention if spec.probs.module is not spec.module}
    try:
        for module in model.modules():
            if isinstance(module, nn.Linear):
                handles.append(module.register_forward_hook(_linear_hook(state, rules, recorder)))
            elif id(module) not in attention_parts and _is_pass_through(module, structure.pass_through_types):
                handles.append(module.register_forward_hook(_pass_hook(state, rules)))
        for spec in attention:
            parts = cast(AttentionParts, spec.parts)
            for linear, source in parts.position_inputs:
                handles.append(linear.register_forward_pre_hook(_position_hook(state, recorder, source)))
            handles.append(spec.module.register_forward_hook(_attention_hook(state, rules, cast("AttentionRecord", record), spec)))
        for residual in structure.residuals:
            handles.append(_residual_hook(state, rules, recorder, residual))
        sources = [source for spec in attention for _, source in cast(AttentionParts, spec.parts).position_inputs]
        sources += [s for site in structure.residuals for s in (site.branch, site.skip)]
        handles.extend(recorder.hooks(sources))
        yield state
    finally:
        handles.remove()


def _linear_hook(state: LRPState, rules: RuleSet, recorder: _Recorder) -> Callable[[nn.Linear, Tuple[Any, ...], Tensor], Tensor]:
    def hook(module: nn.Linear, args: Tuple[Any, ...], output: Tensor) -> Tensor:
        x = args[0]
        rule = lambda g: (rules.linear.input_gradient(module, exact(x), exact(output), g),)  # noqa: E731
        switched = _Switch.apply(output, state.mode, rule, x)
        recorder.linear_io[id(module)] = (x, switched)
        return switched

    return hook


def _pass_hook(state: LRPState, rules: RuleSet) -> ForwardHook:
    def hook(module: nn.Module, args: Tuple[Any, ...], output: Tensor) -> Tensor:
        x = args[0]
        rule = lambda g: (rules.pass_through.input_gradient(exact(x), exact(output), g),)  # noqa: E731
        return _Switch.apply(output, state.mode, rule, x)

    return hook


def _position_hook(state: LRPState, recorder: _Recorder, source: TensorSource) -> ForwardPreHook:
    """The linear's input is ``source + position``: its relevance goes to ``source`` alone."""

    def hook(module: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
        x, origin = args[0], recorder.get(source)
        rule = lambda g: (safe_divide(exact(x) * g, exact(origin)),)  # noqa: E731
        return (_Switch.apply(x, state.mode, rule, origin),) + tuple(args[1:])

    return hook


def _split_heads(tensor: Tensor, heads: int) -> Tensor:
    return tensor.reshape(*tensor.shape[:-1], heads, -1).transpose(-2, -3)


def _attention_hook(state: LRPState, rules: RuleSet, record: "AttentionRecord", spec: AttentionSpec) -> ForwardHook:
    """The attention rule at ``spec.module``'s first output; the probe goes to the call just recorded
    (its probabilities were recorded before the module returned)."""
    parts = cast(AttentionParts, spec.parts)

    def hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> Any:
        query, key, value = (state.linear_io[id(linear)][1] for linear in (parts.query, parts.key, parts.value))
        call = record.latest(spec)
        attention = call.probs
        dtype = accumulation_dtype(attention.dtype)
        call.probe = torch.zeros((), dtype=dtype, device=attention.device, requires_grad=True).expand(attention.shape)
        projection = (parts.projection, state.linear_io[id(parts.projection)]) if parts.projection is not None else None
        heads = parts.heads

        def rule(g: Tensor) -> Tuple[Tensor, ...]:
            if projection is not None:
                linear, (x, out) = projection
                g = rules.linear.input_gradient(linear, exact(x), exact(out), g)
            q, k, v = (_split_heads(exact(t), heads) for t in (query, key, value))
            g_q, g_k, g_v, relevance = rules.attention.gradients(q, k, v, exact(attention), _split_heads(g, heads))
            merged = (t.transpose(-2, -3).reshape(like.shape) for t, like in ((g_q, query), (g_k, key), (g_v, value)))
            return (*merged, relevance)

        first = output[0] if isinstance(output, tuple) else output
        return _replace_first(output, _Switch.apply(first, state.mode, rule, query, key, value, call.probe))

    return hook


def _residual_hook(state: LRPState, rules: RuleSet, recorder: _Recorder, site: ResidualRuleSite) -> RemovableHandle:
    def switched(total: Tensor) -> Tensor:
        branch, skip = recorder.get(site.branch), recorder.get(site.skip)
        rule = lambda g: rules.residual.branch_gradients(exact(branch), exact(skip), g)  # noqa: E731
        return _Switch.apply(total, state.mode, rule, branch, skip)

    module, name = site.total.module, site.total.argument
    if name is None:
        def on_output(module: nn.Module, args: Tuple[Any, ...], output: Any) -> Any:
            if site.total.index is None:
                return switched(output)
            return output[: site.total.index] + (switched(output[site.total.index]),) + output[site.total.index + 1 :]

        return module.register_forward_hook(on_output)
    signature = inspect.signature(module.forward)

    def on_argument(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        bound = signature.bind(*args, **kwargs)
        bound.arguments[name] = switched(bound.arguments[name])
        return bound.args, bound.kwargs

    return module.register_forward_pre_hook(on_argument, with_kwargs=True)


def relevance_seed(logits: Tensor, one_hot: Tensor) -> Tensor:
    """The modified gradient at the logits that puts relevance ``one_hot`` on them."""
    return safe_divide(one_hot, logits.detach())


def attention_relevance(
    state: LRPState, calls: Sequence["AttentionCall"], outputs: Tuple[Tensor, ...], grad_outputs: Tuple[Tensor, ...]
) -> List[Optional[Tensor]]:
    """One LRP backward from ``outputs`` (seeded by the modified gradients ``grad_outputs``,
    ``[K, *output.shape]`` for ``K`` slots): ``R_A`` of each call's map, ``[K, B, H, Nq, Nk]``, or
    None for a map the outputs do not depend on (e.g. one captured inside a compiled graph)."""
    probes = [call.probe for call in calls]
    if not probes:
        return []
    if any(probe is None for probe in probes):
        raise RuntimeError("LRP relevance was asked of attention calls made without LRP rules installed.")
    batched = grad_outputs[0].shape[0] > 1
    with state.relevance_mode():
        found = torch.autograd.grad(
            outputs,
            cast(List[Tensor], probes),
            grad_outputs=grad_outputs if batched else tuple(g[0] for g in grad_outputs),
            is_grads_batched=batched,
            allow_unused=True,
            retain_graph=True,
        )
    return [None if value is None else value if batched else value[None] for value in found]
