"""From relevance matrices to what users receive: explained elements placed back on their samples
(:class:`Explanation`), and Captum's attributions shaped like the inputs."""

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_mm._precision import accumulation_dtype
from captum_mm.models import TargetSelection
from captum_mm.relevance.propagation import Matrices, continued_through, relevance_rows
from captum_mm.relevance.schedule import Schedule
from captum_mm.relevance.stages import read_columns

#: Outputs today's families fill; reading one a family does not fill gives None.
_KNOWN_OUTPUTS = ("text", "image")


@dataclass
class Explanation:
    """Per-token relevance of one batch, per output the adapter declares.

    An explanation is a set of *elements* -- a sample's prediction, a DETR query --
    placed back on their samples. Each output is read as an attribute
    (``explanation.text``, ``explanation.image``, any other name the adapter declares).

    Attributes:
        relevance (dict[str, Tensor]): Output name to relevance: ``[B, ...]`` with one
                    element per sample, or ``[B, K, ...]`` when a sample has ``K``
                    explained queries (DETR) or generated tokens. Text outputs are ``[B, T]``;
                    image outputs ``[B, R]`` over regions or ``[B, h, w]`` over a patch or
                    feature grid; ``generated`` is ``[B, K, C]`` over the continuation.
        target (Tensor): Explained class of each element, in every family: ``[B]`` (or ``[B, K]`` for
                    DETR and generation, ``-1`` where a sample has fewer than ``K`` explained elements).
                    A language model's class is a vocabulary entry: a generated token's is its id.
        scores (Tensor): Predicted probability of the explained class, shaped like ``target``: in the
                    model's dtype, float32 for float16/bfloat16 models (generated tokens' probabilities
                    are then computed from the logits in float32).
        queries (Tensor or None): DETR only: ``[B, K]`` explained query indices, ``-1`` for padding.
        positions (Tensor or None): Generation only: ``[B, K]`` position in the sequence predicting
                    them (prompt + continuation; an encoder-decoder's decoder) of each explained token,
                    ``-1`` for padding.
        generated_ids (Tensor or None): Generation only (``explain`` with ``continuation=`` or
                    ``generate=True``): ``[B, K]`` the ids of the explained continuation tokens, given
                    or generated, ``-1`` where a sample has none (after its end token, or a shorter
                    given continuation). The same values as ``target``, as the explained classes
                    of a language model are its tokens.

    Padded tokens (attention masks, DETR's pixel mask) have zero relevance. Relevance is
    float32 for float16/bfloat16 models (whose own dtype cannot hold its small values), in
    the model's dtype otherwise.
    """

    relevance: Dict[str, Tensor]
    target: Tensor
    scores: Tensor
    queries: Optional[Tensor] = None
    positions: Optional[Tensor] = None
    generated_ids: Optional[Tensor] = None

    def __getattr__(self, name: str) -> Any:
        relevance = self.__dict__.get("relevance", {})
        if name in relevance:
            return relevance[name]
        if name in _KNOWN_OUTPUTS:
            return None
        raise AttributeError(f"{type(self).__name__} has no output {name!r}; it holds {sorted(relevance)}.")

    def outputs(self) -> Dict[str, Tensor]:
        """Every output's relevance, by name."""
        return dict(self.relevance)


def read_out(schedule: Schedule, matrices: Matrices) -> Dict[str, Tensor]:
    """Each output's readout row, the row token's own entry zeroed, padding zeroed."""
    outputs = {}
    for name, spec in schedule.outputs.items():
        rows = read_columns(schedule, spec, relevance_rows(matrices, spec.pair, spec.rows, spec.row_weights))
        if spec.through is not None:
            rows = continued_through(rows, spec.through, matrices)
        if spec.spread is not None:
            rows = rows @ spec.spread.to(rows)
        if spec.positions is not None:
            grid = cast(Tuple[int, ...], spec.grid)  # positions come with a grid
            rows = rows.new_zeros(rows.shape[0], math.prod(grid)).scatter(1, spec.positions, rows)
        outputs[name] = rows.reshape(rows.shape[0], *spec.grid) if spec.grid else rows
    return outputs


def assemble(selection: TargetSelection, outputs: Dict[str, Tensor], num_samples: int) -> Explanation:
    """Elements back to samples: ``[B, ...]``, or ``[B, K, ...]`` when queries or generated tokens are
    explained."""
    slots = selection.grad_outputs.shape[0]

    def place(values: Tensor, fill: float = 0.0) -> Tensor:
        if not selection.several_per_sample:
            placed = values.new_full((num_samples, *values.shape[1:]), fill)
            placed[selection.sample] = values
        else:
            placed = values.new_full((num_samples, slots, *values.shape[1:]), fill)
            placed[selection.sample, selection.slot] = values
        return placed

    return Explanation(
        relevance={name: place(values) for name, values in outputs.items()},
        target=place(selection.classes, -1),
        scores=place(selection.scores.to(accumulation_dtype(selection.scores.dtype))),
        queries=place(selection.queries, -1) if selection.queries is not None else None,
        positions=place(selection.positions, -1) if selection.positions is not None else None,
    )


