"""ViT: self-attention over ``[CLS] + h x w`` image patches (pre-norm layers).

Schedule (docs/METHOD.md, self-attention-only models): Eq. 6 for every layer; readout
the ``[CLS]`` row without its own entry, returned on the ``h x w`` patch grid.
Capture: the attention modules return the probabilities second under eager attention.
"""

from typing import Any, Dict, List

from types import MappingProxyType

import torch
from transformers import ViTForImageClassification, ViTModel
from transformers.models.vit.modeling_vit import ViTLayer

from captum_mm.lrp.composite import AttentionRuleSite, LRPStructure, TensorSource
from captum_mm.models.base import (
    ArchitectureAdapter,
    TargetSelection,
    check_batch_sizes,
    check_rank,
    pre_norm_residuals,
    require,
    second_output,
    single_modality_schedule,
)
from captum_mm.models.capture import AttentionRecord, AttentionSite
from captum_mm.models.registry import register_adapter
from captum_mm.relevance.schedule import Readout, Schedule

IMAGE = "image"


@register_adapter
class ViTAdapter(ArchitectureAdapter):
    model_classes = (ViTModel, ViTForImageClassification)
    model: ViTModel | ViTForImageClassification
    argument_outputs = MappingProxyType({"pixel_values": "image"})
    outputs = (IMAGE,)

    def _layers(self) -> List[ViTLayer]:
        return [module for module in self.model.modules() if isinstance(module, ViTLayer)]

    def sites(self) -> List[AttentionSite]:  # ViTAttention returns (output, probabilities) under eager attention
        return self.named_sites(self.model, [(".attention", lambda output: output[1])])

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        require(arguments.get("pixel_values") is not None, "ViT needs pixel_values [batch, channels, height, width].")
        check_rank(arguments, "pixel_values", 4, "[batch, channels, height, width]")
        check_batch_sizes(arguments, ("pixel_values",))

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:  # Eq. 6 per layer
        pixels = record.arguments["pixel_values"]
        patch = self.model.config.patch_size
        grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
        mask = torch.ones(pixels.shape[0], 1 + grid[0] * grid[1], dtype=torch.bool, device=pixels.device)
        cls = torch.zeros_like(selection.sample)
        readout = {IMAGE: Readout(IMAGE, cls, IMAGE, slice(1, None), grid)}
        return single_modality_schedule(record, selection, IMAGE, mask, readout)

    def lrp_structure(self) -> LRPStructure:  # pre-norm: x + attention(norm(x)), then + mlp(norm(.))
        attention, residuals = [], []
        for layer in self._layers():
            block = layer.attention
            attention.append(
                AttentionRuleSite(block, block.q_proj, block.k_proj, block.v_proj, second_output(block),
                                  block.num_attention_heads, projection=block.o_proj)
            )
            residuals += pre_norm_residuals(layer, layer.layernorm_after, block, TensorSource(layer), TensorSource(layer.mlp))
        return LRPStructure(attention, residuals)
