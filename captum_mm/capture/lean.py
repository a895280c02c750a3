"""Lean attention capture: attention recorded inside transformers' attention function without keeping
its per-head probabilities.

A model whose attention modules call transformers' ``AttentionInterface`` is switched, while it is
explained, to the function registered here under :data:`LEAN`. Its forward computes attention row chunk by row
chunk, each chunk over the leading keys its rows see (:mod:`captum_mm.capture.chunks`), keeping nothing per head: by
SDPA's fused kernel where only the output is needed (float32 and float64 without a soft cap: the eager function's
values to rounding), else as the family's eager function does (for a method that needs no gradient, also the head
mean of the probabilities, ``[B, Nq, Nk]``, or, streamed, its queries and keys to recompute it after the forward:
:func:`recomputed_head_means`). Its backward (a custom autograd function) recomputes the probabilities chunk by
chunk, the query heads of each key/value head in one matrix product, and returns the standard ``dQ, dK, dV`` and,
for the method's declared :data:`Fusion`, that call's head-reduced map for the backward's seed: Eq. 5's
``mean_h((dA * A)^+)`` or attention Grad-CAM's ``(mean_h(w_h A_h))^+``, kept whole or handed chunk by chunk to its
request's sink (:mod:`captum_mm.capture.requests`; streamed readout rows). Peak memory beyond an SDPA forward
and backward: a chunk's temporaries, and one ``[B, Nq, Nk]`` map per call where the map is kept.

The eager path (every call's ``[B, H, Nq, Nk]`` probabilities in the graph) stays as the fallback and
the test oracle: LRP-based methods need the probabilities themselves, and modules their adapter's
``attention_functions`` (:data:`~captum_mm.capture.eager.AttentionFunctions`) leave out are recorded as before. Float64
models get an exact float64 softmax (:mod:`captum_mm.capture.eager`).
"""

from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from captum_mm._precision import accumulation_dtype, exact
from captum_mm.capture.chunks import remembered_row_chunks, row_chunks, start_remembering, stop_remembering
from captum_mm.capture.eager import AttentionFunctions, exact_eager_attention, family_softmax, soft_capped
from captum_mm.capture.requests import Fusion, LeanMaps, LeanRequest, MapBuffer, MapSink, lean_backward
from captum_mm.relevance.heads import head_mean, weighted_head_mean

__all__ = ["LEAN", "Fusion", "LeanMaps", "LeanRequest", "LeanSite", "MapSink", "lean_attention", "lean_backward", "lean_module",
           "recomputed_head_means", "recording", "stop_recording"]

#: The attention-interface key lean capture switches a model's configs to.
LEAN = "captum_mm_lean"

@dataclass
class LeanSite:
    """A module under lean capture, as the lean function finds it: ``record(head_mean, maps)`` keeps each call
    (``head_mean`` ``[B, Nq, Nk]`` when ``forward_fusion`` is ``"head_mean"``, else None); ``float32_softmax``:
    its family's eager function takes the softmax in float32."""

    record: Callable[[Optional[Tensor], LeanMaps, Optional[Callable[[MapSink], None]]], None]
    forward_fusion: Optional[Fusion]
    spec: Any  # the AttentionSpec it serves
    float32_softmax: bool
    recomputed: bool = False  # a "head_mean" recomputed after the forward (recomputed_head_means), not kept by it


_sites: ContextVar[Optional[Dict[int, LeanSite]]] = ContextVar("captum_mm_lean_sites", default=None)


def lean_module(module: nn.Module, attention_functions: AttentionFunctions) -> Optional[nn.Module]:
    """The module inside ``module`` (or itself) whose attention function lean capture can compute (its exact type
    declared in ``attention_functions``), if exactly one."""
    found = [m for m in module.modules() if type(m) in attention_functions]
    return found[0] if len(found) == 1 else None


