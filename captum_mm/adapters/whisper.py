"""Whisper: speech to text, explained as the encoder-decoder LMs are (:mod:`captum_mm.adapters.encoder_decoder`), the
encoder's audio frames in place of the prompt's tokens.

Schedule (docs/METHOD.md, "Whisper"): encoder self-attention Eq. 6 on ``R^{ss}`` over the encoder's frames, decoder
self-attention Eq. 6-7, decoder->encoder cross-attention Eq. 10, in forward order. Outputs: ``frames`` = ``R^{ts}``
over the encoder's ``N`` frames, ``audio`` the same composed through the convolutional stem's token map ``P`` onto the
``T = 2N`` time steps of ``input_features`` (step ``t`` takes half of frame ``t // 2``'s relevance: the second
convolution's stride 2 partitions time), as a ``(1, T)`` grid that ``attribute`` spreads over every mel bin;
``generated`` over the continuation. Whisper has no encoder padding mask: every frame is attended and explained.
LRP: pre-norm residuals; relevance over time comes from the token map, not from LRP through the convolutions
(AttnLRP, which reads its relevance at ``input_features``, goes through them: the stem's GELUs take the identity rule).
"""

import warnings
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn
from transformers import WhisperForConditionalGeneration
from transformers.models.whisper.modeling_whisper import WhisperAttention, WhisperDecoderLayer, WhisperEncoderLayer

from captum_mm.adapters.decoder import GENERATED
from captum_mm.adapters.encoder_decoder import SOURCE, TARGET, EncoderDecoderAdapter
from captum_mm.capture.record import AttentionRecord
from captum_mm.generation.convention import GenerationConvention
from captum_mm.generation.readout import decoder_rows
from captum_mm.lrp.canonizers import FunctionalActivation
from captum_mm.lrp.composite import LRPStructure, ResidualRuleSite
from captum_mm.models.arguments import TOKENS, Argument, require, token_mask
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import projected_parts
from captum_mm.models.structure import forward_order_schedule
from captum_mm.models.targets import TargetSelection
from captum_mm.relevance.schedule import Readout, Schedule
from captum_mm.spec import AttentionSpec, TensorSource

AUDIO, FRAMES = "audio", "frames"
FEATURES = "[batch, mel bins, time steps]"


def frames_to_time(frames: int, stride: int = 2) -> Tensor:
    """The convolutional stem's token map ``P``: ``[frames, stride * frames]``, frame ``j`` spread evenly over the time
    steps ``stride * j .. stride * j + stride - 1`` its strided convolution starts at (each step in one frame).

    Args:
        frames (int): The encoder's frames ``N``.
        stride (int, optional): The stem's total stride. Default: 2

    Returns:
        *Tensor*: ``P``, each row summing to 1.
    """
    return torch.eye(frames).repeat_interleave(stride, dim=1) / stride


