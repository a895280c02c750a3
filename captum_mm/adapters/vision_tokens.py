"""Where a vision-language model's image tokens come from: the vision tower's patch grid, the features the LM
reads (first token, feature layer), the image placeholder tokens of the prompt, and the projector's token map
``P`` spreading each image token's relevance over the patches it is made of.

:class:`VisionTokenLayout` holds the hooks with their common defaults (CLIP/SigLIP-style towers whose every
token the LM reads, one image token per patch); :class:`~captum_mm.adapters.vision_language.VisionLanguageAdapter`
builds on it.
"""

from abc import ABC, abstractmethod
from typing import Any, Dict, Optional, Sequence, Set, Tuple, cast

import torch
from torch import Tensor, nn

from captum_mm.models.arguments import text_tokens
from captum_mm.models.pixels import PixelPooling, patch_sums, per_prompt

#: The image output's name.
IMAGE = "image"


class VisionTokenLayout(ABC):
    """The layout of a vision tower's tokens and of the image tokens the LM reads. Abstract: a family
    implements :meth:`vision_tower`; the other hooks' defaults fit a CLIP/SigLIP-style tower (patch size and
    image size in ``config.vision_config``) whose last layer's every token becomes one image token."""

    #: The vision-language model (a HuggingFace ``PreTrainedModel``; set by the adapter).
    model: Any

    @abstractmethod
    def vision_tower(self) -> nn.Module:
        """The vision tower.

        Returns:
            *nn.Module*: The module holding the vision attention layers.
        """

    def image_tokens(self, arguments: Dict[str, Any]) -> Tensor:
        """Where the image placeholder tokens are in the prompt.

        Args:
            arguments (dict): The forward's arguments.

        Returns:
            *Tensor*: ``[B, N]`` True at the prompt's image tokens (``config.image_token_id``).
        """
        return text_tokens(arguments) == self.model.config.image_token_id

    def patch_grid(self, arguments: Dict[str, Any]) -> Tuple[int, int]:
        """The image's grid of patches.

        Args:
            arguments (dict): The forward's arguments.

        Returns:
            *tuple[int, int]*: Rows and columns of patches.
        """
        pixels, patch = arguments["pixel_values"], self._patch_size()
        return pixels.shape[-2] // patch, pixels.shape[-1] // patch

    @abstractmethod
    def images_per_prompt(self, arguments: Dict[str, Any]) -> Tensor:
        """How many images each prompt holds.

        Args:
            arguments (dict): The forward's arguments.

        Returns:
            *Tensor*: ``[B]`` image counts.
        """

    def pixel_pooling(self, arguments: Dict[str, Any]) -> Optional[PixelPooling]:
        """Several ``[images, C, H, W]`` images a prompt: each image's pixels summed over channels and each cell of
        its patch grid, each prompt's images one after the other (one image a prompt: None, the pixels read on the
        output's grid).

        Args:
            arguments (dict): The forward's arguments.

        Returns:
            *PixelPooling or None*: See :data:`~captum_mm.models.pixels.PixelPooling`.
        """
        images = self.images_per_prompt(arguments)
        if int(images.max()) <= 1:
            return None
        grid = self.patch_grid(arguments)
        return lambda relevance: {IMAGE: per_prompt(patch_sums(relevance, grid), images)}

    def patch_cells(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """The grid cell (row-major) of each patch of the vision tower's sequence.

        Args:
            grid (tuple[int, int]): The patch grid.

        Returns:
            *Tensor or None*: ``[patches]`` cell indices, None when the patches come in grid order.
        """
        return None

    def token_map(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """``P``: how the projector spreads each image token's relevance over the vision tokens it is made of.

        Args:
            grid (tuple[int, int]): The patch grid.

        Returns:
            *Tensor or None*: ``[tokens, patches]`` weights, None when each token is one vision token.
        """
        return None

    def token_grid(self, grid: Tuple[int, int]) -> Tuple[int, int]:
        """The grid of the LM's image tokens for a ``grid`` of patches.

        Args:
            grid (tuple[int, int]): The patch grid.

        Returns:
            *tuple[int, int]*: Rows and columns of image tokens (the patch grid by default).
        """
        return grid

    def first_feature(self, arguments: Dict[str, Any]) -> int:
        """The first vision token the LM reads (by default the first: no token dropped).

        Args:
            arguments (dict): The forward's arguments.

        Returns:
            *int*: Its index in the vision tower's sequence.
        """
        return 0

    def feature_depth(self, arguments: Dict[str, Any], layers: int) -> int:
        """How many of the vision tower's ``layers`` the features the LM reads pass through (by default all).

        Args:
            arguments (dict): The forward's arguments.
            layers (int): The vision tower's layer count.

        Returns:
            *int*: The layers before the feature layer's output.
        """
        return layers

    def _patch_size(self) -> int:
        return int(cast(Any, self.model.config.vision_config).patch_size)

    def _vision_body(self) -> Any:
        """The vision tower's module holding ``embeddings`` and ``encoder`` (the tower itself, or its ``vision_model``)."""
        tower = self.vision_tower()
        return getattr(tower, "vision_model", tower)

    def _has_class_token(self) -> bool:
        return hasattr(self._vision_body().embeddings, "class_embedding")

    def _features_per_image(self, pixels: Tensor, arguments: Dict[str, Any]) -> int:
        patch = self._patch_size()
        tokens = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch) + int(self._has_class_token())
        return tokens - self.first_feature(arguments)

    def _unused_vision_attention(self, arguments: Dict[str, Any]) -> Set[nn.Module]:
        """The vision tower's modules after the feature layer: nothing the LM reads depends on them."""
        layers = self._vision_layers()
        return {module for layer in layers[self.feature_depth(arguments, len(layers)):] for module in layer.modules()}

    def _vision_layers(self) -> Sequence[Any]:
        """The vision tower's layers, in order."""
        return cast(Sequence[Any], self._vision_body().encoder.layers)


def image_columns(image_tokens: Tensor, width: int) -> Tensor:
    """The columns of each element's image tokens, in order, padded with -1 (no column) to ``width``.

    Args:
        image_tokens (Tensor): ``[E, N]`` True at the image tokens.
        width (int): The most image tokens an element has (the batch's).

    Returns:
        *Tensor*: ``[E, width]`` column indices.
    """
    index = torch.argsort((~image_tokens).to(torch.int8), dim=1, stable=True)[:, :width]
    return torch.where(image_tokens.gather(1, index), index, -1)


def per_image_cells(cells: Tensor, images: int, size: int) -> Tensor:
    """One image's grid cells repeated for ``images`` images, image ``i``'s offset by ``i * size``.

    Args:
        cells (Tensor): ``[patches]`` one image's flat grid cells.
        images (int): The images.
        size (int): One image's grid cells.

    Returns:
        *Tensor*: ``[images * patches]``.
    """
    return (torch.arange(images, device=cells.device)[:, None] * size + cells[None, :]).flatten()


def with_images_axis(grid: Tuple[int, int], images: int) -> Tuple[int, ...]:
    """A grid with an images axis first when a prompt holds several.

    Args:
        grid (tuple[int, int]): One image's grid.
        images (int): The most images a prompt holds.

    Returns:
        *tuple[int, ...]*: ``grid``, or ``(images, *grid)``.
    """
    return grid if images == 1 else (images, *grid)
