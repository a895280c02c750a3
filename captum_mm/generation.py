"""Generated tokens as explained elements (docs/METHOD.md, "Decoder-only generation").

A :class:`Continuation` holds the tokens explained after a prompt: given by the user, or produced
by ``model.generate``. :func:`generation_forward` turns the prompt's forward arguments into one
forward over prompt + continuation (decoder-only models, with the positions ``generate`` uses under
left padding) or over the prompt in the encoder and start token + continuation in the decoder
(encoder-decoder models), whose output is the pre-softmax logit of every continuation token
``[B, C]`` (token ``k`` predicted from position ``P + k - 1``); adapters seed one backward slot per
token from it.
"""

import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union, cast

import torch
from torch import Tensor, nn

from captum_mm._generate import generated
from captum_mm._precision import exact
from captum_mm.models.arguments import check_batch_sizes
from captum_mm.models.decoder import Continuation, DecoderOnlyAdapter, GenerationConvention
from captum_mm.models.registry import adapter_for

__all__ = ["Continuation", "ContinuationLike", "GenerationConvention", "generation_forward", "prompt_arguments"]

ContinuationLike = Union[Tensor, Sequence[Sequence[int]]]
CACHE_ARGUMENTS = ("cache", "past_key_values")


def generation_forward(
    model: nn.Module,
    prompt: Dict[str, Any],
    continuation: Optional[ContinuationLike],
    generate: bool,
    generation_args: Optional[Dict[str, Any]],
    adapter: Optional[DecoderOnlyAdapter] = None,
) -> Tuple[Callable[..., Tensor], Tuple[Any, ...], Continuation]:
    """``(forward_func, inputs, target)`` that explain ``continuation`` (or what ``model.generate`` produces from
    ``prompt``), for :meth:`~captum_mm.attr.AttentionAttribution.explain`.

    The family's ``adapter`` says how the model's forward and ``generate`` hold the continuation (its
    ``generation_convention()``), gives its other per-token arguments over prompt + continuation (PaliGemma's
    ``token_type_ids``; None leaves one out, as Qwen2-VL's positions, which the model computes; one it does not
    extend is an error) and declares the arguments whose first dimension is not the batch (Qwen2-VL's patches).

    Args:
        model (nn.Module): A generative HuggingFace model.
        prompt (dict): The prompt as the model's forward arguments by name (:func:`prompt_arguments`),
                    left-padded for decoder-only models.
        continuation (Tensor or list of lists of int, optional): The tokens to explain, ``[B, C]`` ids or one
                    id list per sample; None with ``generate=True``.
        generate (bool): Explain what ``model.generate`` produces instead.
        generation_args (dict, optional): Passed to ``model.generate``.
        adapter (DecoderOnlyAdapter, optional): The family's adapter. Default: None (the model's)

    Returns:
        *tuple*: ``forward_func`` (returning each continuation token's pre-softmax logit ``[B, C]``), its inputs
        and the :class:`Continuation` explained.
    """
    adapter = adapter or cast(DecoderOnlyAdapter, adapter_for(model))
    convention = adapter.generation_convention()
    unbatched = [name for name, argument in adapter.arguments.items() if not argument.batched]
    if generate == (continuation is not None):
        raise ValueError(
            "Pass either continuation= (the tokens to explain) or generate=True (explain what model.generate "
            "produces), not " + ("both." if generate else "neither.")
        )
    if not generate and generation_args:
        raise ValueError("generation_args are used only with generate=True.")
    check_batch_sizes(prompt, tuple(name for name in prompt if name not in unbatched))
    ids = prompt.get("input_ids")
    if not isinstance(ids, Tensor) or ids.dim() != 2:
        raise ValueError("Explaining generated tokens needs the prompt's input_ids [batch, tokens] as the model's input_ids.")
    encoder_decoder = convention.encoder_decoder
    if encoder_decoder:
        if "decoder_input_ids" in prompt:
            raise ValueError("The decoder's tokens are the continuation: pass them as continuation=, not decoder_input_ids.")
        start = 1  # the decoder start token precedes the continuation
    else:
        _check_left_padding(ids, prompt.get("attention_mask"))
        start = ids.shape[1]
    _check_ids(model, "The prompt's input_ids", ids)
    if generate:
        prompt, tokens = generated(model, prompt, generation_args or {}, start, convention, unbatched)
        ids = prompt["input_ids"]
    else:
        tokens = _given(continuation, ids.shape[0], start, ids.device)
    _check_tokens(model, tokens, convention.max_positions)
    extended: Dict[str, Optional[Tensor]] = dict(_decoder_inputs(model, tokens, convention.decoder_start) if encoder_decoder
                                                  else _extended(ids, prompt.get("attention_mask"), tokens))
    if not encoder_decoder:
        extended.update(adapter.continuation_arguments(prompt, tokens))
        _check_extended(model, prompt, extended)
    full = {name: value for name, value in dict(prompt, **extended).items() if extended.get(name, value) is not None}
    names = list(full)

    def forward(*values: Any) -> Tensor:
        output = model(**dict(zip(names, values)))
        logits = (output if isinstance(output, Tensor) else output.logits)[:, tokens.prompt_length - 1 : -1]
        chosen = tokens.ids[..., None]
        tokens.probabilities = exact(logits).softmax(-1).gather(-1, chosen)[..., 0]  # float32 for half-precision models
        return logits.gather(-1, chosen)[..., 0]

    return forward, tuple(full[name] for name in names), tokens


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