@register_adapter
class WhisperAdapter(EncoderDecoderAdapter):
    """Whisper's speech-to-text models: the encoder's frames as the source, the feature time steps through the stem's
    token map (:func:`frames_to_time`)."""

    model_classes = (WhisperForConditionalGeneration,)
    #: Whisper's eager attention: softmax in the model's dtype, the query scaled before (the call's scaling is 1).
    attention_functions = MappingProxyType({WhisperAttention: False})
    outputs = (AUDIO, FRAMES, GENERATED)
    arguments = MappingProxyType({
        "input_features": Argument(3, FEATURES, AUDIO, f"Whisper needs input_features {FEATURES}."),
        "attention_mask": Argument(2, TOKENS),
        "decoder_input_ids": Argument(2, TOKENS, None, f"Whisper needs decoder_input_ids {TOKENS}."),
        "decoder_attention_mask": Argument(2, TOKENS),
    })
    model: WhisperForConditionalGeneration

    def generation_convention(self) -> GenerationConvention:
        """The prompt is ``input_features``; ``generate``'s plain output leaves out the decoder prompt (the start token
        and any forced language and task tokens), so its sequences are read from its dictionary output."""
        limit = self.model.config.max_target_positions
        return replace(GenerationConvention.of(self.model), max_positions=limit, prompt_input="input_features",
                       sequences_in_dict=True)

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        super().check_arguments(arguments)
        steps = 2 * self.model.config.max_source_positions
        length = arguments["input_features"].shape[-1]
        require(length == steps, f"Whisper's input_features need exactly {steps} time steps (2 x max_source_positions; "
                "its feature extractor pads to them), got {length}.")
        if arguments.get("attention_mask") is not None:
            warnings.warn("Whisper's encoder attends to every frame (its forward does not mask input_features): the "
                          "attention_mask is ignored, and padded frames are explained like the others.", stacklevel=2)

    def attention_modules(self) -> Tuple[Sequence[nn.Module], Sequence[nn.Module], Sequence[nn.Module]]:
        encoder, decoder = self.model.model.encoder.layers, self.model.model.decoder.layers
        return ([layer.self_attn for layer in encoder], [layer.self_attn for layer in decoder],
                [layer.encoder_attn for layer in decoder])

    def attention_spec(self, name: str, module: Any, roles: Tuple[Tuple[str, str], ...]) -> AttentionSpec:
        return AttentionSpec(name, module, TensorSource(module, index=1), roles, parts=projected_parts(module, module.num_heads, module.out_proj))

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        features, decoder = record.arguments["input_features"], record.arguments["decoder_input_ids"]
        frames = self.model.config.max_source_positions
        masks = {
            SOURCE: torch.ones(features.shape[0], frames, dtype=torch.bool, device=features.device),
            TARGET: token_mask(record.arguments.get("decoder_attention_mask"), decoder.shape[0], decoder.shape[1], decoder.device),
        }
        rows = decoder_rows(selection, masks[TARGET])
        readouts = {
            FRAMES: Readout(TARGET, rows, SOURCE),
            AUDIO: Readout(TARGET, rows, SOURCE, grid=(1, 2 * frames), spread=frames_to_time(frames).to(features.device)),
            GENERATED: Readout(TARGET, rows, TARGET, slice(1, None)),
        }
        return forward_order_schedule(record, selection, masks, readouts, causal=(TARGET,))

    def lrp_structure(self) -> LRPStructure:
        """Pre-norm: each ``x + branch(norm(x))`` is a residual at the next norm's input (the layer's output for the
        last), the branch an attention module's output or ``fc2``'s, the skip the previous sum."""
        residuals: List[ResidualRuleSite] = []
        for layer in self.model.modules():
            if isinstance(layer, (WhisperEncoderLayer, WhisperDecoderLayer)):
                residuals += _pre_norm_residuals(layer)
        return LRPStructure(residuals, canonizers=_stem_activations(self.model.model.encoder))


def _stem_activations(encoder: Any) -> List[FunctionalActivation]:
    """The convolutional stem's GELUs, applied as functions: ``conv2`` reads ``gelu(conv1(x))``, the first layer
    ``gelu(conv2(.))`` transposed, plus the position embeddings."""
    first = encoder.layers[0]
    return [FunctionalActivation(encoder.conv2, "input", TensorSource(encoder.conv1)),
            FunctionalActivation(first, "hidden_states", TensorSource(encoder.conv2), transposed=True,
                                 added=TensorSource(encoder.embed_positions))]


def _pre_norm_residuals(layer: Any) -> List[ResidualRuleSite]:
    """An encoder layer's self-attention and MLP sums, or a decoder layer's self-attention, cross-attention and MLP sums."""
    branches = [layer.self_attn] + ([layer.encoder_attn] if isinstance(layer, WhisperDecoderLayer) else [])
    following = [layer.encoder_attn_layer_norm] if isinstance(layer, WhisperDecoderLayer) else []
    sums = [TensorSource(norm, "input") for norm in [*following, layer.final_layer_norm]] + [TensorSource(layer)]
    skips = [TensorSource(layer, "hidden_states"), *sums[:-1]]
    outputs = [TensorSource(module, index=0) for module in branches] + [TensorSource(layer.fc2)]
    return [ResidualRuleSite(total, branch, skip) for total, branch, skip in zip(sums, outputs, skips)]
