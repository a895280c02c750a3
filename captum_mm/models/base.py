"""The architecture-adapter interface and what adapters share."""

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, cast

import torch
from torch import Tensor, nn

from captum_mm.lrp.composite import AttentionRuleSite, LRPState, LRPStructure, ResidualRuleSite, TensorSource, relevance_seed
from captum_mm.lrp.rules import RuleSet
from captum_mm.models.capture import AttentionRecord, AttentionSite
from captum_mm.relevance.schedule import Schedule


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
        scores (Tensor): ``[E]`` probability of the explained class.
    """

    grad_outputs: Tensor
    sample: Tensor
    slot: Tensor
    classes: Tensor
    scores: Tensor
    queries: Optional[Tensor] = None

    @property
    def num_elements(self) -> int:
        return int(self.sample.numel())


class ArchitectureAdapter:
    """Knows one model family: where attention happens and in which order the rules apply.

    Subclasses declare the HF classes they serve in ``model_classes`` and implement
    :meth:`sites`, :meth:`check_arguments` and :meth:`schedule`. They never import
    methods.
    """

    model_classes: Tuple[type, ...] = ()
    #: Output fields tried, in order, when ``forward_func`` returns a HF ``ModelOutput``.
    logit_fields: Tuple[str, ...] = ("logits",)
    #: Output names of :class:`~captum_mm.attr.Explanation` this family fills.
    outputs: Tuple[str, ...] = ("text", "image")
    #: The output each forward argument carries (``attribute`` spreads it over that input).
    argument_outputs: Mapping[str, str] = MappingProxyType({})

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def sites(self) -> List[AttentionSite]:
        raise NotImplementedError

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        """Raise ``ValueError`` if the model's forward arguments cannot be explained."""

    def extra_hooks(self, record: AttentionRecord) -> List[Any]:
        return []

    def gradient_free_modules(self) -> Tuple[nn.Module, ...]:
        """Modules no attention map depends on: their parameters are not made to require grad."""
        return ()

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        raise NotImplementedError

    def lrp_structure(self) -> LRPStructure:
        """Attention and residual sites for LRP (see :mod:`captum_mm.lrp.composite`)."""
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

    def select_targets(self, logits: Tensor, target: Any, **options: Any) -> TargetSelection:
        return select_class_targets(logits, target)

    def per_sample_outputs(self, logits: Tensor) -> Tensor:
        """``[B, ...]``: the outputs each sample's explanation depends on (checked to be finite)."""
        return logits

    def named_sites(self, root: nn.Module, suffix_reads: Sequence[Tuple[str, Any]]) -> List[AttentionSite]:
        """Sites for every module of ``root`` whose name ends with one of the given suffixes."""
        prefix = _name_of(self.model, root)
        found = []
        for name, module in root.named_modules():
            for suffix, read in suffix_reads:
                if name.endswith(suffix):
                    found.append(AttentionSite(prefix + name, module, read))
        return found


