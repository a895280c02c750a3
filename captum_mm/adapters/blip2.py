"""BLIP-2: a vision tower, a Q-Former whose learned query tokens attend to each other and, every
``cross_attention_frequency`` layers, to the image, and an OPT or LLaMA-style LM reading the projected query
outputs at its image placeholder tokens (one per query).

Schedule (docs/METHOD.md, "BLIP-2"): Eq. 6 over the vision tower (``R^{vv}``); in the Q-Former, Eq. 6-7
at the queries' self-attention and Eq. 10 at their cross-attention to the image (``R^{qv}``; Eq. 11
adds nothing: the image never attends to the queries), all with more than two modalities as METHOD.md
says; then the LM's stream. The image readout composes the stages: ``image = R^{g,tok} . R^{qv}[:, patches]``
(query token ``i`` is LM image token ``i``). ``compose_vision = False`` stops at the LM's query tokens.

With an encoder-decoder LM (Flan-T5) the image tokens are in the encoder's prompt, and the LM's stage is T5's
schedule (:mod:`captum_mm.adapters.encoder_decoder`): the image readout starts from ``R^{ts}``, the decoder's
relevance over the encoder's tokens.
"""

from types import MappingProxyType
from typing import Any, Dict, List, Sequence, Tuple, cast

import torch
from torch import Tensor, nn
from transformers import Blip2ForConditionalGeneration, T5ForConditionalGeneration
from transformers.models.blip_2.modeling_blip_2 import (
    Blip2Attention,
    Blip2EncoderLayer,
    Blip2QFormerMultiHeadAttention,
    Blip2QFormerOutput,
    Blip2QFormerSelfOutput,
)
from transformers.models.opt.modeling_opt import OPTAttention
from transformers.models.t5.modeling_t5 import T5Attention

from captum_mm.adapters.decoder import GENERATED, TEXT, GenerationConvention
from captum_mm.adapters.encoder_decoder import (
    SOURCE,
    TARGET,
    EncoderDecoderAdapter,
    decoder_rows,
    encoder_decoder_specs,
    source_target_masks,
)
from captum_mm.adapters.llama import LlamaAdapter
from captum_mm.adapters.opt import OPTAdapter, opt_attention_specs, opt_lrp_structure
from captum_mm.adapters.t5 import T5Adapter, t5_attention_modules, t5_attention_spec, t5_lrp_structure
from captum_mm.adapters.vision_language import IMAGE, VisionLanguageAdapter
from captum_mm.capture.record import AttentionRecord
from captum_mm.lrp.composite import LRPStructure
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import attention_specs_in, fused_qkv_parts, qkv_parts
from captum_mm.models.structure import post_norm_residuals
from captum_mm.models.targets import TargetSelection
from captum_mm.relevance.schedule import Readout, Schedule, Stage
from captum_mm.spec import AttentionSpec, TensorSource

QUERY, VISION = "query", "vision"


