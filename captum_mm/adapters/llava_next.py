"""LLaVA-NeXT and LLaVA-OneVision ("anyres"): each image is given as a base image (resized whole) and tiles of the image
resized to the best of ``config.image_grid_pinpoints`` (``pixel_values`` ``[batch, patches, channels, height, width]``,
base first, then the tiles row by row; ``image_sizes`` ``[batch, 2]`` the original height and width). The vision tower
encodes the base image and every tile alone; the model lays the tiles' features out on the high-resolution grid,
crops the padding off (``unpad_image``), appends an ``image_newline`` token after each row (OneVision first shrinks
large grids bilinearly, ``vision_aspect_ratio``) and puts the base image's features before them.

Schedule: LLaVA's (:mod:`captum_mm.adapters.llava`), the vision sequence of a sample being its base image's and tiles'
tokens one after the other: the tower's per-tile maps are laid out block-diagonally (a tile attends to itself only).
The token map ``P`` is the model's own ``pack_image_features`` applied to one-hot features (exact: packing is linear),
so each image token reads the vision token it was made from (OneVision's shrunk grid: the bilinear weights) and a
newline token nothing. The ``image`` output is one map over the original image: the cells of the high-resolution patch
grid (the tiles' grids side by side) that ``unpad_image`` keeps; each tile patch on its cell, the base image's patches
spread over the region by area overlap.
The vision tower is captured eagerly (its maps are laid out after the forward), the LM as LLaVA's.
"""

from functools import partial
from types import MappingProxyType
from typing import Any, Dict, List, Optional, Tuple, cast

import torch
from torch import Tensor
from transformers import LlavaNextForConditionalGeneration, LlavaOnevisionForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)

from captum_mm.adapters.decoder import DecoderOnlyAdapter
from captum_mm.adapters.llama import LlamaAdapter
from captum_mm.adapters.llava import LlavaAdapter
from captum_mm.adapters.vision_language import IMAGE, VISION, VisionLanguageAdapter
from captum_mm.capture.record import AttentionRecord
from captum_mm.capture.windows import join_windows
from captum_mm.models.arguments import Argument, require
from captum_mm.models.pixels import PixelPooling, patch_sums, per_prompt
from captum_mm.models.registry import register_adapter
from captum_mm.relevance.schedule import Readout, Stage

TILES = "[batch, patches, channels, height, width]"


def area_overlap(parts: int, cells: int) -> Tensor:
    """How ``parts`` equal intervals of ``[0, 1)`` cover ``cells`` equal ones: each part's share in each cell.

    Args:
        parts (int): The coarse intervals.
        cells (int): The fine intervals.

    Returns:
        *Tensor*: ``[parts, cells]``, each row summing to 1.
    """
    part, cell = torch.arange(parts, dtype=torch.float64)[:, None], torch.arange(cells, dtype=torch.float64)[None, :]
    overlap = torch.minimum((part + 1) / parts, (cell + 1) / cells) - torch.maximum(part / parts, cell / cells)
    return overlap.clamp(min=0) * parts


