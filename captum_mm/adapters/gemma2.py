"""Gemma 2 and Gemma 3 (text): Llama's attention and gated MLP (:mod:`captum_mm.adapters.llama`) in layers with four
RMSNorms, ``h = x + post_attention_norm(attention(input_norm(x)))``, then ``h + post_feedforward_norm(mlp(
pre_feedforward_norm(h)))``; alternating sliding-window (a mask) and full-attention layers; Gemma 3 adds QK-norm.

Gemma 2 soft-caps the attention scores (``cap * tanh(scores / cap)`` inside its eager function, config
``attn_logit_softcapping``) and the final logits (``final_logit_softcapping``); Gemma 3's attention takes no cap.
Both eager functions are Llama's but for the score cap, which lean capture and the float64 eager path compute as
Gemma 2's function does (:func:`captum_mm.capture.eager.soft_capped`): both are declared. LRP (docs/METHOD.md, "Gemma 2, Gemma 3"): the norms and both soft caps pass
relevance through (the backward is seeded so that the target's logit before the final cap gets relevance 1), the
attention rule reads its map whatever cap the scores had, and each residual branch ends at its post-norm. AttnLRP
(docs/METHOD.md, "AttnLRP"): both caps by the identity rule, the scores' cap declared in the attention parts
(``score_cap``), the final one at :meth:`Gemma2Adapter.value_lrp_start`.
"""

from dataclasses import replace
from types import MappingProxyType
from typing import Any, Dict, List, Tuple, cast

import torch
from torch import Tensor
from transformers import Gemma2ForCausalLM, Gemma3ForCausalLM
from transformers.models.gemma2.modeling_gemma2 import Gemma2Attention, Gemma2DecoderLayer, Gemma2MLP, Gemma2RMSNorm
from transformers.models.gemma3.modeling_gemma3 import Gemma3Attention, Gemma3DecoderLayer, Gemma3MLP, Gemma3RMSNorm

from captum_mm.adapters.decoder import SEQUENCE
from captum_mm.adapters.llama import LlamaAdapter, rotary_parts
from captum_mm._precision import exact
from captum_mm.lrp.composite import LRPState, LRPStructure, ResidualRuleSite
from captum_mm.lrp.rules import safe_divide
from captum_mm.models.arguments import require
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import attention_specs_in
from captum_mm.models.structure import first_argument
from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource, self_attention


@register_adapter
class Gemma2Adapter(LlamaAdapter):
    model_classes: Tuple[type, ...] = (Gemma2ForCausalLM, Gemma3ForCausalLM)
    attention_classes: Tuple[type, ...] = (Gemma2Attention, Gemma3Attention)
    layer_classes: Tuple[type, ...] = (Gemma2DecoderLayer, Gemma3DecoderLayer)
    mlp_classes: Tuple[type, ...] = (Gemma2MLP, Gemma3MLP)
    norm_classes: Tuple[type, ...] = (Gemma2RMSNorm, Gemma3RMSNorm)
    qk_norm_classes: Tuple[type, ...] = (Gemma3RMSNorm,)
    attention_functions = MappingProxyType({Gemma2Attention: True, Gemma3Attention: True})  # softmax in float32

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        super().check_arguments(arguments)
        text_config = cast(Any, self.model.config).get_text_config()
        require(not getattr(text_config, "use_bidirectional_attention", False),
                f"This {type(self.model).__name__} attends bidirectionally (config.use_bidirectional_attention): the "
                "decoder-only schedule explains causal LMs only; explain a model with use_bidirectional_attention=False.")

    def attention_specs(self) -> List[AttentionSpec]:  # Gemma 2's cap on the scores (Gemma 3's attention applies none)
        def parts(module: Any) -> AttentionParts:
            cap = module.attn_logit_softcapping if isinstance(module, Gemma2Attention) else None
            return replace(rotary_parts(module), score_cap=cap)

        return attention_specs_in(self.model, self.attention_classes, self_attention(SEQUENCE), parts)

    def lrp_structure(self) -> LRPStructure:
        residuals: List[ResidualRuleSite] = []
        layers: List[Any] = [module for module in self.model.modules() if isinstance(module, self.layer_classes)]
        for layer in layers:  # h = x + post_attention_norm(.), seen as the pre-feedforward norm's input; then the layer's output
            middle = TensorSource(layer.pre_feedforward_layernorm, first_argument(layer.pre_feedforward_layernorm))
            residuals += [
                ResidualRuleSite(middle, TensorSource(layer.post_attention_layernorm), TensorSource(layer, "hidden_states")),
                ResidualRuleSite(TensorSource(layer), TensorSource(layer.post_feedforward_layernorm), middle),
            ]
        return LRPStructure(residuals, self.norm_classes, self.gated_products(), self.qk_norm_classes)

    def lrp_start(self, state: LRPState, logits: Tensor, seeds: Tensor) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        """At the logits, seeded so that the target's logit before the final soft cap ``y = cap * tanh(u / cap)`` gets
        relevance 1 (the cap passes relevance through): ``u * g_u = 1`` with ``g_u = g_y * (1 - (y / cap)^2)``."""
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap is None:
            return super().lrp_start(state, logits, seeds)
        capped = exact(logits.detach()) / cap
        uncapped = cap * torch.atanh(capped)
        return (logits,), (safe_divide(seeds.to(capped.dtype), uncapped * (1 - capped**2)).to(logits.dtype),)

    def value_lrp_start(self, state: LRPState, logits: Tensor, seeds: Tensor) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        """The final soft cap passes relevance through (the identity rule): the logit before it gets the capped logit's
        value ``y`` as relevance (:meth:`lrp_start` with relevance ``y`` instead of 1)."""
        if getattr(self.model.config, "final_logit_softcapping", None) is None:
            return super().value_lrp_start(state, logits, seeds)
        return self.lrp_start(state, logits, seeds * logits.detach())
