"""LLaVA-style VLMs (LLaVA, PaliGemma): a vision tower (CLIP or SigLIP) whose hidden states at a
feature layer are projected, token by token, into image placeholder tokens of a LLaMA-style LM's
sequence.

Schedule: the LM's causal stream as for decoder-only LMs (:mod:`captum_mm.models.decoder`), plus
Eq. 6 over the vision tower's layers up to the feature layer (later layers feed nothing). Readouts
per generated token: ``text`` over the prompt without its image tokens; ``generated``; ``image`` on
the vision patch grid, the LM's readout over the image tokens continued through the vision tower's
own relevance (docs/METHOD.md, "Stages joined by a projection": ``R^{g,patch} = R^{g,tok} .
R^{vv}[features, patches]``). With ``compose_vision = False`` the image output stops at the LM's
image tokens (on the patch grid when there is one token per patch).
"""

from dataclasses import replace
from types import MappingProxyType
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, cast

import torch
from torch import Tensor, nn
from transformers import LlavaForConditionalGeneration, PaliGemmaForConditionalGeneration
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer
from transformers.models.siglip.modeling_siglip import SiglipAttention, SiglipEncoderLayer

from captum_mm.lrp.composite import LRPStructure
from captum_mm.models.arguments import PIXELS, Argument, require, text_tokens
from captum_mm.models.base import TargetSelection, attention_specs_in, forward_order_schedule, pre_norm_structure, projected_parts
from captum_mm.models.capture import AttentionRecord
from captum_mm.models.decoder import SEQUENCE, Continuation, DecoderOnlyAdapter
from captum_mm.models.llama import LlamaAdapter, rotary_parts
from captum_mm.models.registry import register_adapter
from captum_mm.relevance.schedule import Readout, Schedule, Stage
from captum_mm.spec import AttentionSpec, module_names, self_attention

VISION, TEXT, GENERATED, IMAGE = "vision", "text", "generated", "image"