@register_adapter
class Blip2Adapter(VisionLanguageAdapter):
    """BLIP-2: the vision tower and the Q-Former's queries before an OPT or LLaMA-style LM (a Flan-T5 LM:
    :meth:`for_model` gives :class:`Blip2EncoderDecoderAdapter`).

    Args:
        model (nn.Module): The BLIP-2 model the adapter serves.
    """

    model_classes = (Blip2ForConditionalGeneration,)
    model: Blip2ForConditionalGeneration
    vision_attention_classes = (Blip2Attention,)
    attention_functions = MappingProxyType({**LlamaAdapter.attention_functions, **OPTAdapter.attention_functions,  # its LMs'
                                            **T5Adapter.attention_functions, Blip2Attention: False, Blip2QFormerMultiHeadAttention: False})
    vision_layer_classes = (Blip2EncoderLayer,)

    def vision_tower(self) -> nn.Module:
        return cast(nn.Module, self.model.vision_model)

    def language_model(self) -> nn.Module:
        return cast(nn.Module, self.model.language_model)

    def vision_specs(self, names: Dict[nn.Module, str]) -> List[AttentionSpec]:
        """The vision tower's, then the Q-Former's: each layer's query self-attention and, where it has
        one, its cross-attention to the image."""
        specs = attention_specs_in(self.vision_tower(), Blip2Attention, ((VISION, VISION),), fused_qkv_parts, names=names)
        qformer: Any = self.model.qformer
        for layer in cast(Sequence[Any], qformer.encoder.layer):
            specs.append(self._query_spec(layer.attention.attention, (QUERY, QUERY), names))
            if layer.has_cross_attention:
                specs.append(self._query_spec(layer.crossattention.attention, (QUERY, VISION), names))
        return specs

    def _query_spec(self, module: nn.Module, roles: Tuple[str, str], names: Dict[nn.Module, str]) -> AttentionSpec:
        return AttentionSpec(names[module], module, TensorSource(module, index=1), (roles,), parts=qkv_parts(module))

    def language_specs(self, names: Dict[nn.Module, str]) -> List[AttentionSpec]:
        return opt_attention_specs(self.language_model(), names) or super().language_specs(names)

    def language_attention_classes(self) -> Tuple[type, ...]:
        return (*self.attention_classes, OPTAttention)

    @classmethod
    def for_model(cls, model: nn.Module) -> VisionLanguageAdapter:
        decoder_only = bool(cast(Any, model).config.use_decoder_only_language_model)
        return cls(model) if decoder_only else Blip2EncoderDecoderAdapter(model)

    def _features_per_image(self, pixels: Tensor, arguments: Dict[str, Any]) -> int:
        return int(self.model.config.num_query_tokens)

    def image_stage(self, arguments: Dict[str, Any], grid: Tuple[int, int]) -> Stage:
        return Stage((QUERY, VISION), slice(None), slice(1, None))  # patches: the tower's class token left out

    image_tokens_on_grid = False
    several_images = False  # one image a prompt: its queries' tokens

    def stage_masks(self, pixels: Tensor) -> Dict[str, Tensor]:
        return {QUERY: torch.ones(pixels.shape[0], int(self.model.config.num_query_tokens), dtype=torch.bool, device=pixels.device)}

    def lrp_structure(self) -> LRPStructure:
        """The vision tower's pre-norm layers and the LM's (LLaMA-style, OPT's or T5's), and the Q-Former's post-norm residuals."""
        language = self.language_model()
        return (super().lrp_structure() + opt_lrp_structure(language) + t5_lrp_structure(language)
                + post_norm_residuals(cast(nn.Module, self.model.qformer), (Blip2QFormerSelfOutput, Blip2QFormerOutput)))


class Blip2EncoderDecoderAdapter(Blip2Adapter):
    """BLIP-2 with an encoder-decoder LM (Flan-T5): the prompt, with its image tokens, in the encoder; the
    decoder's start token and the continuation in the decoder.

    Args:
        model (nn.Module): The BLIP-2 model with a Flan-T5 LM the adapter serves.
    """

    arguments = MappingProxyType(dict(EncoderDecoderAdapter.arguments, pixel_values=VisionLanguageAdapter.arguments["pixel_values"]))

    def language_specs(self, names: Dict[nn.Module, str]) -> List[AttentionSpec]:
        language = self.language_model()
        if not isinstance(language, T5ForConditionalGeneration):
            return []
        return encoder_decoder_specs(t5_attention_modules(language), t5_attention_spec, names)

    def language_attention_classes(self) -> Tuple[type, ...]:
        return (T5Attention,)

    def generation_convention(self) -> GenerationConvention:
        """The LM's: its decoder start token and end of sequence."""
        return GenerationConvention.of(self.language_model())

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        arguments = record.arguments
        masks = source_target_masks(arguments)
        rows = decoder_rows(selection, masks[TARGET])
        image_tokens = self.image_tokens(arguments)[selection.sample]
        readouts = {
            TEXT: Readout(TARGET, rows, SOURCE, column_mask=~image_tokens),
            GENERATED: Readout(TARGET, rows, TARGET, slice(1, None)),
            IMAGE: self.image_readout(arguments, TARGET, rows, SOURCE, image_tokens),
        }
        return self.vision_schedule(record, selection, masks, readouts, causal=(TARGET,))
