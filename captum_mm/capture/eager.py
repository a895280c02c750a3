"""Eager attention as captum_mm computes it: each family's eager function, with an exact softmax in float64.

The eager functions of many families (LLaMA, OPT, CLIP, ...: True in their adapter's ``attention_functions``,
:data:`AttentionFunctions`) take the softmax in float32 and cast back. On a float64 model their additive mask
(``finfo(float64).min``) becomes -inf in float32, so a query row that sees no key (a left-padding row) turns NaN, and ``0 * NaN`` carries it into the
real tokens of every later layer. For float64 models captum_mm takes those softmaxes in float64: a fully masked
row is then uniform over the keys, as ``finfo.min`` masks give in float32, and the real rows are exact (they
differ from HF's eager function by its float32 rounding, and agree with HF's float64 SDPA). Every other dtype,
and every other module, gets the family's own eager function.
"""

import sys
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple, cast

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from captum_mm._handles import Restore

#: An adapter's declaration of the attention modules whose forward calls transformers' ``AttentionInterface``
#: with their family's ``eager_attention_forward`` (lean capture and this module compute it): module class (its
#: exact type) -> whether that function takes the softmax in float32 (cast back after) or in the model's dtype.
AttentionFunctions = Mapping[type, bool]
#: No module declared: every module gets its family's own eager function, none is captured lean.
NO_ATTENTION_FUNCTIONS: AttentionFunctions = MappingProxyType({})
#: The declaration of the model being explained (:func:`declare_attention_functions`).
_declared: ContextVar[AttentionFunctions] = ContextVar("captum_mm_attention_functions", default=NO_ATTENTION_FUNCTIONS)
#: The attention-interface key of :func:`exact_eager_attention`.
EXACT_EAGER = "captum_mm_exact_eager"


def family_eager(module: nn.Module) -> Callable[..., Tuple[Tensor, Tensor]]:
    """The eager attention function of ``module``'s family.

    Args:
        module (nn.Module): An attention module calling transformers' ``AttentionInterface``.

    Returns:
        *Callable*: the ``eager_attention_forward`` of the modeling file of its class or, for a class defined
        elsewhere (a user's subclass), of its nearest base class's.

    Raises:
        TypeError: No class in the module's method resolution order comes from a file defining one.
    """
    for cls in type(module).__mro__:
        function = getattr(sys.modules.get(cls.__module__), "eager_attention_forward", None)
        if function is not None:
            return cast(Callable[..., Tuple[Tensor, Tensor]], function)
    raise TypeError(f"{type(module).__name__} called transformers' AttentionInterface, but neither its modeling file nor "
                    "a base class's defines eager_attention_forward: its attention cannot be computed eagerly.")


def family_softmax(scores: Tensor, float32_softmax: bool) -> Tensor:
    """The softmax over the last dimension as the family's eager function takes it, except in float64, where it
    is exact (see the module).

    Args:
        scores (Tensor): The masked, scaled scores.
        float32_softmax (bool): The family's eager function takes it in float32 and casts back.

    Returns:
        *Tensor*: the probabilities, in the scores' dtype.
    """
    if float32_softmax and scores.dtype != torch.float64:
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    return torch.softmax(scores, dim=-1)


def soft_capped(scores: Tensor, cap: Optional[float]) -> Tensor:
    """Gemma 2's attention-logit soft cap, ``cap * tanh(scores / cap)``, as its eager function applies it (before the
    mask); the scores themselves without a cap.

    Args:
        scores (Tensor): The scaled scores.
        cap (float, optional): The cap (the ``softcap`` argument of the attention function).

    Returns:
        *Tensor*: the capped scores.
    """
    return scores if cap is None else torch.tanh(scores / cap) * cap


def exact_eager_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Optional[Tensor],
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> Tuple[Tensor, Tensor]:
    """The attention function registered under :data:`EXACT_EAGER`: the family's eager function, computed with a
    float64 softmax for float64 queries of the modules declared to take it in float32
    (:func:`declare_attention_functions`).

    Args:
        module (nn.Module): The attention module calling it.
        query, key, value (Tensor): ``[B, H, N, d]`` (keys and values: ``H / groups`` heads).
        attention_mask (Tensor, optional): The additive mask, ``[B, 1, Nq, Nk]``.
        scaling (float, optional): The scores' scale. Default: ``d ** -0.5``
        dropout (float): The probabilities' dropout in training mode. Default: 0.0
        **kwargs: Passed on to the family's eager function (``softcap``: Gemma 2's soft cap, applied).

    Returns:
        *tuple*: the ``[B, Nq, H, d]`` output and the ``[B, H, Nq, Nk]`` probabilities.
    """
    unhandled = kwargs.get("s_aux") is not None  # the family's own function applies the sinks
    if query.dtype != torch.float64 or not _declared.get().get(type(module), False) or unhandled:
        return family_eager(module)(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    groups = query.shape[1] // key.shape[1]
    keys, values = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, keys.transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    scores = soft_capped(scores, kwargs.get("softcap"))
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.dropout(torch.softmax(scores, dim=-1), p=dropout, training=module.training)
    return torch.matmul(probs, values).transpose(1, 2).contiguous(), probs


def exact_eager_configs(model: nn.Module, attention_functions: AttentionFunctions) -> Set[int]:
    """The configs :func:`exact_eager_attention` serves.

    Args:
        model (nn.Module): The model.
        attention_functions (AttentionFunctions): Its adapter's declaration.

    Returns:
        *set*: ``id`` of the configs of its modules whose family's eager function takes the softmax in float32.
    """
    return {id(module.config) for module in model.modules() if attention_functions.get(type(module), False) and hasattr(module, "config")}


def model_configs(model: nn.Module) -> List[Any]:
    """Every distinct HF config reachable from the model's modules, sub-configs included.

    Args:
        model (nn.Module): The model.

    Returns:
        *list*: the configs with an attention implementation.
    """
    found: Dict[int, Any] = {}
    pending = [module.config for module in model.modules() if hasattr(module, "config")]
    while pending:
        config = pending.pop()
        if id(config) in found or not hasattr(config, "_attn_implementation_internal"):
            continue
        found[id(config)] = config
        for key in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, key, None)
            if sub is not None:
                pending.append(sub)
    return list(found.values())


def declare_attention_functions(attention_functions: AttentionFunctions) -> Restore:
    """Make ``attention_functions`` the declaration :func:`exact_eager_attention` reads (it is called by
    transformers, which passes the module alone) until the returned handle is removed.

    Args:
        attention_functions (AttentionFunctions): The explained model's adapter's declaration.

    Returns:
        *Restore*: the handle restoring the declaration before.
    """
    token = _declared.set(attention_functions)
    return Restore(lambda: _declared.reset(token))


AttentionInterface.register(EXACT_EAGER, exact_eager_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(EXACT_EAGER, eager_mask)