def _name_of(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name + "." if name else ""
    raise ValueError("module is not part of the model")


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


def token_mask(mask: Optional[Tensor], batch_size: int, length: int, device: torch.device) -> Tensor:
    """A ``[B, N]`` boolean mask from an optional HF attention mask (``None`` means all real)."""
    if mask is None:
        return torch.ones(batch_size, length, dtype=torch.bool, device=device)
    return mask.to(device=device) != 0


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_rank(arguments: Dict[str, Any], name: str, rank: int, meaning: str) -> None:
    """Raise if ``arguments[name]`` is given with the wrong rank or an empty token axis."""
    value = arguments.get(name)
    if value is None:
        return
    require(
        isinstance(value, Tensor) and value.dim() == rank,
        f"{name} must be a {rank}-D tensor {meaning}, got "
        + (f"shape {tuple(value.shape)}." if isinstance(value, Tensor) else f"{type(value).__name__}."),
    )
    require(value.shape[1] > 0, f"{name} has zero tokens (shape {tuple(value.shape)}): at least one is needed.")


def check_batch_sizes(arguments: Dict[str, Any], names: Sequence[str]) -> None:
    """Raise if the given tensor arguments disagree on the batch size."""
    sizes = {name: arguments[name].shape[0] for name in names if isinstance(arguments.get(name), Tensor)}
    require(
        len(set(sizes.values())) <= 1,
        "Batch sizes disagree: " + ", ".join(f"{name} has {size}" for name, size in sizes.items())
        + "; every input must have the same first dimension.",
    )


def dropout_probabilities(module: nn.Module) -> TensorSource:
    """Hand-written attention (LXMERT, VisualBERT, ViLT): the probabilities are its ``dropout``'s output."""
    return TensorSource(cast(nn.Module, module.dropout))


def second_output(module: nn.Module) -> TensorSource:
    """Attention-interface modules under eager attention return the probabilities second."""
    return TensorSource(module, index=1)


def bert_like_lrp_structure(
    model: nn.Module,
    attention_class: type,
    output_classes: Tuple[type, ...],
    pass_through_types: Tuple[type, ...] = (),
    probabilities: Callable[[nn.Module], TensorSource] = dropout_probabilities,
) -> LRPStructure:
    """LRP sites of post-norm BERT-style layers: attention modules with ``query``/``key``/``value``
    linears; output modules computing ``LayerNorm(dropout(dense(hidden_states)) + input_tensor)``."""
    attention = [
        AttentionRuleSite(m, m.query, m.key, m.value, probabilities(m), m.num_attention_heads)
        for m in _modules_of(model, attention_class)
    ]
    residuals = [
        ResidualRuleSite(TensorSource(m.LayerNorm, "input"), TensorSource(m.dropout), TensorSource(m, "input_tensor"))
        for m in _modules_of(model, output_classes)
    ]
    return LRPStructure(attention, residuals, pass_through_types)


def _modules_of(model: nn.Module, classes: type | Tuple[type, ...]) -> List[Any]:
    """The modules of ``model`` of these classes; their parts are then read by name (duck-typed)."""
    return [m for m in model.modules() if isinstance(m, classes)]


def pre_norm_residuals(
    layer: nn.Module, second_norm: nn.Module, attention: nn.Module, total: TensorSource, branch: TensorSource
) -> List[ResidualRuleSite]:
    """The two residual additions of a pre-norm layer (ViT, CLIP, ViLT):
    ``middle = attention(norm1(x)) + x`` (seen as ``second_norm``'s input) and
    ``total = branch + middle`` (the MLP block's addition)."""
    middle = TensorSource(second_norm, "input")
    return [
        ResidualRuleSite(middle, TensorSource(attention, index=0), TensorSource(layer, "hidden_states")),
        ResidualRuleSite(total, branch, middle),
    ]


def single_modality_schedule(
    record: AttentionRecord, selection: TargetSelection, modality: str, mask: Tensor, outputs: Dict[str, Any]
) -> Schedule:
    """A self-attention-only schedule: every recorded call is Eq. 6 on ``modality``, in forward order."""
    from captum_mm.relevance.schedule import AttentionEvent

    steps: List[Tuple[AttentionEvent, ...]] = [(AttentionEvent(index, modality, modality, call.site),) for index, call in enumerate(record.calls)]
    return Schedule(
        sizes={modality: mask.shape[1]}, masks={modality: mask[selection.sample]}, steps=steps, outputs=outputs,
        element_sample=selection.sample,
    )


#: The text arguments of HF text models.
TEXT_ARGUMENTS = MappingProxyType({"input_ids": "text", "inputs_embeds": "text"})


def check_text_arguments(arguments: Dict[str, Any], family: str) -> None:
    """The text arguments every text family takes: ``input_ids`` or ``inputs_embeds``, ``attention_mask``."""
    require(
        arguments.get("input_ids") is not None or arguments.get("inputs_embeds") is not None,
        f"{family} needs input_ids [batch, tokens] or inputs_embeds [batch, tokens, hidden].",
    )
    check_rank(arguments, "input_ids", 2, "[batch, tokens]")
    check_rank(arguments, "inputs_embeds", 3, "[batch, tokens, hidden]")
    check_rank(arguments, "attention_mask", 2, "[batch, tokens]")


def text_tokens(arguments: Dict[str, Any]) -> Tensor:
    """``input_ids``, or ``inputs_embeds`` when the model was called with embeddings."""
    return arguments["input_ids"] if arguments.get("input_ids") is not None else arguments["inputs_embeds"]
