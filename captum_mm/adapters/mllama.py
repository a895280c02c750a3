"""Llama-3.2-Vision (``MllamaForConditionalGeneration``): a tiled vision encoder (local layers, then gated global
layers), a linear projector, and a Llama LM whose self-attention layers are interleaved with gated cross-attention
layers reading the projected vision features. No image placeholder is replaced: the LM's ``<|image|>`` token is an
ordinary token, and the text reads the image through cross-attention only.

Schedule (docs/METHOD.md, "Llama-3.2-Vision"), in forward order: the vision encoder's self-attention over each
image's tiles (``tiles x (1 + patches + padding)`` tokens, local then global layers), Eq. 6 on ``R^{vv}``; per LM
layer self-attention, Eq. 6-7 on ``R^{ss}``, ``R^{sf}``, or text->image cross-attention, Eq. 10 on ``R^{sf}``
(``f``: the projected features, one per tile token without the padding). The tanh gates scale a branch, not a rule.
Readouts: ``text`` and ``generated`` as for decoder-only LMs (the ``<|image|>`` token is text); ``image`` =
``R^{sf}[row] . R^{vv}[features, patches]``, ``[B, K, tiles, h, w]``: each tile's ``h x w`` patch grid (class
tokens and padding left out). Several images a prompt (``pixel_values`` ``[B, images, tiles, C, H, W]``): each
image's tiles follow the previous image's in the vision and feature modalities (the encoder's maps of a prompt's
images block-diagonal), and the image output is ``[B, K, images, tiles, h, w]``; an image the processor added as
padding reads zero, as the cross-attention mask hides it.
"""

from functools import partial
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

import torch
from torch import Tensor
from transformers import MllamaForConditionalGeneration
from transformers.models.mllama.modeling_mllama import (
    MllamaCrossAttentionDecoderLayer,
    MllamaSelfAttentionDecoderLayer,
    MllamaTextCrossAttention,
    MllamaTextMLP,
    MllamaTextRMSNorm,
    MllamaTextSelfAttention,
    MllamaVisionAttention,
    MllamaVisionEncoderLayer,
)

from captum_mm.adapters.decoder import GENERATED, SEQUENCE, TEXT, DecoderOnlyAdapter
from captum_mm.adapters.llama import LlamaAdapter, rotary_parts
from captum_mm.capture.record import AttentionRecord
from captum_mm.capture.windows import images_on_diagonal
from captum_mm.generation.convention import GenerationConvention
from captum_mm.lrp.composite import LRPStructure, ResidualRuleSite, TanhGate
from captum_mm.models.arguments import Argument, require
from captum_mm.models.pixels import PixelPooling, patch_sums
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import attention_specs_in, projected_parts
from captum_mm.models.structure import first_argument, forward_order_schedule
from captum_mm.models.targets import TargetSelection
from captum_mm.relevance.schedule import Readout, Schedule, Stage
from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource, module_names, self_attention

VISION, FEATURES, IMAGE = "vision", "features", "image"
TILED_PIXELS = "[batch, images, tiles, channels, height, width]"


def _cross_parts(module: Any) -> AttentionParts:
    """The cross-attention's projections (queries from the text, keys and values from the features; no rotation),
    queries and keys normalised per head."""
    config = module.config
    return AttentionParts(module.q_proj, module.k_proj, module.v_proj, config.num_attention_heads, module.o_proj,
                          key_value_heads=config.num_key_value_heads, query_norm=module.q_norm, key_norm=module.k_norm)


def _gated_pre_norm(layers: List[Any], attention: str, gates: Callable[[Any], Tuple[Optional[TanhGate], Optional[TanhGate]]],
                   ) -> List[ResidualRuleSite]:
    """The two residual additions of pre-norm layers (``post_attention_layernorm`` reads the first, the layer returns
    the second), each branch scaled by its gate (``gates(layer)``: attention's, MLP's; None where ungated)."""
    sites = []
    for layer in layers:
        norm, (attention_gate, mlp_gate) = layer.post_attention_layernorm, gates(layer)
        middle = TensorSource(norm, first_argument(norm))
        sites += [ResidualRuleSite(middle, TensorSource(getattr(layer, attention), index=0), TensorSource(layer, "hidden_states"),
                                   attention_gate),
                  ResidualRuleSite(TensorSource(layer), TensorSource(layer.mlp), middle, mlp_gate)]
    return sites


