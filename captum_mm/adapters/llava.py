"""LLaVA-style VLMs (LLaVA, PaliGemma): a vision tower (CLIP or SigLIP) whose hidden states at a
feature layer are projected, token by token, into image placeholder tokens of a LLaMA-style LM's
sequence.

Schedule and readouts: :mod:`captum_mm.adapters.vision_language` (Eq. 6 over the vision tower's layers
up to the feature layer -- later layers feed nothing -- then the LM's causal stream; the ``image``
output continued through the vision tower's relevance unless ``compose_vision`` is False).
"""

from types import MappingProxyType
from typing import Any, Dict, Tuple

from torch import nn
from transformers import LlavaForConditionalGeneration, PaliGemmaForConditionalGeneration
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer
from transformers.models.siglip.modeling_siglip import SiglipAttention, SiglipEncoderLayer

from captum_mm.adapters.llama import LlamaAdapter
from captum_mm.adapters.vision_language import GENERATED, IMAGE, TEXT, VISION, VisionLanguageAdapter
from captum_mm.models.registry import register_adapter

__all__ = ["GENERATED", "IMAGE", "TEXT", "VISION", "LlavaAdapter", "PaliGemmaAdapter"]


@register_adapter
class LlavaAdapter(VisionLanguageAdapter):
    """LLaVA: the LM reads the vision tower's tokens at ``vision_feature_layer``, without the class token
    under the "default" ``vision_feature_select_strategy``.

    Args:
        model (nn.Module): The LLaVA model the adapter serves.
    """

    model_classes: Tuple[type, ...] = (LlavaForConditionalGeneration,)
    model: LlavaForConditionalGeneration | PaliGemmaForConditionalGeneration
    vision_attention_classes: Tuple[type, ...] = (CLIPAttention, SiglipAttention)
    attention_functions = MappingProxyType({**LlamaAdapter.attention_functions, **dict.fromkeys(vision_attention_classes, True)})
    vision_layer_classes: Tuple[type, ...] = (CLIPEncoderLayer, SiglipEncoderLayer)

    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    def first_feature(self, arguments: Dict[str, Any]) -> int:
        """The first vision token the LM reads (1: the "default" select strategy drops the first token).

        Args:
            arguments (dict): The forward's arguments (``vision_feature_select_strategy`` overrides the config's).

        Returns:
            *int*: Its index in the vision tower's sequence.
        """
        strategy = arguments.get("vision_feature_select_strategy") or self.model.config.vision_feature_select_strategy
        return int(strategy == "default")

    def feature_depth(self, arguments: Dict[str, Any], layers: int) -> int:
        """How many of the vision tower's ``layers`` the features the LM reads pass through.

        Args:
            arguments (dict): The forward's arguments (``vision_feature_layer`` overrides the config's).
            layers (int): The vision tower's layer count.

        Returns:
            *int*: The deepest feature layer (a negative one counted from the tower's output).
        """
        chosen = arguments.get("vision_feature_layer")
        chosen = self.model.config.vision_feature_layer if chosen is None else chosen
        return max((layer if layer >= 0 else layers + 1 + layer) for layer in ([chosen] if isinstance(chosen, int) else chosen))


@register_adapter
class PaliGemmaAdapter(LlavaAdapter):
    """PaliGemma: a SigLIP tower whose last hidden states (all layers, no class token) are projected into
    image tokens of a Gemma LM attending bidirectionally over its prefix; generated tokens belong to the
    causal suffix (``token_type_ids`` 1, as ``generate`` extends them).

    Args:
        model (nn.Module): The PaliGemma model the adapter serves.
    """

    model_classes = (PaliGemmaForConditionalGeneration,)
    generated_token_types = MappingProxyType({"token_type_ids": 1})
    # Every token of the last layer (the base's reading), not LLaVA's configured layer and strategy.
    first_feature = VisionLanguageAdapter.first_feature
    feature_depth = VisionLanguageAdapter.feature_depth
