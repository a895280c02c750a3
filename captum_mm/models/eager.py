"""Eager attention as captum_mm computes it: each family's eager function, with an exact softmax in float64.

The eager functions of many families (LLaMA, OPT, CLIP, ... : :data:`LEAN_ATTENTION`'s True entries) take the
softmax in float32 and cast back. On a float64 model their additive mask (``finfo(float64).min``) becomes -inf
in float32, so a query row that sees no key (a left-padding row) turns NaN, and ``0 * NaN`` carries it into the
real tokens of every later layer. For float64 models captum_mm takes those softmaxes in float64: a fully masked
row is then uniform over the keys, as ``finfo.min`` masks give in float32, and the real rows are exact (they
differ from HF's eager function by its float32 rounding, and agree with HF's float64 SDPA). Every other dtype,
and every other module, gets the family's own eager function.
"""

import sys
from typing import Any, Callable, Dict, Optional, Set, Tuple, cast

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
from transformers.models.bart.modeling_bart import BartAttention
from transformers.models.bert.modeling_bert import BertCrossAttention, BertSelfAttention
from transformers.models.blip_2.modeling_blip_2 import Blip2Attention, Blip2QFormerMultiHeadAttention
from transformers.models.clip.modeling_clip import CLIPAttention
from transformers.models.detr.modeling_detr import DetrCrossAttention, DetrSelfAttention
from transformers.models.gemma.modeling_gemma import GemmaAttention
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
from transformers.models.idefics3.modeling_idefics3 import Idefics3VisionAttention
from transformers.models.llama.modeling_llama import LlamaAttention
from transformers.models.mistral.modeling_mistral import MistralAttention
from transformers.models.opt.modeling_opt import OPTAttention
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLAttention
from transformers.models.siglip.modeling_siglip import SiglipAttention
from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionAttention
from transformers.models.t5.modeling_t5 import T5Attention
from transformers.models.vit.modeling_vit import ViTAttention

#: Modules whose attention function captum_mm computes as their family's eager function does: the value
#: says whether that function takes the softmax in float32 (cast back after) or in the model's dtype.
LEAN_ATTENTION: Dict[type, bool] = {
    **dict.fromkeys((LlamaAttention, Qwen2Attention, MistralAttention, GemmaAttention, Qwen2VLAttention, OPTAttention,
                     CLIPAttention, SiglipAttention, Idefics3VisionAttention, SmolVLMVisionAttention, ViTAttention), True),
    **dict.fromkeys((BertSelfAttention, BertCrossAttention, BartAttention, GPT2Attention, DetrSelfAttention,
                     DetrCrossAttention, Blip2Attention, Blip2QFormerMultiHeadAttention, T5Attention), False),
}
#: The attention-interface key of :func:`exact_eager_attention`.
EXACT_EAGER = "captum_mm_exact_eager"


def family_eager(module: nn.Module) -> Callable[..., Tuple[Tensor, Tensor]]:
    """The eager attention function of ``module``'s family.

    Args:
        module (nn.Module): An attention module calling transformers' ``AttentionInterface``.

    Returns:
        *Callable*: its modeling file's ``eager_attention_forward``.
    """
    return cast(Callable[..., Tuple[Tensor, Tensor]], getattr(sys.modules[type(module).__module__], "eager_attention_forward"))


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
    float64 softmax for float64 queries of the families whose eager function takes it in float32.

    Args:
        module (nn.Module): The attention module calling it.
        query, key, value (Tensor): ``[B, H, N, d]`` (keys and values: ``H / groups`` heads).
        attention_mask (Tensor, optional): The additive mask, ``[B, 1, Nq, Nk]``.
        scaling (float, optional): The scores' scale. Default: ``d ** -0.5``
        dropout (float): The probabilities' dropout in training mode. Default: 0.0
        **kwargs: Passed on to the family's eager function.

    Returns:
        *tuple*: the ``[B, Nq, H, d]`` output and the ``[B, H, Nq, Nk]`` probabilities.
    """
    unhandled = kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None  # the family's own function applies them
    if query.dtype != torch.float64 or not LEAN_ATTENTION.get(type(module), False) or unhandled:
        return family_eager(module)(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    groups = query.shape[1] // key.shape[1]
    keys, values = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, keys.transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.dropout(torch.softmax(scores, dim=-1), p=dropout, training=module.training)
    return torch.matmul(probs, values).transpose(1, 2).contiguous(), probs


def exact_eager_configs(model: nn.Module) -> Set[int]:
    """The configs :func:`exact_eager_attention` serves.

    Args:
        model (nn.Module): The model.

    Returns:
        *set*: ``id`` of the configs of its modules whose family's eager function takes the softmax in float32.
    """
    return {id(module.config) for module in model.modules() if LEAN_ATTENTION.get(type(module), False) and hasattr(module, "config")}


AttentionInterface.register(EXACT_EAGER, exact_eager_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(EXACT_EAGER, eager_mask)
