"""The one forward that explains a continuation: over prompt + continuation (decoder-only models, with the positions
``generate`` uses under left padding), or over the prompt in the encoder and start token + continuation in the decoder
(encoder-decoder models), returning the pre-softmax logit of every continuation token ``[B, C]`` (token ``k``
predicted from position ``P + k - 1``)."""

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_mm._precision import exact
from captum_mm.generation.convention import Continuation, GenerationConvention
from captum_mm.generation.generate import generated
from captum_mm.generation.prompt import ContinuationLike, check_ids, check_left_padding, check_tokens, given_continuation
from captum_mm.models.arguments import check_batch_sizes
from captum_mm.models.registry import adapter_for

if TYPE_CHECKING:
    from captum_mm.models.adapter import ArchitectureAdapter


def check_generative(adapter: "ArchitectureAdapter", model: nn.Module, target: Any, forward_func: Callable) -> None:
    """Generated tokens are explained on a generative model itself, and are their own targets.

    Args:
        adapter (ArchitectureAdapter): The model's adapter.
        model (nn.Module): The model.
        target (Any): The target the user gave (None expected).
        forward_func (Callable): The explainer's forward function (the model expected).
    """
    if adapter.generation_convention() is None:
        raise ValueError(f"{type(model).__name__} does not generate text: continuation= and generate=True "
                         "are for generative models (see the README's supported models).")
    if target is not None or forward_func is not model:
        raise ValueError(
            "Generated tokens are explained on the model itself (forward_func=model) and are their own "
            "targets: pass target=None."
        )


def generation_forward(
    model: nn.Module,
    prompt: Dict[str, Any],
    continuation: Optional[ContinuationLike],
    generate: bool,
    generation_args: Optional[Dict[str, Any]],
    adapter: Optional["ArchitectureAdapter"] = None,
) -> Tuple[Callable[..., Tensor], Tuple[Any, ...], Continuation]:
    """``(forward_func, inputs, continuation)`` that explain ``continuation`` (or what ``model.generate`` produces from
    ``prompt``), for :meth:`~captum_mm.attr.AttentionAttribution.explain`.

    The family's ``adapter`` declares how the model's forward and ``generate`` hold the continuation (its
    :class:`GenerationConvention`) and the arguments whose first dimension is not the batch (Qwen2-VL's patches).

    Args:
        model (nn.Module): A generative HuggingFace model.
        prompt (dict): The prompt as the model's forward arguments by name (:func:`prompt_arguments`),
                    left-padded for decoder-only models.
        continuation (Tensor or list of lists of int, optional): The tokens to explain, ``[B, C]`` ids or one
                    id list per sample; None with ``generate=True``.
        generate (bool): Explain what ``model.generate`` produces instead.
        generation_args (dict, optional): Passed to ``model.generate``.
        adapter (ArchitectureAdapter, optional): The family's adapter. Default: None (the model's)

    Returns:
        *tuple*: ``forward_func`` (returning each continuation token's pre-softmax logit ``[B, C]``), its inputs
        and the :class:`Continuation` explained (the explained class of each element).
    """
    adapter = adapter or adapter_for(model)
    convention = adapter.generation_convention()
    if convention is None:
        raise ValueError(f"{type(model).__name__} does not generate text: it has no continuation to explain.")
    unbatched = tuple(name for name, argument in adapter.arguments.items() if not argument.batched)
    _check_request(continuation, generate, generation_args)
    check_batch_sizes(prompt, tuple(name for name in prompt if name not in unbatched))
    if convention.encoder_decoder:
        ids = _encoder_prompt(model, prompt, convention.prompt_input)
        start = 1  # the decoder start token precedes the continuation
    else:
        given = prompt.get("input_ids")
        if not isinstance(given, Tensor) or given.dim() != 2:
            raise ValueError("Explaining generated tokens needs the prompt's input_ids [batch, tokens] as the model's input_ids.")
        ids = given
        check_left_padding(ids, prompt.get("attention_mask"))
        check_ids(model, "The prompt's input_ids", ids)
        start = ids.shape[1]
    if generate:
        prompt, tokens = generated(model, prompt, generation_args or {}, start, convention, unbatched)
    else:
        tokens = given_continuation(continuation, ids.shape[0], start, ids.device)
    check_tokens(model, tokens, convention.max_positions)
    full = _full_arguments(model, prompt, tokens, convention)
    return _token_logits(model, tuple(full), tokens), tuple(full.values()), tokens


def _encoder_prompt(model: nn.Module, prompt: Dict[str, Any], name: str) -> Tensor:
    """An encoder-decoder model's prompt, its ``name`` argument (token ids checked against the vocabulary); the decoder's
    tokens are the continuation."""
    if "decoder_input_ids" in prompt:
        raise ValueError("The decoder's tokens are the continuation: pass them as continuation=, not decoder_input_ids.")
    value = prompt.get(name)
    if not isinstance(value, Tensor) or value.dim() < 2:
        raise ValueError(f"Explaining generated tokens of {type(model).__name__} needs the prompt's {name} as a batched tensor.")
    if not value.is_floating_point():
        check_ids(model, f"The prompt's {name}", value)
    return value


