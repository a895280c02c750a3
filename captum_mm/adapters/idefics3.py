"""Idefics3 and SmolVLM: a SigLIP-style tower (every layer, no class token), a connector that pixel-
shuffles each ``s x s`` block of patches into one token and projects it, and a LLaMA-style LM; pixel
values are 5-D, ``[batch, images, channels, height, width]``.

Schedule and readouts of the VLM base (:mod:`captum_mm.adapters.vision_language`), with the token map ``P`` of the
pixel shuffle: each image token spreads its relevance evenly over the ``s^2`` patches it is made of
(``P[token, patch] = 1 / s^2``), so ``image = R^{g,tok} . P . R^{vv}`` on the patch grid; stopping at
the image tokens gives them on the ``h/s x w/s`` token grid. Several images a prompt (the base's): the processor's
image splitting makes each crop and the downscaled whole image images of the prompt, in its order (the crops row by
row, then the whole image), each with its own map; all-zero images are padding (the model drops them).
"""

from types import MappingProxyType
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from transformers import Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration
from transformers.models.idefics3.modeling_idefics3 import Idefics3EncoderLayer, Idefics3VisionAttention
from transformers.models.smolvlm.modeling_smolvlm import SmolVLMEncoderLayer, SmolVLMVisionAttention

from captum_mm.adapters.decoder import DecoderOnlyAdapter
from captum_mm.adapters.llama import LlamaAdapter
from captum_mm.adapters.vision_language import IMAGE, VisionLanguageAdapter
from captum_mm.models.arguments import Argument
from captum_mm.models.pixels import PixelPooling, patch_sums, per_prompt
from captum_mm.models.registry import register_adapter

IMAGES = "[batch, images, channels, height, width]"


@register_adapter
class Idefics3Adapter(VisionLanguageAdapter):
    """Idefics3 and SmolVLM: every token of the vision tower's last layer, pixel-shuffled into image tokens.

    Args:
        model (nn.Module): The Idefics3 or SmolVLM model the adapter serves.
    """

    model_classes = (Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration)
    model: Idefics3ForConditionalGeneration | SmolVLMForConditionalGeneration
    fixed_image_size = False  # its vision embeddings place the patches of any size on their position grid
    arguments = MappingProxyType(dict(
        DecoderOnlyAdapter.arguments,
        pixel_values=Argument(5, IMAGES, "image", f"An Idefics3 prompt needs pixel_values {IMAGES}."),
        pixel_attention_mask=Argument(4, "[batch, images, height, width]"),
    ))
    vision_attention_classes = (Idefics3VisionAttention, SmolVLMVisionAttention)
    attention_functions = MappingProxyType({**LlamaAdapter.attention_functions, **dict.fromkeys(vision_attention_classes, True)})
    vision_layer_classes = (Idefics3EncoderLayer, SmolVLMEncoderLayer)

    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_model

    def language_model(self) -> nn.Module:
        return self.model.model.text_model

    def images_given(self, arguments: Dict[str, Any]) -> int:
        """The images that are not padding (the model drops all-zero ones, as the processor pads).

        Args:
            arguments (dict): The forward's arguments.

        Returns:
            *int*: Their count.
        """
        return int((arguments["pixel_values"] != 0).flatten(2).any(-1).sum())

    def pixel_pooling(self, arguments: Dict[str, Any]) -> Optional[PixelPooling]:
        """Each image's pixels summed over channels and each cell of its patch grid; the images that are not padding,
        in order, fill the prompts' images as the model reads them."""
        real, grid = (arguments["pixel_values"] != 0).flatten(2).any(-1), self.patch_grid(arguments)
        images = self.images_per_prompt(arguments)
        return lambda relevance: {IMAGE: per_prompt(patch_sums(relevance, grid)[real], images)}

    def _features_per_image(self, pixels: Tensor, arguments: Dict[str, Any]) -> int:
        tokens = self.token_grid((pixels.shape[-2] // self._patch_size(), pixels.shape[-1] // self._patch_size()))
        return tokens[0] * tokens[1]

    def _scale(self) -> int:
        return int(self.model.config.scale_factor)

    def token_grid(self, grid: Tuple[int, int]) -> Tuple[int, int]:
        return grid[0] // self._scale(), grid[1] // self._scale()

    def token_map(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """The connector's own pixel shuffle applied to the patch indices: which patches make each token."""
        cells = grid[0] * grid[1]
        connector: Any = self.model.model.connector
        patches = connector.pixel_shuffle(torch.arange(cells, dtype=torch.float64)[None, :, None], self._scale())[0]
        token_map = torch.zeros(patches.shape[0], cells, dtype=torch.float64)
        token_map.scatter_(1, patches.long(), 1.0 / patches.shape[1])
        return token_map