@register_adapter
class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT: a base image and its tiles through the vision tower, packed into image tokens with newlines.

    Args:
        model (nn.Module): The LLaVA-NeXT model the adapter serves.
    """

    model_classes: Tuple[type, ...] = (LlavaNextForConditionalGeneration,)
    model: Any
    # The vision tower's per-tile maps are laid out after the forward: captured eagerly.
    attention_functions = MappingProxyType(dict(LlamaAdapter.attention_functions))
    image_tokens_on_grid = False  # newline tokens end each row
    several_images = False  # one anyres image a prompt (its base image and tiles)
    arguments = MappingProxyType(dict(
        DecoderOnlyAdapter.arguments,
        # No output: a tile's pixels are not the image's (explain gives the image map; attribute the prompt's tokens).
        pixel_values=Argument(5, TILES, None, f"A LLaVA-NeXT prompt needs pixel_values {TILES}."),
        image_sizes=Argument(2, "[batch, 2]", None, "A LLaVA-NeXT prompt needs image_sizes [batch, 2] (height, width)."),
    ))

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        sizes = arguments.get("image_sizes")
        if sizes is not None:
            require(bool((sizes == sizes[:1]).all()), f"Images of one size (image_sizes rows alike) are explained together, "
                    f"got {sizes.tolist()}.")
        super().check_arguments(arguments)
        pixels, size = arguments["pixel_values"], arguments["image_sizes"][0].tolist()
        require(pixels.shape[1] >= self._tiles(arguments), f"image_sizes {size} needs {self._tiles(arguments)} "
                f"patches (the base image and its tiles) per image; pixel_values has {pixels.shape[1]}.")

    def _tile_size(self) -> Tuple[int, int]:
        """The vision tower's image size and its patch grid's side."""
        size = int(self.model.config.vision_config.image_size)
        return size, size // self._patch_size()

    def _tiles(self, arguments: Dict[str, Any]) -> int:
        """The base image and its tiles: the patches of ``pixel_values`` the model reads."""
        return int(image_size_to_num_patches(arguments["image_sizes"][0], self.model.config.image_grid_pinpoints,
                                             self._tile_size()[0]))

    def _tile_grid(self, arguments: Dict[str, Any]) -> Tuple[int, int]:
        """Rows and columns of tiles."""
        rows, columns = get_anyres_image_grid_shape(arguments["image_sizes"][0], self.model.config.image_grid_pinpoints,
                                                    self._tile_size()[0])
        return int(rows), int(columns)

    def _per_tile(self) -> int:
        return int(self._has_class_token()) + self._tile_size()[1] ** 2

    def vision_tokens(self, arguments: Dict[str, Any]) -> int:
        return self._tiles(arguments) * self._per_tile()

    def patch_grid(self, arguments: Dict[str, Any]) -> Tuple[int, int]:
        """The high-resolution grid: the tiles' patch grids side by side."""
        rows, columns = self._tile_grid(arguments)
        side = self._tile_size()[1]
        return rows * side, columns * side

    def _pack(self, features: Tensor, arguments: Dict[str, Any]) -> Tensor:
        """The model's packing of one image's ``[patches, features, D]`` into its ``[image tokens, D]`` (newlines 0)."""
        strategy = arguments.get("vision_feature_select_strategy") or self.model.config.vision_feature_select_strategy
        packed, _ = self.model.model.pack_image_features([features], arguments["image_sizes"][:1], strategy,
                                                         image_newline=features.new_zeros(features.shape[-1]))
        return cast(Tensor, packed[0])

    def _features_per_image(self, pixels: Tensor, arguments: Dict[str, Any]) -> int:
        features = self._per_tile() - self.first_feature(arguments)
        return self._pack(torch.zeros(self._tiles(arguments), features, 1), arguments).shape[0]

    def tile_token_map(self, arguments: Dict[str, Any]) -> Tensor:
        """``P``: each image token's weights on the vision sequence (base image's tokens, then each tile's).

        Args:
            arguments (dict): The forward's arguments.

        Returns:
            *Tensor*: ``[image tokens, tiles * tokens per tile]``; a newline token's row is zero.
        """
        tiles, per_tile, first = self._tiles(arguments), self._per_tile(), self.first_feature(arguments)
        features = per_tile - first
        one_hot = torch.eye(tiles * features, dtype=torch.float64).reshape(tiles, features, tiles * features)
        packed = self._pack(one_hot, arguments)
        token_map = packed.new_zeros(packed.shape[0], tiles, per_tile)
        token_map[:, :, first:] = packed.reshape(-1, tiles, features)
        return token_map.flatten(1)

    def image_region(self, arguments: Dict[str, Any]) -> Tensor:
        """The cells of the high-resolution grid the original image covers (the model's ``unpad_image``).

        Args:
            arguments (dict): The forward's arguments.

        Returns:
            *Tensor*: ``[rows, columns]`` their flat indices on the high-resolution grid.
        """
        grid = self.patch_grid(arguments)
        return unpad_image(torch.arange(grid[0] * grid[1]).reshape(1, *grid), arguments["image_sizes"][0])[0]

    def tile_spread(self, arguments: Dict[str, Any]) -> Tensor:
        """How each vision token's relevance lands on the original image's region of the high-resolution grid: a tile's
        patch on its cell (nowhere when it shows padding only), a base image patch over the cells it covers, by area
        (its row sums to 1), a class token nowhere.

        Args:
            arguments (dict): The forward's arguments.

        Returns:
            *Tensor*: ``[tiles * tokens per tile, region cells]``, the region's cells row-major.
        """
        grid, side, columns = self.patch_grid(arguments), self._tile_size()[1], self._tile_grid(arguments)[1]
        tiles, skip = self._tiles(arguments), int(self._has_class_token())
        spread = torch.zeros(tiles, self._per_tile(), grid[0] * grid[1], dtype=torch.float64)
        within = torch.arange(side)
        for tile in range(1, tiles):
            rows = (tile - 1) // columns * side + within
            cells = rows[:, None] * grid[1] + (tile - 1) % columns * side + within[None, :]
            spread[tile, skip:] = torch.zeros(side * side, grid[0] * grid[1], dtype=torch.float64).scatter_(
                1, cells.reshape(-1, 1), 1.0)
        region = self.image_region(arguments)
        spread = spread[:, :, region.flatten()]
        base = area_overlap(side, region.shape[0])[:, None, :, None] * area_overlap(side, region.shape[1])[None, :, None, :]
        spread[0, skip:] = base.reshape(side * side, -1)
        return spread.flatten(0, 1)

    def image_readout(self, arguments: Dict[str, Any], query: str, rows: Tensor, key: str, image_tokens: Tensor) -> Readout:
        if not self.compose_vision:
            return super().image_readout(arguments, query, rows, key, image_tokens)
        positions = torch.nonzero(image_tokens)[:, 1].reshape(image_tokens.shape[0], -1)
        stage = Stage((VISION, VISION), token_map=self.tile_token_map(arguments).to(positions.device))
        region = self.image_region(arguments)
        return Readout(query, rows, key, grid=(region.shape[0], region.shape[1]), column_index=positions, through=stage,
                       spread=self.tile_spread(arguments).to(positions.device))

    def pixel_pooling(self, arguments: Dict[str, Any]) -> Optional[PixelPooling]:
        """The base image's and each tile's pixels summed over channels and each cell of its patch grid, a class token
        0: the vision sequence the image readout spreads over the original image's region."""
        tiles, side, skip = self._tiles(arguments), self._tile_size()[1], int(self._has_class_token())

        def pool(relevance: Tensor) -> Dict[str, Tensor]:
            patches = patch_sums(relevance[:, :tiles], (side, side))  # the processor's padding tiles left out
            return {IMAGE: torch.nn.functional.pad(patches, (skip, 0)).flatten(1)}

        return pool

    def lay_out_maps(self, record: AttentionRecord) -> None:
        """The tower's ``[batch * tiles, H, n, n]`` maps as each sample's block-diagonal ``[H, tiles * n, tiles * n]``."""
        tokens = self.vision_tokens(record.arguments)
        for call in record.calls:
            if isinstance(call.spec.module, self.vision_attention_classes):
                call.lay_out(partial(_tiles_on_diagonal, tokens=tokens))


