"""Encoder-decoder generation (T5, BART): the prompt in the encoder, the decoder start token and the
continuation in the decoder.

Schedule (docs/METHOD.md, "Encoder-decoder generation"): encoder self-attention Eq. 6 on
``R^{ss}``; decoder self-attention Eq. 6-7 on ``R^{tt}``, ``R^{ts}``; decoder->encoder
cross-attention Eq. 10 on ``R^{ts}`` (Eq. 11 adds nothing: the encoder never attends to the
decoder), all in forward order. Token ``k`` is predicted from decoder position ``k`` (the start
token first; :func:`captum_mm.generation.decoder_rows`): ``text`` = ``R^{ts}`` over the prompt,
``generated`` = ``R^{tt}`` over the continuation, without the row's own entry.
"""

from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

from torch import Tensor, nn

from captum_mm.adapters.decoder import GENERATED, TEXT, DecoderOnlyAdapter
from captum_mm.capture.record import AttentionRecord
from captum_mm.generation.readout import decoder_rows
from captum_mm.models.arguments import TOKENS, Argument, text_tokens, token_mask
from captum_mm.models.structure import forward_order_schedule
from captum_mm.models.targets import TargetSelection
from captum_mm.relevance.schedule import Readout, Schedule
from captum_mm.spec import AttentionSpec, module_names

SOURCE, TARGET = "source", "target"

__all__ = ["SOURCE", "TARGET", "EncoderDecoderAdapter", "decoder_rows", "encoder_decoder_specs", "source_target_masks"]


class EncoderDecoderAdapter(DecoderOnlyAdapter):
    """The schedule shared by encoder-decoder LMs; a family declares where its attention modules sit."""

    arguments = MappingProxyType({
        "input_ids": Argument(2, TOKENS, TEXT, f"An encoder-decoder model needs the prompt's input_ids {TOKENS}."),
        "attention_mask": Argument(2, TOKENS),
        "decoder_input_ids": Argument(2, TOKENS, None, f"An encoder-decoder model needs decoder_input_ids {TOKENS}."),
        "decoder_attention_mask": Argument(2, TOKENS),
    })

    def attention_modules(self) -> Tuple[Sequence[nn.Module], Sequence[nn.Module], Sequence[nn.Module]]:
        """The encoder's self-attention modules, the decoder's self-attention and its cross-attention modules."""
        raise NotImplementedError

    def attention_spec(self, name: str, module: nn.Module, roles: Tuple[Tuple[str, str], ...]) -> AttentionSpec:
        raise NotImplementedError

    def attention_specs(self) -> List[AttentionSpec]:
        return encoder_decoder_specs(self.attention_modules(), self.attention_spec, module_names(self.model))

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        masks = source_target_masks(record.arguments)
        rows = decoder_rows(selection, masks[TARGET])
        readouts = {TEXT: Readout(TARGET, rows, SOURCE), GENERATED: Readout(TARGET, rows, TARGET, slice(1, None))}
        return forward_order_schedule(record, selection, masks, readouts, causal=(TARGET,))


def encoder_decoder_specs(
    modules: Tuple[Sequence[nn.Module], Sequence[nn.Module], Sequence[nn.Module]],
    spec: Callable[[str, nn.Module, Tuple[Tuple[str, str], ...]], AttentionSpec],
    names: Mapping[nn.Module, str],
) -> List[AttentionSpec]:
    """The specs of the encoder's self-attention, the decoder's self-attention and its cross-attention
    ``modules``, with the roles ``source``/``target``; ``spec(name, module, roles)`` makes one."""
    roles = ((SOURCE, SOURCE),), ((TARGET, TARGET),), ((TARGET, SOURCE),)
    return [spec(names[module], module, role) for group, role in zip(modules, roles) for module in group]


def source_target_masks(arguments: Dict[str, Any], source: str = SOURCE) -> Dict[str, Tensor]:
    """``[B, N]`` real tokens of the encoder's prompt (as modality ``source``) and of the decoder's sequence."""
    prompt, target = text_tokens(arguments), arguments["decoder_input_ids"]
    return {
        source: token_mask(arguments.get("attention_mask"), prompt.shape[0], prompt.shape[1], prompt.device),
        TARGET: token_mask(arguments.get("decoder_attention_mask"), target.shape[0], target.shape[1], target.device),
    }