@register_adapter
class LlavaAdapter(LlamaAdapter):
    model_classes: Tuple[type, ...] = (LlavaForConditionalGeneration,)
    model: LlavaForConditionalGeneration | PaliGemmaForConditionalGeneration
    outputs = (TEXT, GENERATED, IMAGE)
    arguments = MappingProxyType(
        dict(DecoderOnlyAdapter.arguments, pixel_values=Argument(4, PIXELS, IMAGE, f"A VLM prompt needs pixel_values {PIXELS}."))
    )
    vision_attention_classes: Tuple[type, ...] = (CLIPAttention, SiglipAttention)
    attention_functions = MappingProxyType({**LlamaAdapter.attention_functions, **dict.fromkeys(vision_attention_classes, True)})
    vision_layer_classes: Tuple[type, ...] = (CLIPEncoderLayer, SiglipEncoderLayer)
    #: Continue the image tokens' relevance through the vision tower (False: stop at the LM's image tokens).
    compose_vision: bool = True
    #: The vision tower takes one image size only (its position embeddings'; Idefics3's takes any).
    fixed_image_size: bool = True
    #: The LM's image tokens lie on the image's grid (BLIP-2's learned queries do not).
    image_tokens_on_grid: bool = True

    def attention_specs(self) -> List[AttentionSpec]:
        names = module_names(self.model)
        language = self.language_specs(names)
        require(bool(language), f"{type(self.model).__name__} with a {type(self.language_model()).__name__} language model "
                f"is not explained: its attention is none of {[c.__name__ for c in self.language_attention_classes()]}.")
        vision = self.vision_specs(names)
        require(bool(vision), f"{type(self.model).__name__} with a {type(self.vision_tower()).__name__} vision tower is not "
                f"explained: its attention is none of {[c.__name__ for c in self.vision_attention_classes]}.")
        return vision + language

    def language_specs(self, names: Dict[nn.Module, str]) -> List[AttentionSpec]:
        """The specs of the LM's attention modules."""
        return attention_specs_in(self.language_model(), self.attention_classes, self_attention(SEQUENCE), rotary_parts, names=names)

    def language_attention_classes(self) -> Tuple[type, ...]:
        """The LM attention classes the adapter knows."""
        return self.attention_classes

    def vision_specs(self, names: Dict[nn.Module, str]) -> List[AttentionSpec]:
        """The specs of every attention module before the LM (the vision tower's)."""
        return attention_specs_in(self.vision_tower(), self.vision_attention_classes, self_attention(VISION),
                                  lambda m: projected_parts(m, m.num_heads, m.out_proj), names=names)

    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        super().check_arguments(arguments)
        ids, pixels = text_tokens(arguments), arguments["pixel_values"]
        require(ids.dim() == 2 and "input_ids" in arguments, "A VLM prompt needs input_ids with its image tokens.")
        require(pixels.shape[0] == ids.shape[0], f"One image per prompt: {pixels.shape[0]} images for {ids.shape[0]} prompts.")
        self.check_image_size(pixels, arguments)
        counts = (ids == self.model.config.image_token_id).sum(-1)
        features = self._features_per_image(pixels, arguments)
        wrong = [index for index, count in enumerate(counts.tolist()) if count != features]
        require(not wrong, f"Each prompt needs {features} image tokens (id {self.model.config.image_token_id}), one per "
                f"image feature; samples {wrong} have {[counts[i].item() for i in wrong]} (a continuation token with that id "
                "counts too: the model reads it as an image placeholder).")

    def check_image_size(self, pixels: Tensor, arguments: Dict[str, Any]) -> None:
        """Images of the size the vision tower's position embeddings are made for (``vision_config.image_size``),
        unless ``interpolate_pos_encoding`` is asked for; ``fixed_image_size = False`` (Idefics3) takes any size.

        Args:
            pixels (Tensor): The images, the spatial size last.
            arguments (dict): The forward's arguments.
        """
        if not self.fixed_image_size or arguments.get("interpolate_pos_encoding"):
            return
        size = cast(Any, self.model.config.vision_config).image_size
        expected = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        got = tuple(pixels.shape[-2:])
        require(got == expected, f"{type(self.model).__name__}'s vision tower takes {expected[0]}x{expected[1]} images "
                f"(vision_config.image_size); pixel_values are {got[0]}x{got[1]}. Resize the images to {expected[0]}x"
                f"{expected[1]} (the model's image processor does).")

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        mask, readouts = self.sequence_readouts(record, selection)
        ids, rows = text_tokens(record.arguments), readouts[TEXT].rows
        image_tokens = (ids == self.model.config.image_token_id)[selection.sample]
        readouts[TEXT] = replace(readouts[TEXT], column_mask=~image_tokens)
        readouts[IMAGE] = self.image_readout(record.arguments, SEQUENCE, rows, SEQUENCE, image_tokens)
        return self.vision_schedule(record, selection, {SEQUENCE: mask}, readouts, causal=(SEQUENCE,))

    def image_readout(self, arguments: Dict[str, Any], query: str, rows: Tensor, key: str, image_tokens: Tensor) -> Readout:
        """The ``image`` readout of ``rows`` of ``R^{query,key}`` over the columns of the LM's image tokens
        (``[E, N]`` True there), continued through the vision tower unless ``compose_vision`` is False."""
        positions = torch.nonzero(image_tokens)[:, 1].reshape(image_tokens.shape[0], -1)
        grid = self.patch_grid(arguments)
        if self.compose_vision:
            cells = self.patch_cells(grid)
            cells = None if cells is None else cells.to(positions.device).expand(rows.shape[0], -1)
            return Readout(query, rows, key, grid=grid, positions=cells, column_index=positions,
                           through=self.image_stage(arguments, grid))
        tokens = self.token_grid(grid)
        on_grid = self.image_tokens_on_grid and positions.shape[1] == tokens[0] * tokens[1]
        return Readout(query, rows, key, grid=tokens if on_grid else None, column_index=positions)

    def vision_schedule(self, record: AttentionRecord, selection: TargetSelection, masks: Dict[str, Tensor],
                        readouts: Dict[str, Readout], causal: Tuple[str, ...]) -> Schedule:
        """Every recorded call in forward order, but the vision layers no feature the LM reads depends on;
        ``masks`` those of the LM's modalities, ``causal`` its causal ones."""
        arguments, ids = record.arguments, text_tokens(record.arguments)
        grid = self.patch_grid(arguments)
        vision_mask = torch.ones(ids.shape[0], int(self._has_class_token()) + grid[0] * grid[1], dtype=torch.bool, device=ids.device)
        pixels = arguments["pixel_values"]
        masks = {**masks, VISION: vision_mask, **self.stage_masks(pixels)}
        schedule = forward_order_schedule(record, selection, masks, readouts, causal)
        unused = self._unused_vision_attention(arguments)
        kept = [step for step in schedule.steps if record.calls[step[0].call].spec.module not in unused]
        return replace(schedule, steps=kept)

    def image_stage(self, arguments: Dict[str, Any], grid: Tuple[int, int]) -> Stage:
        """How the LM's image tokens continue to the patches: through the vision tower's ``R^{vv}``."""
        features = slice(self.first_feature(arguments), None)
        return Stage((VISION, VISION), features, slice(int(self._has_class_token()), None), self.token_map(grid))

    def stage_masks(self, pixels: Tensor) -> Dict[str, Tensor]:
        """Masks of the modalities between the vision tower and the LM (none here)."""
        return {}

    def patch_grid(self, arguments: Dict[str, Any]) -> Tuple[int, int]:
        """The image's grid of patches."""
        pixels, patch = arguments["pixel_values"], self._patch_size()
        return pixels.shape[-2] // patch, pixels.shape[-1] // patch

    def patch_cells(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """The grid cell (row-major) of each patch of the vision tower's sequence (None: in grid order)."""
        return None

    def token_map(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """``P``: each image token's weights over the vision tokens it is made of (None: one each)."""
        return None

    def token_grid(self, grid: Tuple[int, int]) -> Tuple[int, int]:
        """The grid of the LM's image tokens for a ``grid`` of patches."""
        return grid

    def lrp_structure(self) -> LRPStructure:  # the LM's, and the vision tower's pre-norm layers
        return super().lrp_structure() + pre_norm_structure(self.vision_tower(), self.vision_layer_classes, "layer_norm2", "self_attn")

    def _patch_size(self) -> int:
        return int(cast(Any, self.model.config.vision_config).patch_size)

    def _vision_body(self) -> Any:
        """The vision tower's module holding ``embeddings`` and ``encoder`` (the tower itself, or its ``vision_model``)."""
        tower = self.vision_tower()
        return getattr(tower, "vision_model", tower)

    def _has_class_token(self) -> bool:
        return hasattr(self._vision_body().embeddings, "class_embedding")

    def first_feature(self, arguments: Dict[str, Any]) -> int:
        """The first vision token the LM reads (1: the "default" select strategy drops the first token)."""
        strategy = arguments.get("vision_feature_select_strategy") or self.model.config.vision_feature_select_strategy
        return int(strategy == "default")

    def feature_depth(self, arguments: Dict[str, Any], layers: int) -> int:
        """How many of the vision tower's ``layers`` the features the LM reads pass through."""
        chosen = arguments.get("vision_feature_layer")
        chosen = self.model.config.vision_feature_layer if chosen is None else chosen
        return max((layer if layer >= 0 else layers + 1 + layer) for layer in ([chosen] if isinstance(chosen, int) else chosen))

    def _features_per_image(self, pixels: Tensor, arguments: Dict[str, Any]) -> int:
        patch = self._patch_size()
        tokens = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch) + int(self._has_class_token())
        return tokens - self.first_feature(arguments)

    def _unused_vision_attention(self, arguments: Dict[str, Any]) -> Set[nn.Module]:
        """The vision tower's modules after the feature layer: nothing the LM reads depends on them."""
        layers: Sequence[Any] = self._vision_body().encoder.layers
        return {module for layer in layers[self.feature_depth(arguments, len(layers)):] for module in layer.modules()}


@register_adapter
class PaliGemmaAdapter(LlavaAdapter):
    """PaliGemma: a SigLIP tower whose last hidden states (all layers, no class token) are projected into
    image tokens of a Gemma LM attending bidirectionally over its prefix; generated tokens belong to the
    causal suffix (``token_type_ids`` 1, as ``generate`` extends them)."""

    model_classes = (PaliGemmaForConditionalGeneration,)

    def first_feature(self, arguments: Dict[str, Any]) -> int:
        return 0

    def feature_depth(self, arguments: Dict[str, Any], layers: int) -> int:
        return layers

    def continuation_arguments(self, prompt: Dict[str, Any], continuation: Continuation) -> Dict[str, Optional[Tensor]]:
        types = prompt.get("token_type_ids")
        if types is None:
            return {}
        return {"token_type_ids": torch.cat([types, torch.ones_like(continuation.ids, dtype=types.dtype)], dim=1)}

