"""Decoder-only language models: one causal self-attention stream over prompt and generated tokens.

Schedule (docs/METHOD.md, "Decoder-only generation"): Eq. 6 for every layer, in forward order. Outputs: ``text``
over the prompt's positions, ``generated`` over the continuation's (zero from the explained token on: attention is
causal). Which token is explained at which row, and how the model holds a continuation, is
:mod:`captum_mm.generation`'s; a family declares its :class:`GenerationConvention` here.
"""

from types import MappingProxyType
from typing import Any, Dict, Mapping, Tuple

from torch import Tensor

from captum_mm.capture.record import AttentionRecord
from captum_mm.generation.convention import GenerationConvention
from captum_mm.generation.readout import GENERATED, SEQUENCE, TEXT, sequence_readouts, token_targets
from captum_mm.models.adapter import ArchitectureAdapter
from captum_mm.models.arguments import TOKENS, Argument, text_arguments
from captum_mm.models.structure import forward_order_schedule
from captum_mm.models.targets import TargetOptions, TargetSelection
from captum_mm.relevance.schedule import Readout, Schedule

__all__ = ["GENERATED", "SEQUENCE", "TEXT", "DecoderOnlyAdapter", "GenerationConvention"]


class DecoderOnlyAdapter(ArchitectureAdapter):
    """The schedule and targets shared by decoder-only LMs; a family declares its classes and specs."""

    outputs: Tuple[str, ...] = (TEXT, GENERATED)
    arguments = MappingProxyType({**text_arguments("A decoder-only LM"), "position_ids": Argument(2, TOKENS)})
    #: Per-token type arguments and the type ``generate`` gives generated tokens (PaliGemma's ``token_type_ids`` 1).
    generated_token_types: Mapping[str, int] = MappingProxyType({})
    #: The model computes its own positions (Qwen2-VL's multimodal ones): an explanation's forward passes none.
    model_positions: bool = False

    def generation_convention(self) -> GenerationConvention:
        """As the model's config says, with the family's :attr:`generated_token_types` and :attr:`model_positions`."""
        return GenerationConvention.of(self.model, self.generated_token_types, self.model_positions)

    def select_targets(self, logits: Tensor, target: Any, options: TargetOptions = TargetOptions()) -> TargetSelection:
        return token_targets(logits, target)

    def per_sample_outputs(self, logits: Tensor) -> Tensor:
        return logits if logits.dim() == 2 else logits[:, -1]

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        mask, readouts = self.sequence_readouts(record, selection)
        return forward_order_schedule(record, selection, {SEQUENCE: mask}, readouts, causal=(SEQUENCE,))

    def sequence_readouts(self, record: AttentionRecord, selection: TargetSelection) -> Tuple[Tensor, Dict[str, Readout]]:
        """:func:`captum_mm.generation.sequence_readouts`, which VLMs extend with their image readout."""
        return sequence_readouts(record, selection)