def input_outputs(
    inputs: Tuple[Tensor, ...], arguments: Dict[str, Any], argument_outputs: Mapping[str, str]
) -> List[Optional[str]]:
    """The output each input carries, as the adapter declares it per forward argument: an input is
    matched to the model argument it was passed as (unchanged). Raises for an input the model
    never received as such."""
    carried: List[Optional[str]] = []
    for position, tensor in enumerate(inputs):
        names = [name for name, value in arguments.items() if value is tensor]
        if not names:
            raise ValueError(
                f"Input {position} (shape {tuple(tensor.shape)}) was not passed unchanged to the model's forward, "
                "so which output it carries is unknown: pass input_modalities, e.g. ('text', 'image', None)."
            )
        carried.append(argument_outputs.get(names[0]))
    return carried


def spread_to_inputs(
    explanation: Explanation, inputs: Tuple[Tensor, ...], input_modalities: Sequence[Optional[str]]
) -> Tuple[Tensor, ...]:
    """Per-token relevance spread over each input's shape (see ``attribute``)."""
    relevance = explanation.outputs()
    if explanation.queries is not None:
        relevance = {name: values[:, 0] for name, values in relevance.items()}
    if len(input_modalities) != len(inputs):
        raise ValueError(f"input_modalities has {len(input_modalities)} entries for {len(inputs)} inputs.")
    return tuple(_spread(relevance, tensor, modality) for tensor, modality in zip(inputs, input_modalities))


def _spread(relevance: Dict[str, Tensor], tensor: Tensor, modality: Optional[str]) -> Tensor:
    if modality is not None and modality not in relevance:
        raise ValueError(f"Unknown modality {modality!r}: this model explains {sorted(relevance)} (or None).")
    values = relevance.get(modality) if modality else None
    dtype = accumulation_dtype(tensor.dtype) if tensor.is_floating_point() else torch.get_default_dtype()
    if values is None:
        return torch.zeros(tensor.shape, dtype=dtype, device=tensor.device)
    if values.dim() == 4 and tensor.dim() == 4:  # several images a prompt ``[B, images, h, w]`` over ``[images, C, H, W]``
        return _spread_images(values, tensor, dtype)
    if values.dim() in (4, 5):  # tiles ``[B, (images,) tiles, h, w]`` over ``[B, images, tiles, channels, H, W]``
        return _spread_tiles(values, tensor, dtype)
    if values.dim() == 3:
        if tensor.dim() < 3:
            raise ValueError(f"A spatial input needs rank >= 3, got shape {tuple(tensor.shape)}.")
        cells = F.interpolate(values[:, None], size=tensor.shape[-2:], mode="nearest")[:, 0]
        shape = (cells.shape[0],) + (1,) * (tensor.dim() - 3) + tuple(cells.shape[-2:])
        return cells.reshape(shape).expand(tensor.shape).to(dtype).contiguous()
    if tensor.dim() < 2 or tensor.shape[1] != values.shape[1]:
        raise ValueError(f"An input of shape {tuple(tensor.shape)} cannot hold {modality} relevance for {values.shape[1]} tokens.")
    shape = tuple(values.shape) + (1,) * (tensor.dim() - 2)
    return values.reshape(shape).expand(tensor.shape).to(dtype).contiguous()


def _spread_tiles(values: Tensor, tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """Each tile's grid spread over its pixels (the images, when one a prompt, on no axis of ``values``)."""
    tiles = values if values.dim() == 5 else values[:, None]
    if tensor.dim() != 6 or tuple(tensor.shape[1:3]) != tuple(tiles.shape[1:3]):
        raise ValueError(f"Relevance over {tiles.shape[1]} images of {tiles.shape[2]} tiles needs pixel values [batch, "
                         f"{tiles.shape[1]}, {tiles.shape[2]}, channels, height, width], got shape {tuple(tensor.shape)}.")
    cells = F.interpolate(tiles.flatten(1, 2), size=tensor.shape[-2:], mode="nearest").unflatten(1, tiles.shape[1:3])
    return cells[:, :, :, None].expand(tensor.shape).to(dtype).contiguous()


def _spread_images(values: Tensor, tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """Each prompt's images' grids over their rows of ``[images, channels, H, W]`` (every prompt holding as many)."""
    prompts, images = values.shape[:2]
    if tensor.shape[0] != prompts * images:
        raise ValueError(f"Relevance over {images} images a prompt for {prompts} prompts cannot be spread over {tensor.shape[0]} "
                         "images: attribute spreads it when every prompt holds as many images; otherwise read "
                         "explain(...).image [B, images, h, w] (a prompt's missing images are 0).")
    cells = F.interpolate(values.flatten(0, 1)[:, None], size=tensor.shape[-2:], mode="nearest")
    return cells.expand(tensor.shape).to(dtype).contiguous()
