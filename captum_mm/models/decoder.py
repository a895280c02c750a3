"""Decoder-only language models: one causal self-attention stream over prompt and generated tokens.

Schedule (docs/METHOD.md, "Decoder-only generation"): Eq. 6 for every layer, in forward order. The
token at position ``p`` is predicted from position ``p - 1``: its readout is row ``p - 1`` without its
own entry, the seed the pre-softmax logit of that token. Outputs: ``text`` over the prompt's
positions, ``generated`` over the continuation's (zero from the explained token on: attention is
causal). Called on a prompt alone (``attribute``), the explained token is the next one, predicted
from the last position, which must be a real token (left padding, as generation pads).
"""

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_mm.models.arguments import TOKENS, Argument, require, text_arguments, text_tokens, token_mask
from captum_mm.models.base import ArchitectureAdapter, TargetSelection, forward_order_schedule, select_class_targets
from captum_mm.models.capture import AttentionRecord
from captum_mm.models.target_options import TargetOptions
from captum_mm.relevance.schedule import Readout, Schedule

SEQUENCE, TEXT, GENERATED = "sequence", "text", "generated"


@dataclass
class Continuation:
    """The tokens explained after the prompt.

    Attributes:
        ids (Tensor): ``[B, C]`` token ids (any id where ``mask`` is False).
        mask (Tensor): ``[B, C]`` True for the tokens explained (False after a sample's end).
        prompt_length (int): ``P``, what precedes the continuation in the sequence that predicts it
                    (the prompt of a decoder-only model, the decoder start token of an encoder-decoder
                    one); token ``k`` sits at position ``P + k`` of that sequence.
        probabilities (Tensor, optional): ``[B, C]`` each token's probability, filled by the forward.
    """

    ids: Tensor
    mask: Tensor
    prompt_length: int
    probabilities: Optional[Tensor] = None


@dataclass(frozen=True)
class GenerationConvention:
    """How a generative model's forward and ``generate`` hold the continuation.

    Attributes:
        encoder_decoder (bool): The prompt goes to an encoder, and the decoder reads its start token and the
                    continuation as ``decoder_input_ids``; else prompt and continuation are one sequence.
        decoder_start (int, optional): The decoder's start token (encoder-decoder models).
        end_ids (tuple[int, ...]): The ids ``generate`` ends a sequence with.
        max_positions (int, optional): How many positions the sequence holding the continuation may have.
    """

    encoder_decoder: bool = False
    decoder_start: Optional[int] = None
    end_ids: Tuple[int, ...] = ()
    max_positions: Optional[int] = None

    @classmethod
    def of(cls, model: nn.Module) -> "GenerationConvention":
        """As HF's conventions read the model's config and generation config."""
        config, generation = getattr(model, "config", None), getattr(model, "generation_config", None)
        encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        start = None
        if encoder_decoder:
            start = getattr(generation, "decoder_start_token_id", None)
            start = getattr(config, "decoder_start_token_id", None) if start is None else start
        ends = getattr(generation, "eos_token_id", None)
        limit = getattr(config, "max_position_embeddings", None)
        return cls(encoder_decoder, start, () if ends is None else (ends,) if isinstance(ends, int) else tuple(ends),
                   limit if isinstance(limit, int) else None)


class DecoderOnlyAdapter(ArchitectureAdapter):
    """The schedule and targets shared by decoder-only LMs; a family declares its classes and specs."""

    outputs: Tuple[str, ...] = (TEXT, GENERATED)
    arguments = MappingProxyType({**text_arguments("A decoder-only LM"), "position_ids": Argument(2, TOKENS)})

    def continuation_arguments(self, prompt: Dict[str, Any], continuation: Continuation) -> Dict[str, Optional[Tensor]]:
        """The family's per-token forward arguments, other than ids, mask and positions, over prompt +
        continuation (none by default); None leaves an argument out."""
        return {}

    def generation_convention(self) -> GenerationConvention:
        """How the family's forward and ``generate`` hold the continuation (by default as the model's config says)."""
        return GenerationConvention.of(self.model)

    def select_targets(self, logits: Tensor, target: Any, options: TargetOptions = TargetOptions()) -> TargetSelection:
        if isinstance(target, Continuation):
            return generated_targets(logits, target)
        require(logits.dim() == 3, f"Expected next-token logits [batch, tokens, vocabulary], got {tuple(logits.shape)}.")
        last = select_class_targets(logits[:, -1], target)
        seeds = torch.zeros_like(logits)[None]
        seeds[:, :, -1] = last.grad_outputs
        last.grad_outputs = seeds
        return last

    def per_sample_outputs(self, logits: Tensor) -> Tensor:
        return logits if logits.dim() == 2 else logits[:, -1]

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        mask, readouts = self.sequence_readouts(record, selection)
        return forward_order_schedule(record, selection, {SEQUENCE: mask}, readouts, causal=(SEQUENCE,))

    def sequence_readouts(self, record: AttentionRecord, selection: TargetSelection) -> Tuple[Tensor, Dict[str, Readout]]:
        """The sequence's ``[B, N]`` mask of real tokens, and the ``text`` and ``generated`` readouts."""
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


def generated_targets(token_logits: Tensor, continuation: Continuation) -> TargetSelection:
    """One backward slot per continuation token ``k``, seeding its logit ``token_logits[:, k]``."""
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
