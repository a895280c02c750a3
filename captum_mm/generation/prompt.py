"""The prompt and the continuation as a user gives them: read into the model's forward arguments and checked."""

import inspect
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union, cast

import torch
from torch import Tensor, nn

from captum_mm.generation.convention import Continuation

ContinuationLike = Union[Tensor, Sequence[Sequence[int]]]
CACHE_ARGUMENTS = ("cache", "past_key_values")


def prompt_arguments(model: nn.Module, inputs: Union[Mapping[str, Any], Tuple[Any, ...]]) -> Dict[str, Any]:
    """The prompt as the model's forward arguments by name: a mapping (a tokenizer's batch) as it is, positional
    inputs bound to ``model.forward``'s signature. A cache is refused: the explanation runs prompt and
    continuation in one forward.

    Args:
        model (nn.Module): The HuggingFace model.
        inputs (Mapping or tuple): The prompt.

    Returns:
        *dict*: The forward arguments by name (None values left out).
    """
    if isinstance(inputs, Mapping):
        prompt = dict(inputs)
    else:
        try:
            prompt = dict(inspect.signature(model.forward).bind_partial(*inputs).arguments)
        except TypeError as error:
            raise ValueError(f"The prompt inputs do not fit {type(model).__name__}.forward: {error}") from None
    cached = [name for name in CACHE_ARGUMENTS if prompt.get(name) is not None]
    if cached:
        order = ", ".join(list(inspect.signature(model.forward).parameters)[:4])
        raise ValueError(
            f"The prompt gives {cached[0]}, which explanations do not take (prompt and continuation run in one "
            f"forward). {type(model).__name__}.forward takes ({order}, ...): pass the prompt as a dict, e.g. "
            "{'input_ids': ids, 'attention_mask': mask}."
        )
    return {name: value for name, value in prompt.items() if value is not None}


def check_left_padding(ids: Tensor, mask: Optional[Tensor]) -> None:
    """A decoder-only prompt's ``attention_mask`` must have ``ids``' shape and end in real tokens."""
    if mask is not None and (mask.shape != ids.shape or not bool(mask[:, -1].all())):
        raise ValueError(
            "The prompt's attention_mask must have input_ids' shape and end in real tokens (left padding, as "
            f"generation pads); got shape {tuple(mask.shape)} with padding at the end."
        )


def given_continuation(continuation: Any, batch_size: int, prompt_length: int, device: torch.device) -> Continuation:
    """A user's continuation: a ``[B, C]`` tensor (every token explained) or one id list per sample."""
    if isinstance(continuation, Tensor):
        if continuation.dim() != 2 or continuation.shape[0] != batch_size or continuation.is_floating_point():
            raise ValueError(
                f"continuation must be an integer tensor [batch={batch_size}, tokens] or one list of token ids per "
                f"sample, got a tensor of shape {tuple(continuation.shape)} and dtype {continuation.dtype}."
            )
        ids = continuation.to(device=device, dtype=torch.long)
        return Continuation(ids, torch.ones_like(ids, dtype=torch.bool), prompt_length)
    rows = [list(row) for row in continuation]
    if len(rows) != batch_size or not all(isinstance(token, int) for row in rows for token in row):
        raise ValueError(f"continuation must hold one list of int token ids per sample ({batch_size}), got {continuation!r}.")
    length = max((len(row) for row in rows), default=0)
    ids = torch.zeros(batch_size, length, dtype=torch.long, device=device)
    mask = torch.zeros(batch_size, length, dtype=torch.bool, device=device)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[index, : len(row)] = True
    return Continuation(ids, mask, prompt_length)


def check_ids(model: nn.Module, what: str, ids: Tensor) -> None:
    """Token ids must index the model's input embeddings (image, video and audio placeholders excepted)."""
    vocabulary = cast(nn.Embedding, cast(Any, model).get_input_embeddings()).num_embeddings
    outside = ids[(ids < 0) | (ids >= vocabulary)]
    outside = outside[~torch.isin(outside, torch.tensor(_placeholder_ids(model), dtype=outside.dtype, device=outside.device))]
    if outside.numel():
        raise ValueError(f"{what} holds token ids outside the vocabulary (0..{vocabulary - 1}): {sorted(set(outside.tolist()))}.")


def _placeholder_ids(model: nn.Module) -> List[int]:
    """The image, video and audio placeholder ids the model's config names (VLMs replace them before the embedding)."""
    settings: Dict[str, Any] = getattr(getattr(model, "config", None), "__dict__", {})
    return [value for name, value in settings.items() if isinstance(value, int)
            and name.endswith(("_token_id", "_token_index")) and any(kind in name for kind in ("image", "video", "audio", "vision"))]


def check_tokens(model: nn.Module, tokens: Continuation, limit: Optional[int]) -> None:
    """The continuation must be non-empty, in the vocabulary and, after the prompt, within ``limit`` positions."""
    if tokens.ids.shape[1] == 0:
        raise ValueError("The continuation is empty: there is no generated token to explain.")
    check_ids(model, "continuation", tokens.ids[tokens.mask])
    prompt_length = tokens.prompt_length
    total = prompt_length + tokens.ids.shape[1]
    if limit is not None and total > limit:
        raise ValueError(
            f"Prompt ({prompt_length}) + continuation ({tokens.ids.shape[1]}) = {total} tokens, more than the "
            f"{limit} positions {type(model).__name__} allows."
        )
