"""Which token is explained where: the backward seeds of generated (or next) tokens, and the rows their relevance is
read at (docs/METHOD.md, "Decoder-only generation", "Encoder-decoder generation").

A decoder-only model predicts the token at position ``p`` from position ``p - 1``: its readout is row ``p - 1``
without its own entry, its seed the pre-softmax logit of that token. An encoder-decoder model predicts continuation
token ``k`` at decoder position ``k`` (the start token first). Called on a prompt alone (``attribute``), the explained
token is the next one, predicted from the last position, which must be a real token (left padding, as generation pads).
"""

from typing import Any, Dict, Tuple

import torch
from torch import Tensor

from captum_mm.capture.record import AttentionRecord
from captum_mm.generation.convention import Continuation
from captum_mm.models.arguments import require, text_tokens, token_mask
from captum_mm.models.targets import TargetSelection, select_class_targets
from captum_mm.relevance.schedule import Readout

#: The decoder-only sequence (prompt + continuation) and the outputs over its prompt and its continuation.
SEQUENCE, TEXT, GENERATED = "sequence", "text", "generated"


def token_targets(logits: Tensor, target: Any) -> TargetSelection:
    """The explained tokens of a generative model: every token of a :class:`Continuation` (``logits`` its
    ``[B, C]`` token logits), or on a prompt alone the next token (``logits`` ``[B, N, V]``), ``target`` its class.

    Args:
        logits (Tensor): The forward's output.
        target (Continuation or Captum's target forms): The tokens explained.

    Returns:
        *TargetSelection*: One backward slot per continuation token, or one per sample.
    """
    if isinstance(target, Continuation):
        return generated_targets(logits, target)
    require(logits.dim() == 3, f"Expected next-token logits [batch, tokens, vocabulary], got {tuple(logits.shape)}.")
    last = select_class_targets(logits[:, -1], target)
    seeds = torch.zeros_like(logits)[None]
    seeds[:, :, -1] = last.grad_outputs
    last.grad_outputs = seeds
    return last


def generated_targets(token_logits: Tensor, continuation: Continuation) -> TargetSelection:
    """One backward slot per continuation token ``k``, seeding its logit ``token_logits[:, k]``.

    Args:
        token_logits (Tensor): ``[B, C]`` each continuation token's pre-softmax logit.
        continuation (Continuation): The tokens, their probabilities filled by the forward.

    Returns:
        *TargetSelection*: The explained tokens, their ids as classes and their positions.
    """
    slots = token_logits.shape[1]
    samples, steps = torch.nonzero(continuation.mask, as_tuple=True)
    seeds = torch.zeros(slots, *token_logits.shape, dtype=token_logits.dtype, device=token_logits.device)
    seeds[steps, samples, steps] = 1.0
    probabilities = continuation.probabilities
    assert probabilities is not None  # filled by the forward that computed token_logits
    return TargetSelection(
        seeds, samples, steps, continuation.ids[samples, steps], probabilities[samples, steps],
        positions=continuation.prompt_length + steps,
    )


def sequence_readouts(record: AttentionRecord, selection: TargetSelection) -> Tuple[Tensor, Dict[str, Readout]]:
    """A decoder-only sequence's ``[B, N]`` mask of real tokens, and the ``text`` and ``generated`` readouts.

    Args:
        record (AttentionRecord): The recorded forward.
        selection (TargetSelection): The explained tokens.

    Returns:
        *tuple*: The mask and the readouts by output name.
    """
    ids = text_tokens(record.arguments)
    mask = token_mask(record.arguments.get("attention_mask"), ids.shape[0], ids.shape[1], ids.device)
    if selection.positions is None:
        require(
            bool(mask[:, -1].all()),
            "The next token is predicted from the last position, which is padding in some samples: "
            "decoder-only models are explained with left padding (as generation pads).",
        )
        rows, prompt_length = torch.full_like(selection.sample, ids.shape[1] - 1), ids.shape[1]
    else:
        rows = selection.positions - 1
        prompt_length = int(ids.shape[1] - selection.grad_outputs.shape[0])
    return mask, {
        TEXT: Readout(SEQUENCE, rows, SEQUENCE, slice(0, prompt_length)),
        GENERATED: Readout(SEQUENCE, rows, SEQUENCE, slice(prompt_length, None)),
    }


def decoder_rows(selection: TargetSelection, mask: Tensor) -> Tensor:
    """The decoder position each explained token is predicted at: the one before it (token ``k`` of the continuation
    at position ``k``, after the start token), or on decoder inputs alone the last, which must be a real token.

    Args:
        selection (TargetSelection): The explained tokens.
        mask (Tensor): ``[B, N]`` the decoder's real tokens.

    Returns:
        *Tensor*: ``[E]`` one row per explained token.
    """
    if selection.positions is not None:
        return selection.positions - 1
    require(bool(mask[:, -1].all()), "The next token is predicted from the decoder's last position, which is padding "
            "in some samples: end every decoder_input_ids row in a real token.")
    return torch.full_like(selection.sample, mask.shape[1] - 1)
