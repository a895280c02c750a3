"""CLIP: an image tower and a text tower, each self-attention only (pre-norm layers),
joined by the cosine similarity of their pooled embeddings.

Schedule: Eq. 6 for every layer of each tower, each tower on its own modality.
Readouts: the image tower at its class token (on the ``h x w`` patch grid), the text
tower at the end-of-text token, each without its own entry. Target: the similarity
of each image with its own text (``logits_per_image[b, b]``): a batch of image-text
pairs is explained from one forward and one backward.
"""

from typing import Any, Dict, List, Tuple, cast

from types import MappingProxyType

import torch
from torch import Tensor
from transformers import CLIPModel, CLIPTextConfig, CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer

from captum_mm.lrp.composite import LRPState, LRPStructure, relevance_seed
from captum_mm.models.base import (
    TEXT_ARGUMENTS,
    ArchitectureAdapter,
    TargetSelection,
    attention_specs_in,
    check_batch_sizes,
    check_rank,
    forward_order_schedule,
    pre_norm_structure,
    projected_parts,
    require,
    token_mask,
)
from captum_mm.models.capture import AttentionRecord
from captum_mm.models.registry import register_adapter
from captum_mm.relevance.schedule import Readout, Schedule
from captum_mm.spec import AttentionSpec, module_names, self_attention

TEXT, IMAGE = "text", "image"


@register_adapter
class ClipAdapter(ArchitectureAdapter):
    model_classes = (CLIPModel,)
    model: CLIPModel
    argument_outputs = MappingProxyType({**TEXT_ARGUMENTS, "pixel_values": "image"})
    logit_fields = ("logits_per_image",)

    def attention_specs(self) -> List[AttentionSpec]:  # each tower attends within its own modality
        names, parts = module_names(self.model), lambda m: projected_parts(m, m.num_heads, m.out_proj)
        towers = ((self.model.vision_model, IMAGE), (self.model.text_model, TEXT))
        return [spec for tower, modality in towers for spec in attention_specs_in(tower, CLIPAttention, self_attention(modality), parts, names=names)]

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        for name, meaning in (("input_ids", "[batch, tokens]"), ("pixel_values", "[batch, channels, height, width]")):
            require(arguments.get(name) is not None, f"CLIP is explained on image-text pairs: it needs {name} {meaning}.")
        check_rank(arguments, "input_ids", 2, "[batch, tokens]")
        check_rank(arguments, "pixel_values", 4, "[batch, channels, height, width]")
        check_rank(arguments, "attention_mask", 2, "[batch, tokens]")
        check_batch_sizes(arguments, ("input_ids", "pixel_values", "attention_mask"))

    def select_targets(self, logits: Tensor, target: Any, **options: Any) -> TargetSelection:
        require(
            target is None,
            f"CLIP explains the similarity of each image with its own text (the pairs of the batch): pass target=None, got {target!r}.",
        )
        pairs = torch.arange(logits.shape[0], device=logits.device)
        seeds = torch.zeros_like(logits)
        seeds[pairs, pairs] = 1.0
        return TargetSelection(seeds[None], pairs, torch.zeros_like(pairs), pairs, logits.detach()[pairs, pairs])

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
        """LRP enters each tower at its projected embedding, the L2 normalisation passed through as
        LayerNorm is: dimension ``d`` of a pair's embeddings gets ``scale * x_d y_d / (|x| |y|)``, its
        share of the logit (the ordinary gradient would give shares summing to zero: the cosine is
        scale-invariant). Relevance per target sums to 1 in each tower."""
        image, text = state.output_of(self.model.visual_projection), state.output_of(self.model.text_projection)
        image_norm, text_norm = (t.detach().norm(dim=-1, keepdim=True) for t in (image, text))
        scale = self.model.logit_scale.detach().exp()
        weights = relevance_seed(logits, seeds) * scale  # [K, images, texts]
        image_grad = torch.einsum("kij,jd->kid", weights, text.detach() / text_norm) / image_norm
        text_grad = torch.einsum("kij,id->kjd", weights, image.detach() / image_norm) / text_norm
        return (image, text), (image_grad, text_grad)

    def lrp_structure(self) -> LRPStructure:  # pre-norm layers
        return pre_norm_structure(self.model, CLIPEncoderLayer, "layer_norm2", "self_attn")