def lean_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Optional[Tensor],
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> Tuple[Tensor, Optional[Tensor]]:
    """The attention function registered under :data:`LEAN`: for a recorded module, attention without its
    per-head probabilities (returned as None); for any other module, its family's eager function."""
    sites = _sites.get()
    site = None if sites is None else sites.get(id(module))
    if site is None:
        return exact_eager_attention(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if dropout > 0 or kwargs.get("s_aux") is not None:
        raise ValueError(f"{type(module).__name__} called its attention with dropout or attention sinks, "
                         "which lean capture does not compute: explain the model in eval mode, or set lean = False on the method.")
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    probe = torch.zeros(1, dtype=query.dtype, device=query.device, requires_grad=torch.is_grad_enabled())
    maps = LeanMaps(probe, (query.shape[0], query.shape[1], query.shape[2], key.shape[2]))
    chunks = remembered_row_chunks(query, key.shape[2], attention_mask)
    options = _Options(scale, query.shape[1] // key.shape[1], site.float32_softmax,
                       None if site.recomputed else site.forward_fusion, maps, chunks, kwargs.get("softcap"))
    bias = kwargs.get("position_bias")  # T5's relative position bias, added to the scores before the mask
    output, mean = _LeanAttention.apply(query, key, value, attention_mask, bias, maps.probe, options)
    site.record(mean, maps, partial(recomputed_head_means, query.detach(), key.detach(), attention_mask, bias, options)
                if site.recomputed else None)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(LEAN, lean_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(LEAN, eager_mask)  # the additive masks eager attention takes


@dataclass(frozen=True)
class _Options:
    scaling: float
    groups: int  # query heads per key/value head
    float32_softmax: bool
    forward_fusion: Optional[Fusion]
    maps: LeanMaps
    chunks: List[Tuple[slice, slice]]  # rows, and the leading keys they see
    softcap: Optional[float] = None  # Gemma 2's cap on the scaled scores


def _grouped(states: Tensor, groups: int) -> Tensor:
    """Per-head ``[B, H, rows, n]`` as ``[B, H / groups, groups * rows, n]``: the query heads of each key/value head
    stacked, so that one matrix product per key/value head serves them all."""
    return states.unflatten(1, (-1, groups)).flatten(2, 3)


def _per_head(grouped: Tensor, heads: int) -> Tensor:
    """:func:`_grouped`'s inverse for a contiguous ``grouped`` (a view)."""
    return grouped.view(grouped.shape[0], heads, -1, grouped.shape[-1])


def _scores(query: Tensor, key: Tensor, rows: slice, options: _Options, columns: slice) -> Tensor:
    grouped = _grouped(query[:, :, rows] * options.scaling, options.groups)
    return _per_head(torch.matmul(grouped, key[:, :, columns].transpose(-1, -2)), query.shape[1])


def _cap_slope(query: Tensor, key: Tensor, rows: slice, options: _Options, columns: slice) -> Tensor:
    """The soft cap's derivative at the scores, ``1 - tanh(scores / cap)^2``."""
    return 1 - torch.tanh(_scores(query, key, rows, options, columns) / cast(float, options.softcap)) ** 2


def _probabilities(query: Tensor, key: Tensor, bias: Optional[Tensor], mask: Optional[Tensor], rows: slice,
                   options: _Options, columns: slice) -> Tensor:
    """``softmax(cap(Q K^T * scaling) + bias + mask)`` for ``rows`` of the queries over the keys ``columns`` (all the
    keys they see), as the family's eager function computes it (``cap``: Gemma 2's soft cap, if any)."""
    scores = soft_capped(_scores(query, key, rows, options, columns), options.softcap)
    if bias is not None:
        scores += bias[:, :, rows, columns]
    if mask is not None:
        scores += mask[:, :, rows, columns]
    return family_softmax(scores, options.float32_softmax)


class _LeanAttention(torch.autograd.Function):
    """``softmax(cap(Q K^T * scaling) + bias + mask) V`` per head, ``[B, H, Nq, d]`` (``bias``: T5's position bias), and (forward fusion ``head_mean``)
    the head mean of the probabilities; backward recomputes them chunk by chunk (see the module)."""

    @staticmethod
    def forward(query: Tensor, key: Tensor, value: Tensor, mask: Optional[Tensor], bias: Optional[Tensor], probe: Tensor,
                options: _Options) -> Tuple[Tensor, Optional[Tensor]]:
        output = query.new_empty(*query.shape[:3], value.shape[-1])
        mean = None
        if options.forward_fusion == "head_mean":  # in the precision methods reduce heads in
            mean = query.new_zeros(query.shape[0], query.shape[2], key.shape[2], dtype=accumulation_dtype(query.dtype))
        fused = mean is None and _fused_forward(query, mask, bias, options)
        for rows, columns in options.chunks:
            if fused:
                output[:, :, rows] = _fused_rows(query, key, value, bias, mask, rows, options, columns)
                continue
            probs = _probabilities(query, key, bias, mask, rows, options, columns)
            output[:, :, rows] = _per_head(torch.matmul(_grouped(probs, options.groups), value[:, :, columns]), query.shape[1])
            if mean is not None:
                mean[:, rows, columns] = head_mean(exact(probs))
        return output, mean

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
        query, key, value, mask, bias, _, options = inputs
        ctx.save_for_backward(query, key, value, mask, bias)
        ctx.options, ctx.chunks = options, options.chunks
        ctx.mark_non_differentiable(*(t for t in output[1:] if t is not None))

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _: Any) -> Tuple[Optional[Tensor], ...]:
        query, key, value, mask, bias = ctx.saved_tensors
        options: _Options = ctx.options
        maps, exact_dtype = options.maps, accumulation_dtype(query.dtype)
        request = maps._exchange.request  # None: this backward computes no map of this call
        fusion = None if request is None else request.fusion
        grad_query, grad_key, grad_value = torch.empty_like(query), torch.zeros_like(key), torch.zeros_like(value)
        grad_bias = torch.zeros_like(bias) if ctx.needs_input_grad[4] else None
        sink = None if request is None else (request.sink or MapBuffer(query.new_zeros(query.shape[0], query.shape[2], key.shape[2], dtype=exact_dtype)))
        gradient_sums = query.new_zeros(query.shape[0], query.shape[1], 1, 1, dtype=exact_dtype)  # Grad-CAM: dA over real entries
        every = slice(0, key.shape[2])
        chunks = row_chunks(query, key.shape[2], None) if fusion == "grad_cam" else ctx.chunks  # Grad-CAM's mean: every key
        heads, groups = query.shape[1], options.groups
        for rows, columns in chunks:
            probs = _probabilities(query, key, bias, mask, rows, options, columns)
            grad_chunk = _grouped(grad_output[:, :, rows], groups)
            grad_probs = _per_head(torch.matmul(grad_chunk, value[:, :, columns].transpose(-1, -2)), heads)
            grad_value[:, :, columns] += torch.matmul(_grouped(probs, groups).transpose(-1, -2), grad_chunk)
            if fusion == "grad_cam":
                real = _real(cast(LeanRequest, request), rows).to(grad_probs.device)
                gradient_sums += (exact(grad_probs) * real[:, None]).sum(dim=(-2, -1), keepdim=True)
            weighted = exact(grad_probs).mul_(exact(probs))  # A * dA, which Eq. 5 reuses
            if fusion == "gradient_weighted":
                cast(MapSink, sink).add(rows, columns, weighted.clamp(min=0).mean(dim=-3))
            # softmax's backward: A * dA - A * rowsum(A * dA)
            grad_logits = weighted.addcmul_(exact(probs), weighted.sum(-1, keepdim=True), value=-1).to(probs.dtype)
            if grad_bias is not None:
                grad_bias[:, :, rows, columns] += grad_logits.sum(0, keepdim=True) if grad_bias.shape[0] == 1 else grad_logits
            if options.softcap is not None:  # the scores before the cap
                grad_logits = grad_logits * _cap_slope(query, key, rows, options, columns)
            grad_logits = _grouped(grad_logits, groups)
            grad_query[:, :, rows] = _per_head(torch.matmul(grad_logits, key[:, :, columns]), heads).mul_(options.scaling)
            grad_key[:, :, columns] += torch.matmul(grad_logits.transpose(-1, -2), _grouped(query[:, :, rows], groups)).mul_(options.scaling)
        if fusion == "grad_cam":  # a second pass: each head weighted by its mean gradient over the real entries
            count = (cast(LeanRequest, request).rows.sum(-1) * cast(LeanRequest, request).columns.sum(-1)).clamp(min=1)
            weights = gradient_sums / count.to(gradient_sums)[:, None, None, None]
            for rows, _ in chunks:
                if cast(MapSink, sink).wants(rows):  # a streamed readout row's chunk only
                    probs = exact(_probabilities(query, key, bias, mask, rows, options, every))
                    cast(MapSink, sink).add(rows, every, weighted_head_mean(weights, probs))
        if sink is not None:
            sink.close()
        maps._exchange.fused = sink.values if isinstance(sink, MapBuffer) else None
        return grad_query, grad_key, grad_value, None, grad_bias, torch.zeros_like(maps.probe), None


def _fused_forward(query: Tensor, mask: Optional[Tensor], bias: Optional[Tensor], options: _Options) -> bool:
    """Whether SDPA's fused kernel computes the call's output as the eager function does, to rounding: float32 or float64
    (half-precision eager functions round the probabilities before multiplying), additive terms of the queries' dtype,
    no soft cap."""
    same_dtype = all(t is None or t.dtype == query.dtype for t in (mask, bias))
    return options.softcap is None and query.dtype in (torch.float32, torch.float64) and same_dtype


def _fused_rows(query: Tensor, key: Tensor, value: Tensor, bias: Optional[Tensor], mask: Optional[Tensor], rows: slice,
                options: _Options, columns: slice) -> Tensor:
    """``rows`` of the output over the keys ``columns``, by SDPA (no ``[B, H, rows, columns]`` probabilities stored)."""
    additive = bias[:, :, rows, columns] if bias is not None else None
    if mask is not None:
        additive = mask[:, :, rows, columns] if additive is None else additive + mask[:, :, rows, columns]
    return F.scaled_dot_product_attention(query[:, :, rows], key[:, :, columns], value[:, :, columns], attn_mask=additive,
                                          scale=options.scaling, enable_gqa=options.groups > 1)


def _real(request: LeanRequest, rows: slice) -> Tensor:
    """``[B, rows, Nk]`` the entries between real tokens."""
    return request.rows[:, rows, None] & request.columns[:, None, :]


def recording(sites: Dict[int, LeanSite]) -> Any:
    """Make ``sites`` (id of a module under lean capture: its site) the modules the lean function records;
    returns the tokens to :func:`stop_recording` with."""
    return _sites.set(sites), start_remembering()


def stop_recording(tokens: Any) -> None:
    _sites.reset(tokens[0])
    stop_remembering(tokens[1])


def recomputed_head_means(query: Tensor, key: Tensor, mask: Optional[Tensor], bias: Optional[Tensor], options: _Options,
                          sink: MapSink) -> None:
    """A call's head-mean map, recomputed after its forward chunk by chunk as its forward would have kept it, each
    chunk ``sink`` wants handed to it (rollout and raw attention streamed: no ``[B, Nq, Nk]`` map per call kept).

    Args:
        query, key (Tensor): The call's ``[B, H, Nq, d]`` queries and ``[B, H_kv, Nk, d]`` keys.
        mask, bias (Tensor, optional): Its additive mask and position bias.
        options (_Options): Its options.
        sink (MapSink): Takes the map's chunks ``[B, rows, columns]``.
    """
    with torch.no_grad():
        for rows, columns in options.chunks:
            if sink.wants(rows):
                sink.add(rows, columns, head_mean(exact(_probabilities(query, key, bias, mask, rows, options, columns))))
    sink.close()
