"""CLIP: an image tower and a text tower, each self-attention only (pre-norm layers),
joined by the cosine similarity of their pooled embeddings.

Schedule: Eq. 6 for every layer of each tower, each tower on its own modality.
Readouts: the image tower at its class token (on the ``h x w`` patch grid), the text
tower at the end-of-text token, each without its own entry. Target and LRP entry:
:mod:`captum_mm.adapters.similarity` (each image with its own text, one forward and backward); AttnLRP's entry gives
each tower half the logit (:meth:`ClipAdapter.value_lrp_start`).
"""

from types import MappingProxyType
from typing import Any, List, Tuple, cast

import torch
from torch import Tensor
from transformers import CLIPModel, CLIPTextConfig, CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer

from captum_mm.adapters.similarity import cosine_lrp_start, paired_targets
from captum_mm.capture.record import AttentionRecord
from captum_mm.lrp.composite import LRPState, LRPStructure
from captum_mm.models.adapter import ArchitectureAdapter
from captum_mm.models.arguments import PIXELS, TOKENS, Argument, token_mask
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import attention_specs_in, projected_parts
from captum_mm.models.structure import forward_order_schedule, pre_norm_structure
from captum_mm.models.targets import TargetOptions, TargetSelection
from captum_mm.relevance.schedule import Readout, Schedule
from captum_mm.spec import AttentionSpec, module_names, self_attention

TEXT, IMAGE = "text", "image"


@register_adapter
class ClipAdapter(ArchitectureAdapter):
    model_classes = (CLIPModel,)
    attention_functions = MappingProxyType({CLIPAttention: True})
    model: CLIPModel
    arguments = MappingProxyType({
        "input_ids": Argument(2, TOKENS, TEXT, f"CLIP is explained on image-text pairs: it needs input_ids {TOKENS}."),
        "pixel_values": Argument(4, PIXELS, IMAGE, f"CLIP is explained on image-text pairs: it needs pixel_values {PIXELS}."),
        "attention_mask": Argument(2, TOKENS),
    })
    logit_fields = ("logits_per_image",)

    def attention_specs(self) -> List[AttentionSpec]:  # each tower attends within its own modality
        names, parts = module_names(self.model), lambda m: projected_parts(m, m.num_heads, m.out_proj)
        towers = ((self.model.vision_model, IMAGE), (self.model.text_model, TEXT))
        return [spec for tower, modality in towers for spec in attention_specs_in(tower, CLIPAttention, self_attention(modality), parts, names=names)]

    def select_targets(self, logits: Tensor, target: Any, options: TargetOptions = TargetOptions()) -> TargetSelection:
        return paired_targets(logits, target, "CLIP")

    def per_sample_outputs(self, logits: Tensor) -> Tensor:
        return logits.diagonal()

    def _end_of_text(self, input_ids: Tensor) -> Tensor:
        eos = cast(int, cast(CLIPTextConfig, self.model.config.text_config).eos_token_id)  # one id for CLIP
        if eos == 2:  # as CLIPTextTransformer reads old checkpoints: the largest id is end-of-text
            return input_ids.argmax(-1)
        return (input_ids == eos).int().argmax(-1)

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        arguments = record.arguments
        ids, pixels = arguments["input_ids"], arguments["pixel_values"]
        patch = cast(CLIPVisionConfig, self.model.config.vision_config).patch_size
        grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
        image_mask = torch.ones(pixels.shape[0], 1 + grid[0] * grid[1], dtype=torch.bool, device=pixels.device)
        text_mask = token_mask(arguments.get("attention_mask"), ids.shape[0], ids.shape[1], ids.device)
        cls = torch.zeros_like(selection.sample)
        outputs = {
            IMAGE: Readout(IMAGE, cls, IMAGE, slice(1, None), grid),
            TEXT: Readout(TEXT, self._end_of_text(ids)[selection.sample], TEXT),
        }
        return forward_order_schedule(record, selection, {IMAGE: image_mask, TEXT: text_mask}, outputs)

    def lrp_start(self, state: LRPState, logits: Tensor, seeds: Tensor) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        projections = (self.model.visual_projection, self.model.text_projection)
        return cosine_lrp_start(state, logits, seeds, projections, self.model.logit_scale.exp())

    def value_lrp_start(self, state: LRPState, logits: Tensor, seeds: Tensor) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        """AttnLRP's start: the logit ``scale * x_hat . y_hat`` a product of the towers' normalised embeddings (their
        norms held constant), split uniformly: each tower's projected embedding gets half the logit as relevance."""
        return self.lrp_start(state, logits, seeds * logits.detach() / 2)

    def lrp_structure(self) -> LRPStructure:  # pre-norm layers
        return pre_norm_structure(self.model, CLIPEncoderLayer, "layer_norm2", "self_attn")
