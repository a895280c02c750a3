"""ViT: self-attention over ``[CLS] + h x w`` image patches (pre-norm layers).

Schedule (docs/METHOD.md, self-attention-only models): Eq. 6 for every layer; readout
the ``[CLS]`` row without its own entry, returned on the ``h x w`` patch grid.
Capture: the attention modules return the probabilities second under eager attention.
"""

from types import MappingProxyType
from typing import List

import torch
from transformers import ViTForImageClassification, ViTModel
from transformers.models.vit.modeling_vit import ViTAttention, ViTLayer

from captum_mm.capture.record import AttentionRecord
from captum_mm.lrp.composite import LRPStructure
from captum_mm.models.adapter import ArchitectureAdapter
from captum_mm.models.arguments import PIXELS, Argument
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import attention_specs_in, projected_parts
from captum_mm.models.structure import forward_order_schedule, pre_norm_structure
from captum_mm.models.targets import TargetSelection
from captum_mm.relevance.schedule import Readout, Schedule
from captum_mm.spec import AttentionSpec, self_attention

IMAGE = "image"


@register_adapter
class ViTAdapter(ArchitectureAdapter):
    model_classes = (ViTModel, ViTForImageClassification)
    attention_functions = MappingProxyType({ViTAttention: True})
    model: ViTModel | ViTForImageClassification
    arguments = MappingProxyType({"pixel_values": Argument(4, PIXELS, IMAGE, f"ViT needs pixel_values {PIXELS}.")})
    outputs = (IMAGE,)

    def attention_specs(self) -> List[AttentionSpec]:  # ViTAttention returns (output, probabilities) under eager attention
        parts = lambda m: projected_parts(m, m.num_attention_heads, m.o_proj)  # noqa: E731
        return attention_specs_in(self.model, ViTAttention, self_attention(IMAGE), parts)

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:  # Eq. 6 per layer
        pixels = record.arguments["pixel_values"]
        patch = self.model.config.patch_size
        grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
        mask = torch.ones(pixels.shape[0], 1 + grid[0] * grid[1], dtype=torch.bool, device=pixels.device)
        cls = torch.zeros_like(selection.sample)
        readout = {IMAGE: Readout(IMAGE, cls, IMAGE, slice(1, None), grid)}
        return forward_order_schedule(record, selection, {IMAGE: mask}, readout)

    def lrp_structure(self) -> LRPStructure:  # pre-norm: x + attention(norm(x)), then + mlp(norm(.))
        return pre_norm_structure(self.model, ViTLayer, "layernorm_after", "attention")
