"""The base of vision-language adapters (LLaVA, PaliGemma, Idefics3/SmolVLM, Qwen2-VL, BLIP-2): a vision tower
whose features, through a projector, fill the image placeholder tokens of a language model's sequence.

Schedule: the LM's stream (:mod:`captum_mm.adapters.decoder`), plus Eq. 6 over the vision tower's layers up to
the feature layer. Readouts per generated token: ``text`` over the prompt without its image tokens;
``generated``; ``image`` on the patch grid, ``R^{g,patch} = R^{g,tok} . P . R^{vv}[features, patches]``
(docs/METHOD.md, "Stages joined by a projection"; ``P`` the projector's token map), or, with
``compose_vision = False``, ``R^{g,tok}`` over the LM's image tokens. The LM side defaults to LLaMA's layout.
"""

from abc import abstractmethod
from dataclasses import replace
from functools import partial
from types import MappingProxyType
from typing import Any, Dict, List, Tuple, cast

import torch
from torch import Tensor, nn

from captum_mm.adapters.decoder import GENERATED, SEQUENCE, TEXT, DecoderOnlyAdapter
from captum_mm.adapters.llama import LlamaAdapter, rotary_parts
from captum_mm.adapters.vision_tokens import IMAGE, VisionTokenLayout, image_columns, per_image_cells, with_images_axis
from captum_mm.capture.record import AttentionRecord
from captum_mm.capture.windows import images_on_diagonal
from captum_mm.lrp.composite import LRPStructure
from captum_mm.models.arguments import Argument, require, text_tokens
from captum_mm.models.specs import attention_specs_in, projected_parts
from captum_mm.models.structure import forward_order_schedule, pre_norm_structure
from captum_mm.models.targets import TargetSelection
from captum_mm.relevance.schedule import Readout, Schedule, Stage
from captum_mm.spec import AttentionSpec, module_names, self_attention

VISION = "vision"
#: The prompts' images, in order: a prompt's image tokens read the next images (``image_token_id`` runs).
IMAGES = "[images, channels, height, width]"


