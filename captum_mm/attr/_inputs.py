"""Relevance read at a model's inputs (AttnLRP): the tensors kept while it runs, and each output read from them.

Kept are the word embeddings (the output of ``model.get_input_embeddings()``, where integer token ids enter; an
encoder-decoder's encoder and decoder embeddings apart, by their modules or, shared, by call order) and
the model's floating forward arguments (``inputs_embeds``, region features, ``pixel_values``), made to require grad
for the pass when they do not (restored afterwards). An output is read from them as the adapter declares which
argument carries it: a token output from the ``[B, N, ...]`` inputs of its tokens (summed over their features), an
image output on a patch grid from its ``[B, C, H, W]`` pixels (summed over channels and each grid cell) or from the
pixels the adapter pooled onto its readout's vision tokens (tiles, flattened patches, several images a prompt), an
output on time steps from its ``[B, C, T]`` features (summed over channels; Whisper's audio), and the tokens those
steps belong to (the support of the output's token map: Whisper's frames) from the same features.
"""

import inspect
import math
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_mm._handles import HandleList
from captum_mm._precision import HALF_PRECISION
from captum_mm.models.pixels import cell_sums
from captum_mm.relevance.schedule import Readout, Schedule

#: The word embeddings' entry among the kept inputs (no forward argument has this name).
EMBEDDINGS = "<word embeddings>"
#: An encoder-decoder's decoder word embeddings' entry.
DECODER_EMBEDDINGS = "<decoder word embeddings>"
#: The token ids argument each embeddings entry embeds.
EMBEDDED_IDS = {EMBEDDINGS: "input_ids", DECODER_EMBEDDINGS: "decoder_input_ids"}
#: The images' argument (an adapter may pool it itself: :meth:`~captum_mm.models.ArchitectureAdapter.pixel_pooling`).
PIXELS = "pixel_values"


class KeptInputs:
    """The input tensors of the latest forward, by argument name (:data:`EMBEDDINGS` for the word embeddings)."""

    def __init__(self) -> None:
        self.tensors: Dict[str, Tensor] = {}
        self.calls: Dict[str, int] = {}  # forward calls of each embeddings entry (an encoder-decoder: its modules')
        self.changed: List[Tuple[Tensor, Tensor]] = []  # (input, its own data) made to require grad or upcast

    @property
    def embedding_calls(self) -> int:
        """The most calls one embeddings entry received in the latest forward (more than one: several token streams
        embedded alike, which AttnLRP does not read)."""
        return max(self.calls.values(), default=0)

    def prepare(self, value: Tensor) -> None:
        """Make a leaf input require grad (a half-precision one upcast to float32 in place, as the model's weights
        are while LRP runs, so that its gradient is not rounded to its dtype); restored by :meth:`restore`."""
        if value.requires_grad or value.is_inference():  # the engine refuses inference tensors itself
            return
        self.changed.append((value, value.data))
        if value.dtype in HALF_PRECISION:
            value.data = value.data.float()
        value.requires_grad_(True)

    def restore(self) -> None:
        """Every changed input back to its own data, not requiring grad."""
        for tensor, data in reversed(self.changed):
            tensor.requires_grad_(False)
            tensor.data = data
        self.changed.clear()


