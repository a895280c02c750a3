"""What a generative family declares (:class:`GenerationConvention`) and the tokens explained after a prompt
(:class:`Continuation`)."""

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Optional, Tuple

from torch import Tensor, nn


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

    def explained_ids(self) -> Tensor:
        """The ids of the explained tokens.

        Returns:
            *Tensor*: ``[B, C]`` ``ids``, ``-1`` where ``mask`` is False.
        """
        return self.ids.masked_fill(~self.mask, -1)


@dataclass(frozen=True)
class GenerationConvention:
    """How a generative model's forward and ``generate`` hold the continuation: what an adapter declares
    (:meth:`~captum_mm.models.ArchitectureAdapter.generation_convention`); :mod:`captum_mm.generation` does the rest.

    Attributes:
        encoder_decoder (bool): The prompt goes to an encoder, and the decoder reads its start token and the
                    continuation as ``decoder_input_ids``; else prompt and continuation are one sequence.
        decoder_start (int, optional): The decoder's start token (encoder-decoder models).
        end_ids (tuple[int, ...]): The ids ``generate`` ends a sequence with.
        max_positions (int, optional): How many positions the sequence holding the continuation may have.
        generated_token_types (tuple[tuple[str, int], ...]): Per-token type arguments of a decoder-only sequence, each with the
                    type ``generate`` gives generated tokens (PaliGemma's ``token_type_ids`` 1); extended over the
                    continuation when the prompt gives them.
        model_positions (bool): The model computes its own positions (Qwen2-VL's multimodal ones): the forward
                    passes no ``position_ids``; else the positions ``generate`` uses under left padding.
        prompt_input (str): The argument holding an encoder-decoder model's prompt (Whisper's ``input_features``).
                    Default: ``"input_ids"``
        sequences_in_dict (bool): ``generate``'s sequences are read with ``return_dict_in_generate=True``: its plain
                    tensor leaves out the decoder prompt (Whisper's start token and forced tokens).
        repeated_arguments (tuple[str, ...]): Per-token arguments ``generate`` extends by repeating the prompt's last
                    entry (Mllama's ``cross_attention_mask``); extended so over the continuation when the prompt gives them.
    """

    encoder_decoder: bool = False
    decoder_start: Optional[int] = None
    end_ids: Tuple[int, ...] = ()
    max_positions: Optional[int] = None
    generated_token_types: Tuple[Tuple[str, int], ...] = ()
    model_positions: bool = False
    prompt_input: str = "input_ids"
    sequences_in_dict: bool = False
    repeated_arguments: Tuple[str, ...] = ()

    @classmethod
    def of(cls, model: nn.Module, generated_token_types: Mapping[str, int] = MappingProxyType({}),
           model_positions: bool = False, repeated_arguments: Tuple[str, ...] = ()) -> "GenerationConvention":
        """As HF's conventions read the model's config and generation config.

        Args:
            model (nn.Module): The generative model (a VLM's language model for its start and end tokens).
            generated_token_types (mapping of str to int, optional): :attr:`generated_token_types`. Default: none
            model_positions (bool, optional): :attr:`model_positions`. Default: False
            repeated_arguments (tuple[str, ...], optional): :attr:`repeated_arguments`. Default: none

        Returns:
            *GenerationConvention*: The convention.
        """
        config, generation = getattr(model, "config", None), getattr(model, "generation_config", None)
        encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        start = None
        if encoder_decoder:
            start = getattr(generation, "decoder_start_token_id", None)
            start = getattr(config, "decoder_start_token_id", None) if start is None else start
        ends: Any = getattr(generation, "eos_token_id", None)
        limit = getattr(config, "max_position_embeddings", None)
        return cls(encoder_decoder, start, () if ends is None else (ends,) if isinstance(ends, int) else tuple(ends),
                   limit if isinstance(limit, int) else None, tuple(generated_token_types.items()), model_positions,
                   repeated_arguments=repeated_arguments)