def _check_request(continuation: Optional[ContinuationLike], generate: bool, generation_args: Optional[Dict[str, Any]]) -> None:
    if generate == (continuation is not None):
        raise ValueError(
            "Pass either continuation= (the tokens to explain) or generate=True (explain what model.generate "
            "produces), not " + ("both." if generate else "neither.")
        )
    if not generate and generation_args:
        raise ValueError("generation_args are used only with generate=True.")


def _token_logits(model: nn.Module, names: Tuple[str, ...], tokens: Continuation) -> Callable[..., Tensor]:
    """The forward over the arguments ``names``: each continuation token's pre-softmax logit ``[B, C]``, its
    probability kept in ``tokens``."""

    def forward(*values: Any) -> Tensor:
        output = model(**dict(zip(names, values)))
        logits = (output if isinstance(output, Tensor) else output.logits)[:, tokens.prompt_length - 1 : -1]
        chosen = tokens.ids[..., None]
        tokens.probabilities = exact(logits).softmax(-1).gather(-1, chosen)[..., 0]  # float32 for half-precision models
        return logits.gather(-1, chosen)[..., 0]

    return forward


def _full_arguments(model: nn.Module, prompt: Dict[str, Any], tokens: Continuation,
                    convention: GenerationConvention) -> Dict[str, Any]:
    """The forward's arguments over prompt and continuation, as the convention holds them (None values left out)."""
    if convention.encoder_decoder:
        extended = _decoder_inputs(model, tokens, convention.decoder_start)
    else:
        extended = _extended(prompt["input_ids"], prompt.get("attention_mask"), tokens, convention.model_positions)
        extended.update(_extended_types(prompt, tokens, convention))
        _check_extended(model, prompt, extended)
    return {name: value for name, value in dict(prompt, **extended).items() if extended.get(name, value) is not None}


def _check_extended(model: nn.Module, prompt: Dict[str, Any], extended: Dict[str, Optional[Tensor]]) -> None:
    """Every per-token prompt argument must have been extended over the continuation."""
    shape = prompt["input_ids"].shape
    stale = [name for name, value in prompt.items()
             if isinstance(value, Tensor) and tuple(value.shape[:2]) == tuple(shape) and name not in extended]
    if stale:
        raise ValueError(f"{stale} hold one entry per prompt token, and how {type(model).__name__} extends them over the "
                         "continuation is unknown: leave them out of the prompt.")


def _extended(ids: Tensor, mask: Optional[Tensor], tokens: Continuation, model_positions: bool) -> Dict[str, Optional[Tensor]]:
    """``input_ids``, ``attention_mask`` and ``position_ids`` of prompt + continuation, positions counted over real
    tokens as ``generate`` counts them under left padding (None where the model computes its own)."""
    mask = torch.ones_like(ids) if mask is None else mask
    full_mask = torch.cat([mask.to(tokens.mask.dtype), tokens.mask], dim=1).long()
    positions = None if model_positions else (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 1)
    filled = tokens.ids.masked_fill(~tokens.mask, 0)
    return {"input_ids": torch.cat([ids, filled], dim=1), "attention_mask": full_mask, "position_ids": positions}


def _extended_types(prompt: Dict[str, Any], tokens: Continuation, convention: GenerationConvention) -> Dict[str, Optional[Tensor]]:
    """The prompt's per-token type arguments, extended over the continuation with the type ``generate`` gives it, and its
    repeated arguments, with the prompt's last entry (as ``generate`` extends them)."""
    types = {name: torch.cat([prompt[name], torch.full_like(tokens.ids, kind, dtype=prompt[name].dtype)], dim=1)
             for name, kind in convention.generated_token_types if prompt.get(name) is not None}
    repeated = {name: torch.cat([prompt[name], prompt[name][:, -1:].expand(-1, tokens.ids.shape[1], *prompt[name].shape[2:])], dim=1)
                for name in convention.repeated_arguments if prompt.get(name) is not None}
    return {**types, **repeated}


def _decoder_inputs(model: nn.Module, tokens: Continuation, start: Optional[int]) -> Dict[str, Optional[Tensor]]:
    """An encoder-decoder model's ``decoder_input_ids`` (its start token, then the continuation) and
    ``decoder_attention_mask``."""
    if start is None:
        raise ValueError(f"{type(model).__name__} has no decoder_start_token_id (in its generation config or config): "
                         "the decoder's first token is unknown.")
    ids, mask = tokens.ids.masked_fill(~tokens.mask, 0), tokens.mask.long()
    first = torch.full_like(ids[:, :1], int(start))
    return {"decoder_input_ids": torch.cat([first, ids], dim=1), "decoder_attention_mask": torch.cat([torch.ones_like(first), mask], dim=1)}
