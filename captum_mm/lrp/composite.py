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
between rule sites are held in the model's dtype, where they lose precision (up to the size
of the relevance), so the methods run a half-precision model in float32 while explaining it
(:func:`captum_mm._precision.computed_in_float32`).

Everything is registered as hooks whose handles are removed on exit, also on error. Hooks that
replace a module's output run before the module's other forward hooks (``prepend``), so that what
those read -- HF's hidden-state capture, which feeds LLaVA's projector -- is the routed output: read
before, it would carry the relevance past the rules.
"""

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers.pytorch_utils import Conv1D

from captum_mm._handles import ForwardHook, HandleList
from captum_mm._precision import exact
from captum_mm.capture.record import AttentionCall, AttentionRecord
from captum_mm.lrp.attention import attention_hook, position_keeper
from captum_mm.lrp.canonizers import Canonizer
from captum_mm.lrp.coverage import uncovered_modules
from captum_mm.lrp.quantized import check_linear_weights
from captum_mm.lrp.rules import LinearRule, PassThrough, ProportionalResidual, LayerScale, RuleSet, TanhGate, safe_divide
from captum_mm.lrp.switch import LRPState, Recorder, Switch
from captum_mm.spec import AttentionParts, AttentionSpec, LinearModule, TensorSource


@dataclass(frozen=True)
class ResidualRuleSite:
    """A residual addition ``total = branch + skip``.

    ``total`` says where the sum appears: as an argument of the module consuming it
    (post-norm layers: the LayerNorm's ``input``) or as a module's output (pre-norm
    layers ending in the addition); it is replaced there by a switch routing
    relevance to ``branch`` and ``skip``, which may hold the same values in another layout
    (``[B * N, D]`` for ``[B, N, D]``).

    Attributes:
        total (TensorSource): Where the sum appears.
        branch (TensorSource): The residual branch's output.
        skip (TensorSource): The skip connection's tensor.
        gate (TanhGate or LayerScale, optional): The factor scaling the branch before the sum. Default: none
    """

    total: TensorSource
    branch: TensorSource
    skip: TensorSource
    gate: Optional[Union[TanhGate, LayerScale]] = None


@dataclass
class LRPStructure:
    """What an adapter declares for LRP besides its attention specs. Linear and elementwise modules are
    found by type.

    Attributes:
        residuals (list of ResidualRuleSite): The residual additions.
        pass_through_types (tuple of type): Modules relevance passes through unchanged beyond the built-in
                    ones (e.g. RMSNorm classes). Default: ()
        canonizers (sequence of Canonizer): Model-specific blocks (gated products, position embeddings). Default: ()
        covered_types (tuple of type): Further modules owning parameters that the adapter's rules cover (e.g. a
                    block a canonizer handles); LRP refuses a model with a parameterised module inside its
                    transformer layers that is none of these, linear, an embedding, an attention module or (outside
                    attention modules) a pass-through type (:mod:`captum_mm.lrp.coverage`). Default: ()
    """

    residuals: List[ResidualRuleSite]
    pass_through_types: Tuple[type, ...] = ()
    canonizers: Sequence[Canonizer] = ()
    covered_types: Tuple[type, ...] = ()

    def __add__(self, other: "LRPStructure") -> "LRPStructure":
        """Both structures' sites (a model made of parts of several families)."""
        return LRPStructure(self.residuals + other.residuals, self.pass_through_types + other.pass_through_types,
                            (*self.canonizers, *other.canonizers), self.covered_types + other.covered_types)


LINEAR_TYPES = (nn.Linear, Conv1D)  # LinearModule's
BUILT_IN_PASS_THROUGH = (nn.LayerNorm, nn.Dropout, nn.GELU, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.SiLU)


def _is_pass_through(module: nn.Module, extra: Tuple[type, ...]) -> bool:
    return isinstance(module, BUILT_IN_PASS_THROUGH + extra) or type(module).__module__ == "transformers.activations"


