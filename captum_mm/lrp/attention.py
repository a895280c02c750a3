"""The attention rule site: relevance from an attention module's output to its query, key and value
projections and to its map ``R_A`` (the probe of the recorded call).

The rule (:class:`~captum_mm.lrp.rules.HalvedAttention`) works on the operands of the matmuls as the
model's attention function sees them. Two blocks between the projections and those operands are
bias-free linear maps, for which the z-rule is the transpose of the map (the relevance is conserved):
rotary position embeddings (``x cos + rotate_half(x) sin``, transposed ``g cos - rotate_half(g sin)``)
applied to queries and keys, and grouped-query attention's key/value heads repeated over the query
heads (transposed: the sum over each group). QK-norm (Qwen3, Qwen3-MoE, Gemma 3: a normalisation of each head's queries
and keys before the rotation) passes relevance unchanged, as RMSNorm does elsewhere: the rule reads the normalised
operands (the norm recomputed from the projections' outputs) and hands each element's relevance to the same element
of the projection's output. A fused projection (GPT-2's ``c_attn``) is split into
Q, K and V; its modified gradient is theirs concatenated in the same order.
"""

from typing import Any, Callable, Dict, Optional, Tuple, cast

import torch
from torch import Tensor, nn

from captum_mm._handles import ForwardHook, KwargsPreHook
from captum_mm._precision import accumulation_dtype, exact
from captum_mm.capture.record import AttentionRecord
from captum_mm.lrp.rules import HalvedAttention, LinearRule, PassThrough
from captum_mm.lrp.switch import LRPState, Switch
from captum_mm.spec import AttentionParts, AttentionSpec


def split_heads(tensor: Tensor, heads: int) -> Tensor:
    """``[B, N, heads * d]`` to ``[B, heads, N, d]``."""
    return tensor.reshape(*tensor.shape[:-1], heads, -1).transpose(-2, -3)


def merge_heads(tensor: Tensor, like: Tensor) -> Tensor:
    """``[B, heads, N, d]`` back to ``like``'s ``[B, N, heads * d]``."""
    return tensor.transpose(-2, -3).reshape(like.shape)


def rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """HF's rotary position embedding of ``[B, H, N, d]`` heads, with ``cos``/``sin`` ``[B, N, r]``: the first
    ``r`` features of each head rotate, the others pass unchanged (partial rotary, Phi-3's ``partial_rotary_factor``)."""
    rotated, kept = x.split([cos.shape[-1], x.shape[-1] - cos.shape[-1]], dim=-1)
    return torch.cat((rotated * cos[:, None] + rotate_half(rotated) * sin[:, None], kept), dim=-1)


def rotary_transposed(g: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """The transpose of :func:`rotary` applied to ``g``: its modified gradient back to the unrotated heads."""
    rotated, kept = g.split([cos.shape[-1], g.shape[-1] - cos.shape[-1]], dim=-1)
    return torch.cat((rotated * cos[:, None] - rotate_half(rotated * sin[:, None]), kept), dim=-1)


def repeat_heads(x: Tensor, groups: int) -> Tensor:
    """Key/value heads ``[B, H_kv, N, d]`` repeated for ``H_kv * groups`` query heads (as HF's ``repeat_kv``)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def sum_groups(g: Tensor, groups: int) -> Tensor:
    """The transpose of :func:`repeat_heads`: each key/value head gets the sum over its query heads."""
    return g if groups == 1 else g.reshape(g.shape[0], -1, groups, *g.shape[2:]).sum(2)


def normalised(norm: Optional[nn.Module], heads: Tensor) -> Tensor:
    """QK-norm's output for the projected heads ``[B, H, N, d]`` (its ``forward``: no hook runs; a norm over ``d``
    gives the same values in any layout of the other dimensions); the heads themselves without a norm."""
    return heads if norm is None else norm.forward(heads)


def through_norm(norm: Optional[nn.Module], heads: Tensor, normed: Tensor, g_normed: Tensor) -> Tensor:
    """The modified gradient at QK-norm's input ``heads`` for ``g_normed`` at its output ``normed``: each element's
    relevance passed unchanged (unchanged without a norm)."""
    return g_normed if norm is None else PassThrough().input_gradient(heads, normed, g_normed)


def split_fused(parts: AttentionParts, fused: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """A fused projection's output ``[B, N, (heads + 2 * key_value_heads) * d]`` as its ``(Q, K, V)``."""
    kv_heads = parts.key_value_heads or parts.heads
    head_size = fused.shape[-1] // (parts.heads + 2 * kv_heads)
    query, key, value = fused.split([parts.heads * head_size, kv_heads * head_size, kv_heads * head_size], dim=-1)
    return query, key, value