class VisionLanguageAdapter(VisionTokenLayout, LlamaAdapter):
    """What every vision-language adapter shares: the stages (vision tower, projector, LM), the image
    placeholder tokens, the image readout composed through the vision tower, and the token map spreading
    each image token over its patches (the hooks of :class:`~captum_mm.adapters.vision_tokens.VisionTokenLayout`).
    A family implements the abstract :meth:`vision_tower` and :meth:`language_model`, declares ``model_classes``,
    ``vision_attention_classes`` and (for LRP) ``vision_layer_classes``, and overrides the hooks where its layout
    differs.

    Args:
        model (nn.Module): The HuggingFace vision-language model the adapter serves.
    """

    model_classes: Tuple[type, ...] = ()
    outputs = (TEXT, GENERATED, IMAGE)
    arguments = MappingProxyType(
        dict(DecoderOnlyAdapter.arguments, pixel_values=Argument(4, IMAGES, IMAGE, f"A VLM prompt needs pixel_values {IMAGES}.",
                                                                 batched=False))
    )
    #: The vision tower's attention classes (the family declares them).
    vision_attention_classes: Tuple[type, ...] = ()
    #: The vision tower's pre-norm layer classes, for LRP (the family declares them).
    vision_layer_classes: Tuple[type, ...] = ()
    #: Continue the image tokens' relevance through the vision tower (False: stop at the LM's image tokens).
    compose_vision: bool = True
    #: The vision tower takes one image size only (its position embeddings'; Idefics3's takes any).
    fixed_image_size: bool = True
    #: The LM's image tokens lie on the image's grid (BLIP-2's learned queries do not).
    image_tokens_on_grid: bool = True
    #: The family's models read several images a prompt (False: one image a prompt is explained).
    several_images: bool = True

    @abstractmethod
    def language_model(self) -> nn.Module:
        """The language model reading the image tokens.

        Returns:
            *nn.Module*: The module holding the LM's attention layers.
        """

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
        """The specs of the LM's attention modules (by default LLaMA-style ones).

        Args:
            names (dict): Each module of the model and its name.

        Returns:
            *list[AttentionSpec]*: One spec per LM attention module.
        """
        return attention_specs_in(self.language_model(), self.attention_classes, self_attention(SEQUENCE), rotary_parts, names=names)

    def language_attention_classes(self) -> Tuple[type, ...]:
        """The LM attention classes the adapter knows.

        Returns:
            *tuple[type, ...]*: The classes, named when a model's LM has none of them.
        """
        return self.attention_classes

    def vision_specs(self, names: Dict[nn.Module, str]) -> List[AttentionSpec]:
        """The specs of every attention module before the LM (by default the vision tower's, CLIP's layout).

        Args:
            names (dict): Each module of the model and its name.

        Returns:
            *list[AttentionSpec]*: One spec per attention module before the LM, in forward order.
        """
        return attention_specs_in(self.vision_tower(), self.vision_attention_classes, self_attention(VISION),
                                  lambda m: projected_parts(m, m.num_heads, m.out_proj), names=names)

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        super().check_arguments(arguments)
        ids, pixels = text_tokens(arguments), arguments["pixel_values"]
        require(ids.dim() == 2 and "input_ids" in arguments, "A VLM prompt needs input_ids with its image tokens.")
        self.check_image_size(pixels, arguments)
        self.check_images(arguments, "image feature", " (a continuation token with that id counts too: the model reads it "
                          "as an image placeholder)")

    def check_images(self, arguments: Dict[str, Any], made_of: str, note: str = "") -> None:
        """Each prompt's image tokens make whole images (one image a prompt unless ``several_images``), as many in
        all as the model is given.

        Args:
            arguments (dict): The forward's arguments.
            made_of (str): What each image token is made of (for the error message).
            note (str): Ends the error message about the token counts.
        """
        features = self._features_per_image(arguments["pixel_values"], arguments)
        counts = self.image_tokens(arguments).sum(-1).tolist()
        wrong = [index for index, count in enumerate(counts)
                 if count == 0 or count % features or (count != features and not self.several_images)]
        require(not wrong, f"Each prompt needs {features} image tokens (id {self.model.config.image_token_id})"
                f"{' an image' if self.several_images else ''}, one per {made_of}; samples {wrong} have "
                f"{[counts[i] for i in wrong]}{note}" + ("." if self.several_images else
                                                        f"; {type(self.model).__name__} reads one image per prompt."))
        images = self.images_per_prompt(arguments).tolist()
        given = self.images_given(arguments)
        require(given == sum(images), f"The prompts' image tokens make {images} images ({features} tokens an image), "
                f"{sum(images)} in all; the model is given {given}.")

    def images_per_prompt(self, arguments: Dict[str, Any]) -> Tensor:
        """How many images each prompt holds: its image tokens over one image's (every image of one size).

        Args:
            arguments (dict): The forward's arguments.

        Returns:
            *Tensor*: ``[B]`` image counts.
        """
        return self.image_tokens(arguments).sum(-1) // self._features_per_image(arguments["pixel_values"], arguments)

    def images_given(self, arguments: Dict[str, Any]) -> int:
        """The images the model is given (by default ``pixel_values``' first dimension).

        Args:
            arguments (dict): The forward's arguments.

        Returns:
            *int*: Their count.
        """
        return int(arguments["pixel_values"].shape[0])

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
        rows, image_tokens = readouts[TEXT].rows, self.image_tokens(record.arguments)[selection.sample]
        readouts[TEXT] = replace(readouts[TEXT], column_mask=~image_tokens)
        readouts[IMAGE] = self.image_readout(record.arguments, SEQUENCE, rows, SEQUENCE, image_tokens)
        return self.vision_schedule(record, selection, {SEQUENCE: mask}, readouts, causal=(SEQUENCE,))

    def image_readout(self, arguments: Dict[str, Any], query: str, rows: Tensor, key: str, image_tokens: Tensor) -> Readout:
        """The ``image`` readout, continued through the vision tower unless ``compose_vision`` is False.

        Args:
            arguments (dict): The forward's arguments.
            query (str): The modality of the rows read (the LM's sequence or decoder).
            rows (Tensor): ``[E]`` the row of ``R^{query,key}`` read for each explained element.
            key (str): The modality holding the image tokens.
            image_tokens (Tensor): ``[E, N]`` True at the columns of the LM's image tokens.

        Returns:
            *Readout*: Over the patch grid, or over the image tokens when they stop there.
        """
        images = int(self.images_per_prompt(arguments).max())
        per_image = self._features_per_image(arguments["pixel_values"], arguments)
        positions = image_columns(image_tokens, images * per_image)
        grid = self.patch_grid(arguments)
        if self.compose_vision:
            cells = self.patch_cells(grid)
            stage = self.image_stage(arguments, grid)
            if images > 1:  # each image's patches on its own grid
                cells = per_image_cells(torch.arange(grid[0] * grid[1]) if cells is None else cells, images, grid[0] * grid[1])
                stage = stage.per_image(images, self.vision_tokens(arguments))
            cells = None if cells is None else cells.to(positions.device).expand(rows.shape[0], -1)
            return Readout(query, rows, key, grid=with_images_axis(grid, images), positions=cells, column_index=positions,
                           through=stage)
        tokens = self.token_grid(grid)
        on_grid = self.image_tokens_on_grid and per_image == tokens[0] * tokens[1]
        return Readout(query, rows, key, grid=with_images_axis(tokens, images) if on_grid else None, column_index=positions)

    def lay_out_maps(self, record: AttentionRecord) -> None:
        """With several images a prompt: the vision tower's maps, one per image, laid out per prompt, its images'
        maps block-diagonal (:func:`~captum_mm.capture.windows.images_on_diagonal`).

        Args:
            record (AttentionRecord): The forward's calls.
        """
        counts = self.images_per_prompt(record.arguments).tolist()
        if max(counts) > 1:
            for call in record.calls:
                if call.roles == (VISION, VISION):
                    call.lay_out(partial(images_on_diagonal, counts=counts))

    def vision_schedule(self, record: AttentionRecord, selection: TargetSelection, masks: Dict[str, Tensor],
                        readouts: Dict[str, Readout], causal: Tuple[str, ...]) -> Schedule:
        """Every recorded call in forward order, but the vision layers no feature the LM reads depends on.

        Args:
            record (AttentionRecord): The captured forward pass.
            selection (TargetSelection): The explained elements.
            masks (dict): The ``[B, N]`` masks of the LM's modalities.
            readouts (dict): The readouts per output.
            causal (tuple[str, ...]): The LM's causal modalities.

        Returns:
            *Schedule*: With the vision modalities' masks added.
        """
        arguments, ids = record.arguments, text_tokens(record.arguments)
        images = self.images_per_prompt(arguments).to(ids.device)
        slots = torch.arange(int(images.max()), device=ids.device).repeat_interleave(self.vision_tokens(arguments))
        vision_mask = slots[None, :] < images[:, None]  # the tokens of each prompt's images
        masks = {**masks, VISION: vision_mask, **self.stage_masks(arguments["pixel_values"])}
        schedule = forward_order_schedule(record, selection, masks, readouts, causal)
        unused = self._unused_vision_attention(arguments)
        kept = [step for step in schedule.steps if record.calls[step[0].call].spec.module not in unused]
        segments = {VISION: slots.expand(selection.sample.shape[0], -1)} if int(images.max()) > 1 else {}
        return replace(schedule, steps=kept, segments=segments)

    def vision_tokens(self, arguments: Dict[str, Any]) -> int:
        """The tokens of one image's vision sequence (by default the class token, if any, and the patch grid's).

        Args:
            arguments (dict): The forward's arguments.

        Returns:
            *int*: Their count.
        """
        grid = self.patch_grid(arguments)
        return int(self._has_class_token()) + grid[0] * grid[1]

    def image_stage(self, arguments: Dict[str, Any], grid: Tuple[int, int]) -> Stage:
        """How the LM's image tokens continue to the patches: through the vision tower's ``R^{vv}`` and the token map.

        Args:
            arguments (dict): The forward's arguments.
            grid (tuple[int, int]): The image's patch grid.

        Returns:
            *Stage*: The relevance block read, its feature rows and patch columns, and ``P``.
        """
        features = slice(self.first_feature(arguments), None)
        return Stage((VISION, VISION), features, slice(int(self._has_class_token()), None), self.token_map(grid))

    def stage_masks(self, pixels: Tensor) -> Dict[str, Tensor]:
        """Masks of the modalities between the vision tower and the LM (none by default; BLIP-2's queries).

        Args:
            pixels (Tensor): The images.

        Returns:
            *dict*: ``[B, N]`` mask per modality.
        """
        return {}

    def lrp_structure(self) -> LRPStructure:  # the LM's, and the vision tower's pre-norm layers
        return super().lrp_structure() + pre_norm_structure(self.vision_tower(), self.vision_layer_classes, "layer_norm2", "self_attn")
