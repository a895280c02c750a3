"""Which of a model's modules the installed LRP rules cover: LRP-based methods refuse a model with a block no rule
was written for on the path between the attention maps and the output (an unknown normalisation, an expert block),
rather than pass relevance through it unverified.

Checked: every module owning parameters or persistent buffers (a quantized layer may hold its weights as buffers only,
as GPTQ's) inside a transformer layer (the :class:`~torch.nn.ModuleList` entry holding
an attention module) and inside each attention module. Covered are linear modules (the linear rule, the attention's
projections among them), embeddings (position biases; relevance stops there), the attention modules, and the types
the adapter declares: pass-through types outside attention modules, ``LRPStructure.covered_types`` anywhere.
"""

from typing import Dict, Iterable, List, Sequence, Tuple

from torch import nn

from captum_mm.spec import AttentionSpec

ALWAYS_COVERED = (nn.Linear, nn.Embedding)


def _layer_of(name: str) -> str:
    """The innermost ``ModuleList`` entry enclosing module ``name`` (``model.layers.3`` for ``model.layers.3.self_attn``)."""
    parts = name.split(".")
    digits = [i for i, part in enumerate(parts) if part.isdigit()]
    return ".".join(parts[: digits[-1] + 1]) if digits else ""


def _within(name: str, roots: Iterable[str]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def _holds_weights(module: nn.Module) -> bool:
    persistent = [name for name in module._buffers if name not in module._non_persistent_buffers_set]
    return bool(persistent) or any(True for _ in module.parameters(recurse=False))


def uncovered_modules(
    model: nn.Module, attention: Sequence[AttentionSpec], linear_types: Tuple[type, ...], pass_through: Tuple[type, ...],
    covered: Tuple[type, ...],
) -> List[str]:
    """The modules owning parameters or persistent buffers that no rule covers, as ``"name (Class)"``.

    Args:
        model (nn.Module): The model.
        attention (sequence of AttentionSpec): Its attention modules with their parts.
        linear_types (tuple of type): Modules the linear rule serves.
        pass_through (tuple of type): Modules relevance passes through (outside attention modules).
        covered (tuple of type): Further types the adapter has rules for.

    Returns:
        *list of str*: Empty when every such module is covered.
    """
    names: Dict[nn.Module, str] = {module: name for name, module in model.named_modules()}
    attention_names = {names[spec.module] for spec in attention if spec.module in names}
    layers = {layer for layer in map(_layer_of, attention_names) if layer}
    found = []
    for name, module in model.named_modules():
        if not _holds_weights(module):
            continue
        inside_attention = _within(name, attention_names) and name not in attention_names
        if not (inside_attention or _within(name, layers)) or name in attention_names:
            continue
        allowed = ALWAYS_COVERED + linear_types + covered + (() if inside_attention else pass_through)
        if not isinstance(module, allowed):
            found.append(f"{name} ({type(module).__name__})")
    return found

