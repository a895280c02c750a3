"""The architecture-adapter interface and what adapters share."""

import inspect
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple, cast

import torch
from torch import Tensor, nn

from captum_mm.lrp.composite import LRPState, LRPStructure, ResidualRuleSite, relevance_seed
from captum_mm.lrp.rules import RuleSet
from captum_mm.models.arguments import Argument, check_declared, outputs_of
from captum_mm.models.capture import AttentionRecord
from captum_mm.models.eager import NO_ATTENTION_FUNCTIONS, AttentionFunctions
from captum_mm.models.target_options import TargetOptions
from captum_mm.relevance.schedule import AttentionEvent, Readout, Schedule, seen_positions
from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource

if TYPE_CHECKING:  # captum_mm.generation reads adapters
    from captum_mm.generation import GenerationConvention


@dataclass
class TargetSelection:
    """The predictions to explain, as seeds for one (possibly batched) backward pass.

    Attributes:
        grad_outputs (Tensor): ``[K, *logits.shape]`` one-hot seeds, one slot per
                    backward; slot ``k`` of sample ``b`` seeds element ``(k, b)``.
        sample (Tensor): ``[E]`` sample index of every explained element.
        slot (Tensor): ``[E]`` slot index of every explained element.
        classes (Tensor): ``[E]`` explained class of every element.
        queries (Tensor, optional): ``[E]`` explained DETR query of every element.
        positions (Tensor, optional): ``[E]`` position in the model's sequence of every explained
                    generated token (it is predicted from the position before).
        scores (Tensor): ``[E]`` probability of the explained class.
    """

    grad_outputs: Tensor
    sample: Tensor
    slot: Tensor
    classes: Tensor
    scores: Tensor
    queries: Optional[Tensor] = None
    positions: Optional[Tensor] = None

    @property
    def several_per_sample(self) -> bool:
        """Whether a sample can have several elements (DETR queries, generated tokens)."""
        return self.queries is not None or self.positions is not None

    @property
    def num_elements(self) -> int:
        return int(self.sample.numel())


class ArchitectureAdapter:
    """Knows one model family: where attention happens and in which order the rules apply.

    Subclasses declare the HF classes they serve in ``model_classes`` and the forward
    ``arguments``, and implement :meth:`attention_specs` and :meth:`schedule` (and, for LRP,
    :meth:`lrp_structure`). They never import methods.

    Args:
        model (nn.Module): The HuggingFace model the adapter serves.
    """

    model_classes: Tuple[type, ...] = ()
    #: Output fields tried, in order, when ``forward_func`` returns a HF ``ModelOutput``.
    logit_fields: Tuple[str, ...] = ("logits",)
    #: Output names of :class:`~captum_mm.attr.Explanation` this family fills.
    outputs: Tuple[str, ...] = ("text", "image")
    #: The forward arguments checked before the model runs, and the output each carries.
    arguments: Mapping[str, Argument] = MappingProxyType({})
    #: The attention classes (exact types) lean capture serves: their family's eager function takes the softmax in
    #: float32 (True) or the model's dtype (:data:`~captum_mm.models.eager.AttentionFunctions`).
    attention_functions: AttentionFunctions = NO_ATTENTION_FUNCTIONS

    @property
    def argument_outputs(self) -> Mapping[str, str]:
        """The output each forward argument carries (``attribute`` spreads it over that input)."""
        return outputs_of(self.arguments)

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @classmethod
    def for_model(cls, model: nn.Module) -> "ArchitectureAdapter":
        """The adapter serving ``model`` (a family whose models differ in layout returns its variant's)."""
        return cls(model)

    def attention_specs(self) -> List[AttentionSpec]:
        """One spec per attention module: capture, schedule roles and LRP sites derive from it."""
        raise NotImplementedError

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        """Raise ``ValueError`` if the model's forward arguments cannot be explained (by default:
        as :attr:`arguments` declares them)."""
        check_declared(arguments, self.arguments)

    def extra_hooks(self, record: AttentionRecord) -> List[Any]:
        """Hooks the family needs on the model while it is explained (e.g. BLIP's decoder logits); their handles."""
        return []

    def gradient_free_modules(self) -> Tuple[nn.Module, ...]:
        """Modules no attention map depends on: their parameters are not made to require grad."""
        return ()

    def generation_convention(self) -> Optional["GenerationConvention"]:
        """How the family's models hold generated tokens (:mod:`captum_mm.generation`); None: they do not generate."""
        return None

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        """The :class:`Schedule` of one captured forward pass: modalities, padding masks, steps and readouts."""
        raise NotImplementedError

    def lrp_structure(self) -> LRPStructure:
        """Residual sites and pass-through modules for LRP (see :mod:`captum_mm.lrp.composite`)."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its LRP structure.")

    def default_rules(self) -> RuleSet:
        """The reference implementation's LRP rules for this family."""
        return RuleSet()

    def lrp_start(self, state: LRPState, logits: Tensor, seeds: Tensor) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        """Where the LRP backward starts and its modified gradients there, ``[K, *shape]`` for the
        ``K`` slots of ``seeds``: by default the logits, each target's relevance set to 1."""
        return (logits,), (relevance_seed(logits, seeds),)

    def logits(self, output: Any) -> Tensor:
        """The logits tensor inside whatever ``forward_func`` returned."""
        if isinstance(output, Tensor):
            return output
        for name in self.logit_fields:
            value = output.get(name) if hasattr(output, "get") else getattr(output, name, None)
            if isinstance(value, Tensor):
                return value
        raise TypeError(
            f"forward_func returned a {type(output).__name__} without logits (looked for "
            f"{', '.join(self.logit_fields)}); make forward_func return the logits tensor."
        )

    def select_targets(self, logits: Tensor, target: Any, options: TargetOptions = TargetOptions()) -> TargetSelection:
        """The elements explained for ``target`` (None: each sample's prediction), as seeds over ``logits``; ``options``
        (DETR's ``threshold``, ``single``) for families whose targets have options."""
        return select_class_targets(logits, target)

    def per_sample_outputs(self, logits: Tensor) -> Tensor:
        """``[B, ...]``: the outputs each sample's explanation depends on (checked to be finite)."""
        return logits