def _tiles_on_diagonal(maps: Tensor, tokens: int) -> Tensor:
    tiles: List[Tensor] = list(maps.split(1, dim=-4))
    return join_windows(tiles, tokens)


@register_adapter
class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision: LLaVA-NeXT's layout, large tile grids shrunk bilinearly (``vision_aspect_ratio``). Several images
    a prompt (``batch_num_images`` above 1, ``pixel_values`` ``[images, patches, C, H, W]``): the model reads each image's
    base image alone, its tokens and a newline; each image's map is on its base image's patch grid. Videos are not
    explained.

    Args:
        model (nn.Module): The LLaVA-OneVision model the adapter serves.
    """

    model_classes = (LlavaOnevisionForConditionalGeneration,)
    several_images = True
    arguments = MappingProxyType(dict(
        DecoderOnlyAdapter.arguments,
        pixel_values=Argument(5, "[images, patches, channels, height, width]", None,
                              "A LLaVA-OneVision prompt needs pixel_values [images, patches, channels, height, width].",
                              batched=False),
        image_sizes=Argument(2, "[images, 2]", None, "A LLaVA-OneVision prompt needs image_sizes [images, 2] (height, width).",
                             batched=False),
    ))

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        require(arguments.get("pixel_values_videos") is None, "LLaVA-OneVision's videos (pixel_values_videos) are not "
                "explained: pass images (pixel_values, image_sizes).")
        if not self._several(arguments):
            return super().check_arguments(arguments)
        images = torch.as_tensor(arguments["batch_num_images"]).tolist()
        require(min(images) > 1, f"Prompts holding one image (tiled whole) and several (base images only) are explained in "
                f"separate batches: batch_num_images {images}.")
        VisionLanguageAdapter.check_arguments(self, arguments)

    def _several(self, arguments: Dict[str, Any]) -> bool:
        images = arguments.get("batch_num_images")
        return images is not None and int(torch.as_tensor(images).max()) > 1

    def images_per_prompt(self, arguments: Dict[str, Any]) -> Tensor:
        if not self._several(arguments):
            return super().images_per_prompt(arguments)
        return torch.as_tensor(arguments["batch_num_images"])

    def _features_per_image(self, pixels: Tensor, arguments: Dict[str, Any]) -> int:
        if not self._several(arguments):
            return super()._features_per_image(pixels, arguments)
        return self._per_tile() - self.first_feature(arguments) + 1  # and a newline

    def vision_tokens(self, arguments: Dict[str, Any]) -> int:
        return self._per_tile() if self._several(arguments) else super().vision_tokens(arguments)

    def patch_grid(self, arguments: Dict[str, Any]) -> Tuple[int, int]:
        side = self._tile_size()[1]
        return (side, side) if self._several(arguments) else super().patch_grid(arguments)

    def image_readout(self, arguments: Dict[str, Any], query: str, rows: Tensor, key: str, image_tokens: Tensor) -> Readout:
        if not self._several(arguments):
            return super().image_readout(arguments, query, rows, key, image_tokens)
        return VisionLanguageAdapter.image_readout(self, arguments, query, rows, key, image_tokens)

    def pixel_pooling(self, arguments: Dict[str, Any]) -> Optional[PixelPooling]:
        """Several images a prompt: each base image's pixels summed over channels and each cell of its patch grid,
        each prompt's images one after the other."""
        if not self._several(arguments):
            return super().pixel_pooling(arguments)
        side, images = self._tile_size()[1], self.images_per_prompt(arguments)
        return lambda relevance: {IMAGE: per_prompt(patch_sums(relevance[:, 0], (side, side)), images)}

    def token_map(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """A base image's tokens read its features one by one; the newline after them nothing."""
        features = grid[0] * grid[1]
        return torch.cat([torch.eye(features, dtype=torch.float64), torch.zeros(1, features, dtype=torch.float64)])

    def lay_out_maps(self, record: AttentionRecord) -> None:
        if self._several(record.arguments):
            return VisionLanguageAdapter.lay_out_maps(self, record)
        return super().lay_out_maps(record)

    def _pack(self, features: Tensor, arguments: Dict[str, Any]) -> Tensor:
        ratio = arguments.get("vision_aspect_ratio") or self.model.config.vision_aspect_ratio
        packed, _ = self.model.model.pack_image_features([features], arguments["image_sizes"][:1],
                                                         image_newline=features.new_zeros(features.shape[-1]),
                                                         vision_aspect_ratio=ratio)
        return cast(Tensor, packed[0])
