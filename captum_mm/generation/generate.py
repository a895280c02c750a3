"""Explaining what ``model.generate`` produces: its arguments checked before generating (the positions its longest
output needs, several sequences per prompt), the continuation read from its output."""

from typing import Any, Dict, Optional, Sequence, Tuple, cast

import torch
from torch import Tensor, nn

from captum_mm.generation.convention import Continuation, GenerationConvention


def generated(
    model: nn.Module,
    prompt: Dict[str, Any],
    generation_args: Dict[str, Any],
    start: int,
    convention: GenerationConvention,
    unbatched: Sequence[str],
) -> Tuple[Dict[str, Any], Continuation]:
    """What ``model.generate`` continues the prompt with (after the decoder start token for an encoder-decoder model),
    and the prompt of each returned sequence: with ``num_return_sequences=R`` each prompt is repeated ``R`` times in a
    row, as ``generate`` orders its sequences. Tokens after a sample's end-of-sequence token (``generation_args``'
    ``eos_token_id``, else the generation config's) are not explained.

    Args:
        model (nn.Module): The generative model.
        prompt (dict): Its forward arguments by name.
        generation_args (dict): Passed to ``model.generate`` (``return_dict_in_generate`` overridden: the sequences
                    are read, as the convention's :attr:`~GenerationConvention.sequences_in_dict` says).
        start (int): ``P``, what precedes the continuation in the sequence holding it.
        convention (GenerationConvention): How the model holds the continuation.
        unbatched (sequence of str): The prompt's arguments whose first dimension is not the batch.

    Returns:
        *tuple*: The prompt of each sequence and the :class:`Continuation`.
    """
    if not hasattr(model, "generate"):
        raise ValueError(f"{type(model).__name__} cannot generate (it has no generate method): pass continuation=.")
    _check_new_tokens(model, generation_args, start, convention.max_positions)
    _check_return_sequences(model, generation_args, prompt, unbatched)
    batch = int(prompt[convention.prompt_input].shape[0])
    _check_stopping(generation_args, batch)
    with torch.no_grad():
        output = cast(Any, model).generate(**prompt, **{**generation_args, "return_dict_in_generate": convention.sequences_in_dict})
    sequences = cast(Tensor, output if isinstance(output, Tensor) else output.sequences)
    prompt = _per_sequence(prompt, batch, int(sequences.shape[0]))
    ids = sequences[:, 1 if convention.encoder_decoder else start :]
    ends = _end_ids(generation_args, convention)
    ended = torch.isin(ids, torch.tensor(ends, device=ids.device)) if ends else torch.zeros_like(ids, dtype=torch.bool)
    after_end = (ended.long().cumsum(-1) - ended.long()) > 0  # the end token itself is explained
    return prompt, Continuation(ids, ~after_end, start)


def _check_new_tokens(model: nn.Module, generation_args: Dict[str, Any], start: int, limit: Optional[int]) -> None:
    """Before generating: the longest sequence ``generate`` may produce (``max_new_tokens``, else ``max_length``, of
    ``generation_args``, else of their or the model's generation config) must fit in the model's positions."""
    if limit is None:
        return
    config = generation_args.get("generation_config") or getattr(model, "generation_config", None)
    for name in ("max_new_tokens", "max_length"):  # max_new_tokens wins, as in generate
        value = generation_args.get(name, getattr(config, name, None))
        if value is None:
            continue
        longest = start + int(value) if name == "max_new_tokens" else int(value)
        if longest > limit:
            raise ValueError(
                f"{name}={value} lets generate produce {longest} tokens (the prompt's {start} included), more than the "
                f"{limit} positions {type(model).__name__} allows: ask for at most {limit - start} new tokens."
            )
        return


def _end_ids(generation_args: Dict[str, Any], convention: GenerationConvention) -> Tuple[int, ...]:
    """The ids that end a generated sequence: ``eos_token_id`` of ``generation_args`` (None: no end, as ``generate``
    reads it), else of the generation config given there, else the model's."""
    if "eos_token_id" in generation_args:
        ends = generation_args["eos_token_id"]
    else:
        ends = getattr(generation_args.get("generation_config"), "eos_token_id", None)
        if ends is None:
            return convention.end_ids
    ends = ends.tolist() if isinstance(ends, Tensor) else ends
    return () if ends is None else (int(ends),) if isinstance(ends, int) else tuple(int(end) for end in ends)


def _per_sequence(prompt: Dict[str, Any], batch: int, sequences: int) -> Dict[str, Any]:
    """The prompt of each of ``sequences`` returned sequences: each of ``batch`` samples repeated ``sequences / B`` times
    in a row."""
    if sequences % batch:
        raise ValueError(f"generate returned {sequences} sequences for {batch} prompts: not a whole number per prompt.")
    repeats = sequences // batch
    if repeats == 1:
        return prompt
    return {name: value.repeat_interleave(repeats, dim=0) if isinstance(value, Tensor) and value.dim() and value.shape[0] == batch
            else value for name, value in prompt.items()}


def _check_return_sequences(model: nn.Module, generation_args: Dict[str, Any], prompt: Dict[str, Any], unbatched: Sequence[str]) -> None:
    """Several sequences per prompt (``num_return_sequences``) are explained by repeating each prompt, which arguments
    that are not batched (Qwen2-VL's patches) do not allow."""
    config = generation_args.get("generation_config") or getattr(model, "generation_config", None)
    returned = generation_args.get("num_return_sequences", getattr(config, "num_return_sequences", None)) or 1
    given = [name for name in unbatched if name in prompt]
    if returned > 1 and given:
        raise ValueError(
            f"num_return_sequences={returned}: several sequences per prompt are explained by repeating each prompt, "
            f"which {type(model).__name__}'s unbatched {given} do not allow: generate one sequence per prompt."
        )


def _check_stopping(generation_args: Dict[str, Any], batch: int) -> None:
    """``stop_strings`` and ``stopping_criteria`` end a sample without an end token: in a batch, ``generate`` pads it
    after that, and the padding cannot be told from generated tokens."""
    stops = [name for name in ("stop_strings", "stopping_criteria") if generation_args.get(name)]
    if stops and batch > 1:
        raise ValueError(
            f"generation_args' {stops[0]} ends a sample without an end token, so in a batch the padding generate adds "
            "after it cannot be told from generated tokens: explain one prompt at a time, or generate yourself and pass "
            "each sample's tokens as continuation=."
        )
