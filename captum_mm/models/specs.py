"""Builders of attention specs for the usual module layouts."""

from typing import Any, Callable, List, Mapping, Optional, Tuple, cast

from torch import nn

from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource


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