def _class_targets(target: Any, batch_size: int) -> Tensor:
    if isinstance(target, Tensor) and (target.is_floating_point() or target.is_complex()):
        if not torch.equal(target, target.real.round()):
            raise ValueError(
                f"target {target.tolist()} has non-integral values: a class target is an integer "
                "(an int, a list of ints or an integer tensor)."
            )
        target = target.real.long()
    if isinstance(target, Tensor):
        if target.numel() == 1:
            return target.reshape(1).long().expand(batch_size)
        if target.dim() == 1 and target.numel() == batch_size:
            return target.long()
    elif isinstance(target, int):
        return torch.full((batch_size,), target, dtype=torch.long)
    elif isinstance(target, list) and len(target) == batch_size and all(isinstance(t, int) for t in target):
        return torch.tensor(target, dtype=torch.long)
    raise ValueError(
        f"Unsupported target {target!r} for {batch_size} samples: pass None (each sample's predicted "
        "class), an int, a list of ints or a 1-D tensor with one class per sample."
    )


def select_class_targets(logits: Tensor, target: Any) -> TargetSelection:
    """Targets of a classifier with logits ``[B, C]``: one element per sample."""
    if logits.dim() != 2:
        raise ValueError(f"Expected classifier logits of shape [batch, classes], got {tuple(logits.shape)}.")
    batch_size, num_classes = logits.shape
    classes = logits.argmax(dim=-1) if target is None else _class_targets(target, batch_size).to(logits.device)
    if classes.numel() and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"target {classes.tolist()} out of range: the model has {num_classes} classes (0..{num_classes - 1}).")
    grad_outputs = torch.zeros_like(logits).scatter_(1, classes[:, None], 1.0)[None]
    samples = torch.arange(batch_size, device=logits.device)
    scores = logits.detach().softmax(-1)[samples, classes]
    return TargetSelection(grad_outputs, samples, torch.zeros_like(samples), classes, scores)


def dropout_probabilities(module: nn.Module) -> TensorSource:
    """Hand-written attention (LXMERT, VisualBERT, ViLT): the probabilities are its ``dropout``'s output."""
    return TensorSource(cast(nn.Module, module.dropout))


def attention_specs_in(
    root: nn.Module,
    classes: type | Tuple[type, ...],
    roles: Tuple[Tuple[str, str], ...],
    parts: Callable[[Any], Optional[AttentionParts]] = lambda module: None,
    probs: Callable[[Any], TensorSource] = lambda module: TensorSource(module, index=1),
    names: Optional[Mapping[nn.Module, str]] = None,
) -> List[AttentionSpec]:
    """Specs of the attention modules of these classes under ``root``, all with the same ``roles``;
    ``names`` maps modules to their names in the explained model (default: names under ``root``).
    By default the probabilities are the modules' second output (HF attention-interface modules
    under eager attention), and no parts are declared (no LRP)."""
    names = names or {module: name for name, module in root.named_modules()}
    return [
        AttentionSpec(names[module], module, probs(module), roles, parts=parts(module))
        for module in root.modules() if isinstance(module, classes)
    ]


