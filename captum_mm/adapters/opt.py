"""OPT: a decoder-only LM (learned absolute positions, q/k/v/out projections, the query scaled after its
projection), the LM of BLIP-2's OPT checkpoints; its attention modules return the probabilities second
under eager attention. Schedule and targets: :mod:`captum_mm.adapters.decoder`.

LRP (README, "LRP"): the attention rule reads the projections' outputs (the query's scaling cancels in the
z-rule's ratios); the layers are pre-norm (``x + attn(norm(x))``, then ``+ fc2(act(fc1(norm(.))))``), or
post-norm where ``config.do_layer_norm_before`` is False (OPT-350m); the feed-forward block runs on the
tokens flattened to ``[B * N, D]``, which the residual rule reads in the sum's layout.
"""

from types import MappingProxyType
from typing import Any, Dict, List, Optional

from torch import nn
from transformers import OPTForCausalLM
from transformers.models.opt.modeling_opt import OPTAttention, OPTDecoderLayer

from captum_mm.adapters.decoder import SEQUENCE, DecoderOnlyAdapter
from captum_mm.lrp.composite import LRPStructure, ResidualRuleSite
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import attention_specs_in, projected_parts
from captum_mm.models.structure import pre_norm_structure
from captum_mm.spec import AttentionSpec, TensorSource, self_attention


def opt_attention_specs(model: nn.Module, names: Optional[Dict[nn.Module, str]] = None) -> List[AttentionSpec]:
    """The self-attention of every OPT layer in ``model`` (an OPT LM, or a VLM holding one)."""
    return attention_specs_in(model, OPTAttention, self_attention(SEQUENCE),
                              lambda module: projected_parts(module, module.num_heads, module.out_proj), names=names)


def opt_lrp_structure(model: nn.Module) -> LRPStructure:
    """The two residual additions of every OPT layer in ``model``, pre- or post-norm as its config says."""
    layers: List[Any] = [module for module in model.modules() if isinstance(module, OPTDecoderLayer)]
    if all(layer.do_layer_norm_before for layer in layers):
        return pre_norm_structure(model, OPTDecoderLayer, "final_layer_norm", "self_attn",
                                  lambda layer: (TensorSource(layer), TensorSource(layer.fc2)))
    residuals = []  # post-norm: norm(x + attn(x)), then norm(. + fc2(act(fc1(.))))
    for layer in layers:
        residuals += [
            ResidualRuleSite(TensorSource(layer.self_attn_layer_norm, "input"), TensorSource(layer.self_attn, index=0),
                             TensorSource(layer, "hidden_states")),
            ResidualRuleSite(TensorSource(layer.final_layer_norm, "input"), TensorSource(layer.fc2),
                             TensorSource(layer.self_attn_layer_norm)),
        ]
    return LRPStructure(residuals)


@register_adapter
class OPTAdapter(DecoderOnlyAdapter):
    model_classes = (OPTForCausalLM,)
    attention_functions = MappingProxyType({OPTAttention: True})

    def attention_specs(self) -> List[AttentionSpec]:
        return opt_attention_specs(self.model)

    def lrp_structure(self) -> LRPStructure:
        return opt_lrp_structure(self.model)