def _vision_gates(layer: Any) -> Tuple[Optional[TanhGate], Optional[TanhGate]]:
    return (TanhGate(layer.gate_attn), TanhGate(layer.gate_ffn)) if layer.is_gated else (None, None)


def _cross_gates(layer: Any) -> Tuple[Optional[TanhGate], Optional[TanhGate]]:
    """The MLP's branch is also zero on rows reading no image (HF's ``full_text_row_masked_out_mask``)."""
    return (TanhGate(layer.cross_attn_attn_gate),
            TanhGate(layer.cross_attn_mlp_gate, TensorSource(layer, "full_text_row_masked_out_mask")))


@register_adapter
class MllamaAdapter(LlamaAdapter):
    """Llama-3.2-Vision: text self-attention, text->image cross-attention, the tiled vision encoder as a stage.

    Args:
        model (MllamaForConditionalGeneration): The model the adapter serves.
    """

    model_classes = (MllamaForConditionalGeneration,)
    model: MllamaForConditionalGeneration
    attention_classes = (MllamaTextSelfAttention,)
    layer_classes = (MllamaSelfAttentionDecoderLayer,)
    mlp_classes = (MllamaTextMLP,)
    norm_classes = (MllamaTextRMSNorm,)
    attention_functions = MappingProxyType(dict.fromkeys(
        (MllamaTextSelfAttention, MllamaTextCrossAttention, MllamaVisionAttention), True))  # Llama's eager function
    outputs = (TEXT, GENERATED, IMAGE)
    arguments = MappingProxyType(dict(
        DecoderOnlyAdapter.arguments,
        pixel_values=Argument(6, TILED_PIXELS, IMAGE, f"Llama-3.2-Vision needs pixel_values {TILED_PIXELS}."),
        aspect_ratio_ids=Argument(2, "[batch, images]", None, "Llama-3.2-Vision needs aspect_ratio_ids [batch, images]."),
        aspect_ratio_mask=Argument(3, "[batch, images, tiles]", None,
                                   "Llama-3.2-Vision needs aspect_ratio_mask [batch, images, tiles]."),
        cross_attention_mask=Argument(4, "[batch, tokens, images, tiles]"),
    ))
    #: Generated tokens read the image as the prompt's last token does (HF's generate repeats its row).
    repeated_arguments = ("cross_attention_mask",)

    def attention_specs(self) -> List[AttentionSpec]:
        names = module_names(self.model)
        vision = attention_specs_in(self.model.model.vision_model, MllamaVisionAttention, self_attention(VISION),
                                    lambda m: projected_parts(m, m.num_heads, m.o_proj), names=names)
        language = self.model.model.language_model
        specs = attention_specs_in(language, MllamaTextSelfAttention, self_attention(SEQUENCE), rotary_parts, names=names)
        specs += attention_specs_in(language, MllamaTextCrossAttention, ((SEQUENCE, FEATURES),), _cross_parts, names=names)
        return vision + sorted(specs, key=lambda spec: cast(Any, spec.module).layer_idx)

    def generation_convention(self) -> GenerationConvention:
        return GenerationConvention.of(self.model, repeated_arguments=self.repeated_arguments)

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        super().check_arguments(arguments)
        require("input_ids" in arguments and arguments.get("input_ids") is not None,
                "Llama-3.2-Vision is explained on input_ids (its cross-attention mask is per token).")
        require(arguments.get("cross_attention_states") is None, "cross_attention_states are not explained: pass "
                "pixel_values, aspect_ratio_ids and aspect_ratio_mask, so that the vision encoder runs.")
        vision = cast(Any, self.model.config.vision_config)
        pixels, tiles, size = arguments["pixel_values"], vision.max_num_tiles, vision.image_size
        require(tuple(pixels.shape[-2:]) == (size, size), f"Each tile is {size}x{size} (vision_config.image_size); "
                f"pixel_values' tiles are {pixels.shape[-2]}x{pixels.shape[-1]}.")
        require(pixels.shape[2] <= tiles, f"At most {tiles} tiles an image (vision_config.max_num_tiles): got {pixels.shape[2]}.")
        ratios, shape = (arguments["aspect_ratio_ids"], arguments["aspect_ratio_mask"]), tuple(pixels.shape[:3])
        require(tuple(ratios[0].shape) == shape[:2] and tuple(ratios[1].shape) == shape, "aspect_ratio_ids [batch, images] "
                f"and aspect_ratio_mask [batch, images, tiles] must match pixel_values' {shape}, got "
                f"{tuple(ratios[0].shape)} and {tuple(ratios[1].shape)}.")
        mask = arguments.get("cross_attention_mask")
        require(mask is None or tuple(mask.shape[2:]) == tuple(pixels.shape[1:3]), "cross_attention_mask "
                f"[batch, tokens, images, tiles] must match pixel_values' images and tiles {tuple(pixels.shape[1:3])}.")

    def lrp_structure(self) -> LRPStructure:
        """The LM's self-attention layers as LLaMA's; its cross-attention layers and the vision encoder's layers
        pre-norm with tanh-gated branches (:class:`~captum_mm.lrp.composite.TanhGate`); per-head query/key norms and
        the vision encoder's LayerNorms passed through."""
        language = super().lrp_structure()
        modules = list(self.model.modules())
        cross = [m for m in modules if isinstance(m, MllamaCrossAttentionDecoderLayer)]
        vision = [m for m in modules if isinstance(m, MllamaVisionEncoderLayer)]
        sites = _gated_pre_norm(cross, "cross_attn", _cross_gates) + _gated_pre_norm(vision, "self_attn", _vision_gates)
        return language + LRPStructure(sites, covered_types=(MllamaCrossAttentionDecoderLayer, MllamaVisionEncoderLayer,
                                                             MllamaTextRMSNorm))

    def lay_out_maps(self, record: AttentionRecord) -> None:
        """Several images a prompt: the encoder's maps (one per image, its tiles together) laid out per prompt, its
        images' maps block-diagonal.

        Args:
            record (AttentionRecord): The forward's calls.
        """
        pixels = record.arguments["pixel_values"]
        if pixels.shape[1] > 1:
            for call in record.calls:
                if call.roles == (VISION, VISION):
                    call.lay_out(partial(images_on_diagonal, counts=[pixels.shape[1]] * pixels.shape[0]))

    def pixel_pooling(self, arguments: Dict[str, Any]) -> Optional[PixelPooling]:
        """Each tile's pixels summed over channels and each cell of its patch grid (the processor's padding tiles and
        images 0), the images' tiles one after the other: the patches the image readout reads."""
        vision = cast(Any, self.model.config.vision_config)
        side, real = vision.image_size // vision.patch_size, arguments["aspect_ratio_mask"].bool()

        def pool(relevance: Tensor) -> Dict[str, Tensor]:
            return {IMAGE: (patch_sums(relevance, (side, side)) * real[..., None].to(relevance.device)).flatten(1)}

        return pool

    def tile_layout(self, pixels: Tensor) -> Tuple[int, int, int]:
        """The tiles of an image, the tokens of a tile (class token and patches) and the vision encoder's tokens
        of a tile (with the padding to a multiple of 8).

        Args:
            pixels (Tensor): ``[B, images, tiles, C, H, W]``.

        Returns:
            *tuple[int, int, int]*
        """
        tokens = cast(Any, self.model.model.vision_model).num_patches
        return pixels.shape[2], tokens, tokens + (8 - tokens % 8) % 8

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        mask, readouts = self.sequence_readouts(record, selection)
        pixels = record.arguments["pixel_values"]
        tiles, tokens, padded = self.tile_layout(pixels)
        images, vision = pixels.shape[1], cast(Any, self.model.config.vision_config)
        side = vision.image_size // vision.patch_size
        starts = torch.arange(images * tiles, device=pixels.device)[:, None] * padded  # each image's tiles in turn
        features = (starts + torch.arange(tokens, device=pixels.device)).flatten()
        patches = (starts + torch.arange(1, tokens, device=pixels.device)).flatten()
        grid = (tiles, side, side) if images == 1 else (images, tiles, side, side)
        readouts[IMAGE] = Readout(SEQUENCE, readouts[TEXT].rows, FEATURES, grid=grid,
                                  through=Stage((VISION, VISION), features, patches))
        real_tiles = record.arguments["aspect_ratio_mask"].flatten(1).bool()  # the processor's padding tiles and images
        masks = {SEQUENCE: mask, FEATURES: real_tiles.repeat_interleave(tokens, dim=1),
                 VISION: real_tiles.repeat_interleave(padded, dim=1)}
        schedule = forward_order_schedule(record, selection, masks, readouts, causal=(SEQUENCE,))
        if images > 1:
            image_of = torch.arange(images, device=pixels.device).repeat_interleave(tiles * padded)
            schedule.segments = {VISION: image_of.expand(selection.sample.shape[0], -1)}
        return schedule