@contextmanager
def keep_inputs(model: nn.Module) -> Iterator[KeptInputs]:
    """Keep the model's input tensors of each forward (see the module); everything undone on exit.

    Args:
        model (nn.Module): The model.

    Yields:
        KeptInputs: Filled by each forward.
    """
    kept, handles = KeptInputs(), HandleList()
    streams = _embedded_streams(model)

    def on_arguments(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        kept.tensors.clear()
        kept.calls.clear()
        names = list(_parameter_names(module)[: len(args)]) + list(kwargs)
        for name, value in zip(names, (*args, *kwargs.values())):
            if isinstance(value, Tensor) and value.is_floating_point() and torch.is_grad_enabled():
                kept.prepare(value)
                kept.tensors[name] = value

    def on_embeddings(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
        if _embeds_ids(args, output):  # Swin's patch embeddings, Whisper's convolutional stem are no word embeddings
            keys = [key for key, embeddings in streams if embeddings is module]  # shared: in call order
            key = keys[min(sum(kept.calls.get(k, 0) for k in keys), len(keys) - 1)]
            kept.calls[key] = kept.calls.get(key, 0) + 1
            kept.tensors[key] = output

    try:
        handles.append(model.register_forward_pre_hook(on_arguments, with_kwargs=True))
        for embeddings in {id(module): module for _, module in streams}.values():
            handles.append(embeddings.register_forward_hook(on_embeddings))
        yield kept
    finally:
        handles.remove()
        kept.restore()


def _word_embeddings(model: Any) -> Any:
    """``model.get_input_embeddings()``, else its text tower's (a dual encoder's ``text_model``: CLIP); None where
    neither has any."""
    for owner in (model, getattr(model, "text_model", None)):
        try:
            embeddings = getattr(owner, "get_input_embeddings", lambda: None)()
        except NotImplementedError:
            continue
        if embeddings is not None:
            return embeddings
    return None


def _embeds_ids(args: Tuple[Any, ...], output: Any) -> bool:
    """Whether a call of an input embeddings module embedded integer token ids into a floating tensor."""
    ids = args[0] if args else None
    return isinstance(ids, Tensor) and not ids.is_floating_point() and isinstance(output, Tensor) and output.is_floating_point()


def _innermost_decoder(model: Any) -> Any:
    """``model.get_decoder()`` followed down to the module owning the decoder's embeddings (BLIP-2's Flan-T5: the
    LM, then its decoder stack)."""
    decoder = model
    for _ in range(4):  # the wrappers' depth
        inner = getattr(decoder, "get_decoder", lambda: decoder)()
        if inner is decoder or not isinstance(inner, nn.Module):
            break
        decoder = inner
    return decoder


def _embedded_streams(model: Any) -> List[Tuple[str, nn.Module]]:
    """The word embeddings by kept entry: the model's and its encoder's; apart, the decoder's of an encoder-decoder
    or of a model whose ``decoder_input_ids`` have embeddings of their own (BLIP's answer decoder). The model's own
    (BLIP-2 embeds the prompt for its Flan-T5) count as the encoder's unless they are the decoder's (Whisper's)."""
    own = _word_embeddings(model)
    alone = [(EMBEDDINGS, own)] if isinstance(own, nn.Module) else []
    pair = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
    if not (pair or "decoder_input_ids" in _parameter_names(model)):
        return alone
    encoder = _word_embeddings(model.get_encoder()) if hasattr(model, "get_encoder") else None
    decoder = _word_embeddings(_innermost_decoder(model))
    if not pair and (decoder is own or decoder is encoder):
        return alone
    streams = [(EMBEDDINGS, encoder), (EMBEDDINGS, None if own is decoder else own), (DECODER_EMBEDDINGS, decoder)]
    return list({(key, id(module)): (key, module) for key, module in streams if isinstance(module, nn.Module)}.values())


def _parameter_names(module: nn.Module) -> List[str]:
    return list(inspect.signature(module.forward).parameters)


def read_inputs(schedule: Schedule, relevance: Dict[str, Tensor], argument_outputs: Mapping[str, str],
                pooled: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
    """Each output of ``schedule`` read from the relevance of the inputs carrying it.

    Args:
        schedule (Schedule): The explained elements' schedule.
        relevance (dict[str, Tensor]): ``[E, *input.shape[1:]]`` per kept input (``x * g``).
        argument_outputs (Mapping[str, str]): The output each forward argument carries (the adapter's).
        pooled (dict[str, Tensor], optional): ``[E, n]`` per output the adapter pooled from the pixels onto the
                    columns its readout reads (:data:`~captum_mm.models.pixels.PixelPooling`), placed as the readout
                    says. Default: None

    Returns:
        *dict[str, Tensor]*: ``[E, ...]`` per output, shaped as the schedule's readouts.
    """
    outputs, tokens = {}, _steps_on_tokens(schedule, relevance, argument_outputs)
    for name, spec in schedule.outputs.items():
        if pooled and name in pooled:
            outputs[name] = _placed(pooled[name], spec)
            continue
        carried = [values for argument, values in relevance.items() if argument_outputs.get(argument) == name]
        pixels = [values for values in carried if values.dim() == 4 and spec.grid is not None]
        steps = [values for values in carried if _over_time(values, spec)]
        if pixels:
            outputs[name] = _pooled(torch.stack(pixels).sum(0), spec.grid)
        elif steps:
            outputs[name] = torch.stack(steps).sum((0, 2)).reshape(-1, *(spec.grid or ()))
        else:
            outputs[name] = _read_tokens(schedule, name, spec, tokens, argument_outputs)
    return outputs


def _over_time(values: Tensor, spec: Readout) -> bool:
    """Whether ``values`` are ``[E, channels, T]`` on the ``T`` time steps an output spreads its tokens over (the
    ``(1, T)`` grid of Whisper's audio)."""
    return spec.spread is not None and values.dim() == 3 and spec.grid == (1, values.shape[-1])


def _steps_on_tokens(schedule: Schedule, relevance: Dict[str, Tensor], argument_outputs: Mapping[str, str]) -> Dict[str, Tensor]:
    """``relevance`` with each input over time steps summed over its channels and onto the tokens whose steps they are
    (the support of the output's spread, a partition: Whisper's frame ``j`` takes steps ``2j`` and ``2j + 1``),
    ``[E, N, 1]``; the other inputs as they are."""
    tokens = dict(relevance)
    for argument, values in relevance.items():
        spec = schedule.outputs.get(argument_outputs.get(argument, ""))
        if spec is not None and spec.spread is not None and _over_time(values, spec):
            support = (spec.spread != 0).to(values)
            if not torch.equal(support.sum(0), torch.ones_like(support[0])):
                raise TypeError(f"AttnLRP reads {argument!r} on its tokens only where each time step is one token's.")
            tokens[argument] = (values.sum(1) @ support.T)[..., None]
    return tokens


def _pooled(pixels: Tensor, grid: Any) -> Tensor:
    """``[E, C, H, W]`` summed over channels and over each cell of a ``(h, w)`` grid as nearest upsampling spreads it
    (:func:`~captum_mm.models.pixels.cell_sums`), as :meth:`attribute` spreads a cell and DETR maps its pixel mask
    onto its features."""
    if len(grid) != 2 or pixels.shape[-2] < grid[0] or pixels.shape[-1] < grid[1]:
        raise TypeError(f"AttnLRP reads one image a prompt, its pixels [batch, channels, height, width] summed on a (h, w) "
                        f"grid: it cannot pool pixels of shape {tuple(pixels.shape[-2:])} onto the grid {tuple(grid)}.")
    return cell_sums(pixels, grid)


def _read_tokens(schedule: Schedule, name: str, spec: Readout, relevance: Dict[str, Tensor],
                 argument_outputs: Mapping[str, str]) -> Tensor:
    """A token output: the summed relevance of the ``[B, N, ...]`` inputs of its modality's ``N`` tokens, or, in a
    joint stream (VisualBERT's text and regions), of the inputs of just its columns."""
    size = schedule.sizes[spec.key]
    carried = {output for output, readout in schedule.outputs.items() if readout.key == spec.key}
    inputs = [values.flatten(2).sum(-1) for argument, values in relevance.items()
              if argument_outputs.get(EMBEDDED_IDS.get(argument, argument)) in carried and values.dim() >= 3]
    whole = [values for values in inputs if values.shape[1] == size]
    if whole and spec.through is None:
        return read_columns(torch.stack(whole).sum(0), spec, schedule.masks[spec.key])
    own = [values for values in inputs if values.shape[1] == len(range(size)[spec.columns])]
    if not own or spec.column_index is not None or spec.column_mask is not None or spec.through is not None:
        raise TypeError(f"AttnLRP cannot read the {name!r} output at this model's inputs: no input of its {size} "
                        f"{spec.key} tokens (or pixels on its grid) was found among {sorted(relevance)}.")
    return _placed(torch.stack(own).sum(0) * schedule.masks[spec.key][:, spec.columns], spec)


def read_columns(values: Tensor, spec: Readout, mask: Tensor) -> Tensor:
    """An output read from per-token values of its key modality, ``[E, N]`` (``mask``: its real tokens): its columns,
    placed on its grid (``spec.through`` is not followed).

    Args:
        values (Tensor): ``[E, N]``.
        spec (Readout): The output's readout.
        mask (Tensor): ``[E, N]`` the modality's real tokens.

    Returns:
        *Tensor*: ``[E, ...]`` shaped as the output.
    """
    rows = values * mask
    if spec.column_mask is not None:
        rows = rows * spec.column_mask
    return _placed(rows[:, spec.columns] if spec.column_index is None else rows.gather(1, spec.column_index), spec)


def _placed(rows: Tensor, spec: Readout) -> Tensor:
    """Read columns spread, placed at their grid positions and shaped as the grid, as the readout says."""
    if spec.spread is not None:
        rows = rows @ spec.spread.to(rows)
    if spec.positions is not None:
        grid = spec.grid or ()
        rows = rows.new_zeros(rows.shape[0], math.prod(grid)).scatter(1, spec.positions, rows)
    return rows.reshape(rows.shape[0], *spec.grid) if spec.grid else rows