@contextmanager
def lrp_rules(
    model: nn.Module,
    structure: LRPStructure,
    rules: Optional[RuleSet] = None,
    attention: Sequence[AttentionSpec] = (),
    record: Optional[AttentionRecord] = None,
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
    positions: Dict[int, Tuple[Tensor, Tensor]] = {}  # id(attention module): its latest rotary (cos, sin)
    recorder = Recorder()
    missing = [spec.name for spec in attention if spec.parts is None]
    if missing or (attention and record is None):
        raise ValueError(
            f"LRP needs every attention module's projections (AttentionSpec.parts), missing for {missing}, and the "
            "capture record its calls are kept in."
        )
    _check_coverage(model, structure, attention)
    check_linear_weights((name, module) for name, module in model.named_modules() if isinstance(module, LINEAR_TYPES))
    attention_parts = {id(spec.probs.module) for spec in attention if spec.probs.module is not spec.module}
    names = {module: name for name, module in model.named_modules()}
    try:
        for module, name in names.items():
            if isinstance(module, LINEAR_TYPES):
                rule = rules.for_module(name, module, rules.linear)
                handles.append(module.register_forward_hook(_linear_hook(state, rule), prepend=True))
            elif id(module) not in attention_parts and _is_pass_through(module, structure.pass_through_types):
                passing = rules.for_module(name, module, rules.pass_through)
                handles.append(module.register_forward_hook(_pass_hook(state, passing), prepend=True))
        for spec in attention:
            projection = cast(AttentionParts, spec.parts).projection
            rule_of = (rules.for_module(spec.name, spec.module, rules.attention),
                       rules.for_module(names.get(projection, ""), projection, rules.linear) if projection is not None else rules.linear)
            hook = attention_hook(state, rule_of, cast(AttentionRecord, record), spec, positions)
            handles.append(spec.module.register_forward_hook(hook))
            if cast(AttentionParts, spec.parts).rotary:
                handles.append(spec.module.register_forward_pre_hook(position_keeper(positions), with_kwargs=True))
        for residual in structure.residuals:
            module = residual.total.module
            handles.append(_residual_hook(state, rules.for_module(names[module], module, rules.residual), recorder, residual))
        for canonizer in structure.canonizers:
            handles.extend(canonizer.under(rules).register(state.mode, recorder.get))
        sources = [source for canonizer in structure.canonizers for source in canonizer.sources()]
        sources += [s for site in structure.residuals for s in (site.branch, site.skip)]
        sources += [site.gate.row_mask for site in structure.residuals if site.gate is not None and site.gate.row_mask is not None]
        handles.extend(recorder.hooks(sources))
        yield state
    finally:
        handles.remove()


def _check_coverage(model: nn.Module, structure: LRPStructure, attention: Sequence[AttentionSpec]) -> None:
    pass_through = BUILT_IN_PASS_THROUGH + structure.pass_through_types
    uncovered = uncovered_modules(model, attention, LINEAR_TYPES, pass_through, structure.covered_types)
    if uncovered:
        shown = ", ".join(uncovered[:3]) + (f" and {len(uncovered) - 3} more" if len(uncovered) > 3 else "")
        raise TypeError(
            f"The LRP-based methods cannot explain this {type(model).__name__}: no LRP rule of its adapter covers "
            f"{shown}, so relevance would pass through them unverified. Declare the module classes the adapter has "
            "rules for (LRPStructure.pass_through_types or covered_types, see tutorial 04) if they are right, or use "
            "a method without LRP (GenericAttention, AttentionRollout, RawAttention, AttentionGradCam)."
        )


def _linear_hook(state: LRPState, rule: LinearRule) -> Callable[[LinearModule, Tuple[Any, ...], Tensor], Tensor]:
    def hook(module: LinearModule, args: Tuple[Any, ...], output: Tensor) -> Tensor:
        x = args[0]
        modified = lambda g: (where_computed(rule.input_gradient, module, x, output, g),)  # noqa: E731
        switched = Switch.apply(output, state.mode, modified, x)
        state.linear_io[id(module)] = (x, switched)
        return switched

    return hook


def _pass_hook(state: LRPState, rule: PassThrough) -> ForwardHook:
    def hook(module: nn.Module, args: Tuple[Any, ...], output: Tensor) -> Tensor:
        x = args[0]
        modified = lambda g: (where_computed(rule.module_gradient, module, x, output, g),)  # noqa: E731
        return Switch.apply(output, state.mode, modified, x)

    return hook


def where_computed(gradient: Callable[[Any, Tensor, Tensor, Tensor], Tensor], module: nn.Module, x: Tensor,
                   output: Tensor, g_out: Tensor) -> Tensor:
    """A rule's modified gradient at a module's input, computed on the device the module ran on (its output's) and
    returned on the input's: a forward hook sees the input before accelerate's hook moves it to the module.

    Args:
        gradient (Callable): The rule, ``(module, x, out, g_out) -> g_x``.
        module (nn.Module): The module.
        x (Tensor): Its input, as the hook saw it.
        output (Tensor): Its output.
        g_out (Tensor): The modified gradient at the output.

    Returns:
        *Tensor*: The modified gradient at ``x``, on ``x``'s device.
    """
    return gradient(module, exact(x).to(output.device), exact(output), g_out).to(x.device)


def _residual_hook(state: LRPState, rule: ProportionalResidual, recorder: Recorder, site: ResidualRuleSite) -> RemovableHandle:
    def switched(total: Tensor) -> Tensor:
        branch, skip = recorder.get(site.branch), recorder.get(site.skip)

        factor = None if site.gate is None else site.gate.factor(recorder.get)

        def modified(g: Tensor) -> Tuple[Tensor, ...]:  # in the sum's layout (OPT flattens tokens around its MLP)
            # on the sum's device; a source recorded before accelerate's hook moved it gets its gradient where it is
            scaled = exact(branch).to(g.device).reshape(g.shape) * (1 if factor is None else factor.to(g))
            g_branch, g_skip = rule.branch_gradients(scaled, exact(skip).to(g.device).reshape(g.shape), g)
            g_branch = g_branch if factor is None else g_branch * factor.to(g)
            return tuple(gradient.reshape(t.shape).to(t.device) for gradient, t in zip((g_branch, g_skip), (branch, skip)))

        return Switch.apply(total, state.mode, modified, branch, skip)

    module, name = site.total.module, site.total.argument
    if name is None:
        def on_output(module: nn.Module, args: Tuple[Any, ...], output: Any) -> Any:
            if site.total.index is None:
                return switched(output)
            return output[: site.total.index] + (switched(output[site.total.index]),) + output[site.total.index + 1 :]

        return module.register_forward_hook(on_output, prepend=True)
    signature = inspect.signature(module.forward)

    def on_argument(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        bound = signature.bind(*args, **kwargs)
        bound.arguments[name] = switched(bound.arguments[name])
        return bound.args, bound.kwargs

    return module.register_forward_pre_hook(on_argument, with_kwargs=True)


def relevance_seed(logits: Tensor, one_hot: Tensor) -> Tensor:
    """The modified gradient at the logits that puts relevance ``one_hot`` on them.

    Args:
        logits (Tensor): The logits.
        one_hot (Tensor): The relevance wanted on them, the same shape.

    Returns:
        *Tensor*: ``one_hot / logits``.
    """
    return safe_divide(one_hot, logits.detach())


def attention_relevance(
    state: LRPState, calls: Sequence[AttentionCall], outputs: Tuple[Tensor, ...], grad_outputs: Tuple[Tensor, ...]
) -> List[Optional[Tensor]]:
    """One LRP backward from ``outputs``: the relevance ``R_A`` of each call's map.

    Args:
        state (LRPState): The installed rules' state.
        calls (sequence of AttentionCall): The recorded calls, each with its probe.
        outputs (tuple of Tensor): Where the backward starts.
        grad_outputs (tuple of Tensor): Their modified gradients, ``[K, *output.shape]`` for ``K`` slots.

    Returns:
        *list*: ``[K, B, H, Nq, Nk]`` per call, or None for a map the outputs do not depend on (e.g. one
        captured inside a compiled graph).
    """
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