def attention_operands_gradients(
    rule: HalvedAttention,
    parts: AttentionParts,
    projected: Tuple[Tensor, Tensor, Tensor],
    probs: Tensor,
    g_context: Tensor,
    position: Optional[Tuple[Tensor, Tensor]],
    scaling: Optional[float] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(g_query, g_key, g_value, R_A)`` for the projections' outputs ``projected`` (``[B, N, heads * d]``),
    given the modified gradient ``g_context`` of the heads' context ``[B, H, N, d]`` (``scaling``: :func:`score_scale`)."""
    query, key, value = projected
    kv_heads = parts.key_value_heads or parts.heads
    groups = parts.heads // kv_heads
    normed_q, back_q = normed_heads(parts.query_norm, query, parts.heads, parts.norm_spans_heads)
    normed_k, back_k = normed_heads(parts.key_norm, key, kv_heads, parts.norm_spans_heads)
    v = split_heads(value, kv_heads)
    q, k = (normed_q, normed_k) if position is None else (rotary(normed_q, *position), rotary(normed_k, *position))
    operands = (q, repeat_heads(k, groups), repeat_heads(v, groups), probs, g_context)
    factor = {"scaling": scaling, "cap": parts.score_cap} if rule.reads_scaling else {}  # for the rules reading them (AttnLRP's)
    g_q, g_k, g_v, relevance = cast(Callable[..., Tuple[Tensor, Tensor, Tensor, Tensor]], rule.gradients)(*operands, **factor)
    g_k, g_v = sum_groups(g_k, groups), sum_groups(g_v, groups)
    if position is not None:
        g_q, g_k = rotary_transposed(g_q, *position), rotary_transposed(g_k, *position)
    return back_q(g_q), back_k(g_k), merge_heads(g_v, value), relevance


def normed_heads(norm: Optional[nn.Module], projected: Tensor, heads: int, spans_heads: bool
                 ) -> Tuple[Tensor, Callable[[Tensor], Tensor]]:
    """A projection's heads after QK-norm, ``[B, H, N, d]``, and how a modified gradient at them returns to the
    projection's output ``[B, N, H * d]`` (through the norm: relevance passed unchanged).

    Args:
        norm (nn.Module, optional): The QK-norm (None: none).
        projected (Tensor): The projection's output.
        heads (int): Its heads.
        spans_heads (bool): The norm is over all heads' features together (InternViT), not each head's.

    Returns:
        *tuple*: The heads, and the way back.
    """
    if spans_heads:
        normed = normalised(norm, projected)
        return split_heads(normed, heads), lambda g: through_norm(norm, projected, normed, merge_heads(g, projected))
    own = split_heads(projected, heads)
    normed = normalised(norm, own)
    return normed, lambda g: merge_heads(through_norm(norm, own, normed, g), projected)


def score_scale(module: nn.Module) -> Optional[float]:
    """The factor of ``Q K^T`` in an attention module's scores, as the module holds it (``scaling``, CLIP's ``scale``,
    ``1 / sqrt(attention_head_size)`` of BERT-style hand-written attention); None where it holds none of these."""
    for name in ("scaling", "scale"):
        value = getattr(module, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    head_size = getattr(module, "attention_head_size", None)
    return float(head_size) ** -0.5 if isinstance(head_size, int) else None


def position_keeper(positions: Dict[int, Tuple[Tensor, Tensor]]) -> KwargsPreHook:
    """Keeps the ``(cos, sin)`` an attention module receives as ``position_embeddings`` (HF rotary families)."""

    def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        embeddings = kwargs.get("position_embeddings")
        if embeddings is None:
            raise ValueError(f"{type(module).__name__} was called without position_embeddings (cos, sin): its rotary "
                             "embeddings cannot be followed by LRP.")
        positions[id(module)] = embeddings

    return hook


def attention_hook(
    state: LRPState,
    rules: Tuple[HalvedAttention, LinearRule],
    record: AttentionRecord,
    spec: AttentionSpec,
    positions: Dict[int, Tuple[Tensor, Tensor]],
) -> ForwardHook:
    """The attention rule (and the output projection's linear rule) at ``spec.module``'s first output;
    the probe goes to the call just recorded (its probabilities were recorded before the module returned)."""
    parts = cast(AttentionParts, spec.parts)
    attention_rule, projection_rule = rules

    def hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> Any:
        projected = tuple(state.output_of(linear) for linear in parts.qkv_modules)
        call = record.latest(spec)
        attention = cast(Tensor, call.probs)  # LRP captures eager
        call.probe = torch.zeros((), dtype=accumulation_dtype(attention.dtype), device=attention.device,
                                 requires_grad=True).expand(attention.shape)
        projection = (parts.projection, state.linear_io[id(parts.projection)]) if parts.projection is not None else None
        position = tuple(exact(t) for t in positions[id(module)]) if parts.rotary else None
        scaling = score_scale(module)

        def rule(g: Tensor) -> Tuple[Tensor, ...]:
            if projection is not None:
                linear, (x, out) = projection
                g = projection_rule.input_gradient(linear, exact(x), exact(out), g)
            # a 2-D ``[tokens, features]`` layout holds the whole batch's tokens in one sequence (Qwen2-VL's vision
            # tower, one image after another): seen here as ``[images, tokens, features]``, as its maps are
            batched = (lambda t: t.reshape(attention.shape[0], -1, t.shape[-1])) if g.dim() == 2 else (lambda t: t)
            # keys and values may also come in another layout of the same tokens (Mllama's features: [images * tiles, ...];
            # a 2-D layout: the batch's tokens in one sequence)
            outputs = tuple(exact(t).reshape(attention.shape[0], -1, t.shape[-1]) for t in projected)
            operands = split_fused(parts, outputs[0]) if parts.fused else cast(Tuple[Tensor, Tensor, Tensor], outputs)
            g_query, g_key, g_value, relevance = attention_operands_gradients(
                attention_rule, parts, operands, exact(attention), split_heads(batched(g), parts.heads),
                cast(Optional[Tuple[Tensor, Tensor]], None if position is None else tuple(batched(t) for t in position)),
                scaling,
            )
            gradients = (torch.cat((g_query, g_key, g_value), dim=-1),) if parts.fused else (g_query, g_key, g_value)
            return (*(gradient.reshape(t.shape) for gradient, t in zip(gradients, projected)), relevance)

        first = output[0] if isinstance(output, tuple) else output
        switched = Switch.apply(first, state.mode, rule, *projected, call.probe)
        return (switched,) + tuple(output[1:]) if isinstance(output, tuple) else switched

    return hook
