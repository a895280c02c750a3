"""The forward arguments an adapter declares: each checked before the model runs (presence, rank,
batch size), and the output it carries (``attribute`` spreads that output's relevance over it)."""

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

TOKENS, PIXELS, REGIONS = "[batch, tokens]", "[batch, channels, height, width]", "[batch, regions, features]"


@dataclass(frozen=True)
class Argument:
    """One forward argument of the explained model.

    Attributes:
        rank (int): Its number of dimensions.
        layout (str): What they are, e.g. ``"[batch, tokens]"`` (for error messages).
        output (str, optional): The output it carries (``"text"``, ``"image"``).
        needed (str): Empty if it is optional; else the error given when it is missing.
                    Arguments sharing the message are alternatives: one of them is needed.
        batched (bool): Its first dimension is the batch (False: patches or images of the whole
                    batch, as Qwen2-VL's ``pixel_values`` and ``image_grid_thw``, LLaVA's several images a
                    prompt). Default: True
    """

    rank: int
    layout: str
    output: Optional[str] = None
    needed: str = ""
    batched: bool = True


def text_arguments(family: str) -> Dict[str, Argument]:
    """The text arguments of HF text models: ``input_ids`` or ``inputs_embeds``, and ``attention_mask``."""
    needed = f"{family} needs input_ids {TOKENS} or inputs_embeds [batch, tokens, hidden]."
    return {
        "input_ids": Argument(2, TOKENS, "text", needed),
        "inputs_embeds": Argument(3, "[batch, tokens, hidden]", "text", needed),
        "attention_mask": Argument(2, TOKENS),
    }


def check_declared(arguments: Dict[str, Any], declared: Mapping[str, Argument]) -> None:
    """Raise ``ValueError`` if a needed argument is missing, one has the wrong rank or an empty token
    axis, or their batch sizes disagree."""
    alternatives: Dict[str, List[str]] = {}
    for name, argument in declared.items():
        if argument.needed:
            alternatives.setdefault(argument.needed, []).append(name)
    for message, names in alternatives.items():
        require(any(arguments.get(name) is not None for name in names), message)
    for name, argument in declared.items():
        check_rank(arguments, name, argument.rank, argument.layout)
    check_batch_sizes(arguments, tuple(name for name, argument in declared.items() if argument.batched))


def outputs_of(declared: Mapping[str, Argument]) -> Mapping[str, str]:
    """The output each declared argument carries."""
    return MappingProxyType({name: argument.output for name, argument in declared.items() if argument.output})


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_rank(arguments: Dict[str, Any], name: str, rank: int, meaning: str) -> None:
    """Raise if ``arguments[name]`` is given with the wrong rank or an empty token axis."""
    value = arguments.get(name)
    if value is None:
        return
    require(
        isinstance(value, Tensor) and value.dim() == rank,
        f"{name} must be a {rank}-D tensor {meaning}, got "
        + (f"shape {tuple(value.shape)}." if isinstance(value, Tensor) else f"{type(value).__name__}."),
    )
    require(value.shape[1] > 0, f"{name} has zero tokens (shape {tuple(value.shape)}): at least one is needed.")


def check_batch_sizes(arguments: Dict[str, Any], names: Sequence[str]) -> None:
    """Raise if the given tensor arguments disagree on the batch size."""
    sizes = {name: arguments[name].shape[0] for name in names if isinstance(arguments.get(name), Tensor)}
    require(
        len(set(sizes.values())) <= 1,
        "Batch sizes disagree: " + ", ".join(f"{name} has {size}" for name, size in sizes.items())
        + "; every input must have the same first dimension.",
    )


def token_mask(mask: Optional[Tensor], batch_size: int, length: int, device: torch.device) -> Tensor:
    """A ``[B, N]`` boolean mask from an optional HF attention mask (``None`` means all real)."""
    if mask is None:
        return torch.ones(batch_size, length, dtype=torch.bool, device=device)
    return mask.to(device=device) != 0


def text_tokens(arguments: Dict[str, Any]) -> Tensor:
    """``input_ids``, or ``inputs_embeds`` when the model was called with embeddings."""
    return arguments["input_ids"] if arguments.get("input_ids") is not None else arguments["inputs_embeds"]
