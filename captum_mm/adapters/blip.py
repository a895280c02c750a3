"""BLIP question answering: a ViT-style vision tower, a question encoder (bidirectional self-attention,
cross-attention to the image in every layer) and an answer decoder (causal self-attention, cross-attention
to the question encoder's outputs) that generates the answer after its start token.

Schedule (docs/METHOD.md, "BLIP question answering"), in forward order: the vision tower's self-attention,
Eq. 6 on ``R^{vv}``; per question encoder layer self-attention, Eq. 6-7 on ``R^{qq}``, ``R^{qv}``, then
cross-attention to the image, Eq. 10 on ``R^{qv}``; per decoder layer self-attention, Eq. 6-7 on ``R^{tt}``,
``R^{tq}``, then cross-attention to the question, Eq. 10 on ``R^{tq}`` (Eq. 11 is void both times: the image
never attends to the question, nor the question to the answer). Answer token ``k`` is predicted at decoder
position ``k`` (the start token first): ``text`` = ``R^{tq}[k]`` over the question, ``generated`` =
``R^{tt}[k]`` over the answer, ``image`` = ``R^{tq}[k] . R^{qv}[:, patches]`` on the patch grid (the decoder
reads the question encoder's outputs, whose relevance over the image is ``R^{qv}``; ``[CLS]`` left out).

The model's conventions, which its config does not state (``is_encoder_decoder`` is False), are the
adapter's :meth:`generation_convention`: the question in the encoder, ``decoder_input_ids`` = start token
(the text config's ``bos_token_id``) + answer, ``generate`` ending at ``sep_token_id``. Its forward computes
the decoder's logits and returns only the image embeddings; while explaining, the adapter's hooks add the
decoder's logits to that output as ``logits``. HF's BLIP masks no cross-attention (the text attention hands its
mask to the cross-attention as the self-attention's), so the decoder reads the question's padding too; the
padding still gets no relevance (the question mask, as for every family).
"""

from types import MappingProxyType
from typing import Any, Dict, List, Tuple, cast

import torch
from torch import nn
from transformers import BlipForQuestionAnswering
from transformers.models.blip.modeling_blip import BlipAttention, BlipEncoderLayer
from transformers.models.blip.modeling_blip_text import BlipTextOutput, BlipTextSelfOutput
from transformers.utils import ModelOutput

from captum_mm.adapters.decoder import GENERATED, TEXT, GenerationConvention
from captum_mm.adapters.encoder_decoder import TARGET, EncoderDecoderAdapter, decoder_rows, source_target_masks
from captum_mm.capture.record import AttentionRecord
from captum_mm.lrp.composite import LRPStructure
from captum_mm.models.arguments import PIXELS, Argument, require
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import dropout_probabilities, fused_qkv_parts, qkv_parts
from captum_mm.models.structure import forward_order_schedule, post_norm_residuals, pre_norm_structure
from captum_mm.models.targets import TargetSelection
from captum_mm.relevance.schedule import Readout, Schedule, Stage
from captum_mm.spec import AttentionSpec, module_names

VISION, QUESTION, IMAGE = "vision", "question", "image"


@register_adapter
class BlipQuestionAnsweringAdapter(EncoderDecoderAdapter):
    model_classes = (BlipForQuestionAnswering,)
    model: BlipForQuestionAnswering
    outputs = (TEXT, GENERATED, IMAGE)
    arguments = MappingProxyType(dict(
        EncoderDecoderAdapter.arguments,
        pixel_values=Argument(4, PIXELS, IMAGE, f"BLIP question answering needs pixel_values {PIXELS}."),
    ))

    def attention_specs(self) -> List[AttentionSpec]:
        names, model = module_names(self.model), self.model
        specs = [AttentionSpec(names[m], m, dropout_probabilities(m), ((VISION, VISION),), parts=fused_qkv_parts(m))
                 for m in model.vision_model.modules() if isinstance(m, BlipAttention)]
        for stream, (query, key) in ((model.text_encoder, (QUESTION, VISION)), (model.text_decoder.bert, (TARGET, QUESTION))):
            for layer in cast(Any, stream).encoder.layer:
                for module, roles in ((layer.attention.self, (query, query)), (layer.crossattention.self, (query, key))):
                    specs.append(AttentionSpec(names[module], module, dropout_probabilities(module), (roles,), parts=qkv_parts(module)))
        return specs

    def generation_convention(self) -> GenerationConvention:
        text = cast(Any, self.model.config.text_config)
        return GenerationConvention(True, self.model.decoder_start_token_id, (text.sep_token_id,), text.max_position_embeddings)

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        super().check_arguments(arguments)
        require(arguments.get("labels") is None, "labels are not explained: pass the answer as continuation= (or as "
                "decoder_input_ids, its start token first).")
        vision = cast(Any, self.model.config.vision_config)
        size = (vision.image_size,) * 2 if isinstance(vision.image_size, int) else tuple(vision.image_size)
        pixels = tuple(arguments["pixel_values"].shape[-2:])
        require(pixels == size or bool(arguments.get("interpolate_pos_encoding")),
                f"pixel_values are {pixels[0]} x {pixels[1]}, the vision model takes {size[0]} x {size[1]} (or pass "
                "interpolate_pos_encoding=True).")

    def extra_hooks(self, record: AttentionRecord) -> List[Any]:
        """The decoder's logits, which the model's forward computes and drops, added to its output as ``logits``."""
        kept: Dict[str, Any] = {}

        def keep(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
            kept["logits"] = output.logits

        def add(module: nn.Module, args: Tuple[Any, ...], output: Any) -> Any:
            logits = kept.pop("logits", None)
            if isinstance(output, ModelOutput) and logits is not None:
                output["logits"] = logits
            return output

        return [self.model.text_decoder.register_forward_hook(keep), self.model.register_forward_hook(add)]

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        arguments = record.arguments
        pixels = arguments["pixel_values"]
        patch = int(cast(Any, self.model.config.vision_config).patch_size)
        grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
        masks = {VISION: torch.ones(pixels.shape[0], 1 + grid[0] * grid[1], dtype=torch.bool, device=pixels.device),
                 **source_target_masks(arguments, QUESTION)}
        rows = decoder_rows(selection, masks[TARGET])
        readouts = {
            TEXT: Readout(TARGET, rows, QUESTION),
            GENERATED: Readout(TARGET, rows, TARGET, slice(1, None)),
            IMAGE: Readout(TARGET, rows, QUESTION, grid=grid, through=Stage((QUESTION, VISION), slice(None), slice(1, None))),
        }
        return forward_order_schedule(record, selection, masks, readouts, causal=(TARGET,))

    def lrp_structure(self) -> LRPStructure:
        """The text streams' post-norm residuals (BERT's, at every self- and cross-attention output and
        feed-forward output) and the vision tower's pre-norm layers (CLIP's)."""
        text = post_norm_residuals(self.model, (BlipTextSelfOutput, BlipTextOutput))
        vision = pre_norm_structure(self.model.vision_model, BlipEncoderLayer, "layer_norm2", "self_attn")
        return LRPStructure(text.residuals + vision.residuals)