def _check_extended(model: nn.Module, prompt: Dict[str, Any], extended: Mapping[str, Optional[Tensor]]) -> None:
    """Every per-token prompt argument must have been extended over the continuation."""
    shape = prompt["input_ids"].shape
    stale = [name for name, value in prompt.items()
             if isinstance(value, Tensor) and tuple(value.shape[:2]) == tuple(shape) and name not in extended]
    if stale:
        raise ValueError(f"{stale} hold one entry per prompt token, and how {type(model).__name__} extends them over the "
                         "continuation is unknown: leave them out of the prompt.")


def _check_left_padding(ids: Tensor, mask: Optional[Tensor]) -> None:
    if mask is not None and (mask.shape != ids.shape or not bool(mask[:, -1].all())):
        raise ValueError(
            "The prompt's attention_mask must have input_ids' shape and end in real tokens (left padding, as "
            f"generation pads); got shape {tuple(mask.shape)} with padding at the end."
        )


def _given(continuation: Any, batch_size: int, prompt_length: int, device: torch.device) -> Continuation:
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


def _check_ids(model: nn.Module, what: str, ids: Tensor) -> None:
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


def _check_tokens(model: nn.Module, tokens: Continuation, limit: Optional[int]) -> None:
    if tokens.ids.shape[1] == 0:
        raise ValueError("The continuation is empty: there is no generated token to explain.")
    _check_ids(model, "continuation", tokens.ids[tokens.mask])
    prompt_length = tokens.prompt_length
    total = prompt_length + tokens.ids.shape[1]
    if limit is not None and total > limit:
        raise ValueError(
            f"Prompt ({prompt_length}) + continuation ({tokens.ids.shape[1]}) = {total} tokens, more than the "
            f"{limit} positions {type(model).__name__} allows."
        )


def _extended(ids: Tensor, mask: Optional[Tensor], tokens: Continuation) -> Dict[str, Tensor]:
    """``input_ids``, ``attention_mask`` and ``position_ids`` of prompt + continuation, positions
    counted over real tokens as ``generate`` counts them under left padding."""
    mask = torch.ones_like(ids) if mask is None else mask
    full_mask = torch.cat([mask.to(tokens.mask.dtype), tokens.mask], dim=1).long()
    positions = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 1)
    filled = tokens.ids.masked_fill(~tokens.mask, 0)
    return {"input_ids": torch.cat([ids, filled], dim=1), "attention_mask": full_mask, "position_ids": positions}


def _decoder_inputs(model: nn.Module, tokens: Continuation, start: Optional[int]) -> Dict[str, Tensor]:
    """An encoder-decoder model's ``decoder_input_ids`` (its start token, then the continuation) and
    ``decoder_attention_mask``."""
    if start is None:
        raise ValueError(f"{type(model).__name__} has no decoder_start_token_id (in its generation config or config): "
                         "the decoder's first token is unknown.")
    ids, mask = tokens.ids.masked_fill(~tokens.mask, 0), tokens.mask.long()
    first = torch.full_like(ids[:, :1], int(start))
    return {"decoder_input_ids": torch.cat([first, ids], dim=1), "decoder_attention_mask": torch.cat([torch.ones_like(first), mask], dim=1)}