def qkv_parts(module: Any) -> AttentionParts:
    """BERT-style attention: ``query``/``key``/``value`` linears, no output projection inside."""
    return AttentionParts(module.query, module.key, module.value, module.num_attention_heads)


def fused_qkv_parts(module: Any) -> AttentionParts:
    """BLIP-style vision attention: one ``qkv`` projection (Q, K and V concatenated) and an output ``projection``."""
    return AttentionParts(module.qkv, module.qkv, module.qkv, module.num_heads, projection=module.projection, fused=True)


def projected_parts(module: Any, heads: int, projection: nn.Linear) -> AttentionParts:
    """Attention-interface modules: ``q_proj``/``k_proj``/``v_proj`` and an output projection inside."""
    return AttentionParts(module.q_proj, module.k_proj, module.v_proj, heads, projection=projection)


def post_norm_residuals(model: nn.Module, output_classes: Tuple[type, ...], pass_through_types: Tuple[type, ...] = ()) -> LRPStructure:
    """Residual sites of post-norm BERT-style layers: output modules computing
    ``LayerNorm(dropout(dense(hidden_states)) + input_tensor)``."""
    residuals = [
        ResidualRuleSite(TensorSource(m.LayerNorm, "input"), TensorSource(m.dropout), TensorSource(m, "input_tensor"))
        for m in _modules_of(model, output_classes)
    ]
    return LRPStructure(residuals, pass_through_types)


def _modules_of(model: nn.Module, classes: type | Tuple[type, ...]) -> List[Any]:
    """The modules of ``model`` of these classes; their parts are then read by name (duck-typed)."""
    return [m for m in model.modules() if isinstance(m, classes)]


def mlp_output(layer: Any) -> Tuple[TensorSource, TensorSource]:
    """The MLP addition of ViT-style layers: the layer's output, the ``mlp``'s output its branch."""
    return TensorSource(layer), TensorSource(layer.mlp)


def pre_norm_structure(
    model: nn.Module,
    layer_class: type | Tuple[type, ...],
    second_norm: str,
    attention: str,
    mlp_addition: Callable[[Any], Tuple[TensorSource, TensorSource]] = mlp_output,
) -> LRPStructure:
    """The two residual additions of every pre-norm layer (ViT, CLIP, ViLT, LLaMA-style LMs):
    ``middle = attention(norm1(x)) + x``, seen as the input of the layer's ``second_norm``, and
    ``total = branch + middle``, where ``mlp_addition(layer)`` gives ``(total, branch)``."""
    residuals = []
    for layer in _modules_of(model, layer_class):
        norm = getattr(layer, second_norm)
        middle, (total, branch) = TensorSource(norm, first_argument(norm)), mlp_addition(layer)
        residuals += [
            ResidualRuleSite(middle, TensorSource(getattr(layer, attention), index=0), TensorSource(layer, "hidden_states")),
            ResidualRuleSite(total, branch, middle),
        ]
    return LRPStructure(residuals)


def first_argument(module: nn.Module) -> str:
    """The name of ``module.forward``'s first argument (``input`` for ``nn.LayerNorm``, ``hidden_states`` for HF's RMSNorms)."""
    return next(iter(inspect.signature(module.forward).parameters))


def forward_order_schedule(
    record: AttentionRecord, selection: TargetSelection, masks: Dict[str, Tensor], outputs: Dict[str, Readout],
    causal: Tuple[str, ...] = (),
) -> Schedule:
    """Every recorded call one step, in forward order, with its declared roles.

    Args:
        record (AttentionRecord): The captured calls.
        selection (TargetSelection): The explained elements.
        masks (dict[str, Tensor]): ``[B, N]`` real tokens per modality.
        outputs (dict[str, Readout]): Where each output is read.
        causal (tuple[str, ...], optional): The modalities whose tokens see only earlier ones (a decoder's):
                    each element's mask of them ends at its readout row. Default: ()

    Returns:
        *Schedule*
    """
    steps: List[Tuple[AttentionEvent, ...]] = [(event,) for event in record.events()]
    element_masks = {name: mask[selection.sample] for name, mask in masks.items()}
    for modality in causal:
        element_masks[modality] = element_masks[modality] & seen_positions(outputs, modality, masks[modality].shape[1])
    return Schedule(
        sizes={name: mask.shape[1] for name, mask in masks.items()},
        masks=element_masks, steps=steps, outputs=outputs, element_sample=selection.sample, causal=frozenset(causal),
    )

