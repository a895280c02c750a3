"""The declared vision-language base: abstract where a family must fill in, and enough for a new family that
declares only its stages."""

from types import MappingProxyType
from typing import Tuple

import pytest
import torch
from helpers import VLMS, blip2, family_prompts, paligemma
from torch import nn
from transformers.models.siglip.modeling_siglip import SiglipAttention, SiglipEncoderLayer

from captum_mm.adapters.blip2 import Blip2EncoderDecoderAdapter
from captum_mm.adapters.llama import LlamaAdapter
from captum_mm.adapters.llava import LlavaAdapter, PaliGemmaAdapter
from captum_mm.adapters.vision_language import VisionLanguageAdapter
from captum_mm.attr import GenericAttention, TransformerAttribution
from captum_mm.models import adapter_for


class StagesOnly(VisionLanguageAdapter):
    """A new family declaring only its stages (PaliGemma's vision tower and LM), the attention functions lean capture
    serves and how generated tokens extend its token types."""

    vision_attention_classes: Tuple[type, ...] = (SiglipAttention,)
    attention_functions = MappingProxyType({**LlamaAdapter.attention_functions, SiglipAttention: True})
    generated_token_types = MappingProxyType({"token_type_ids": 1})
    vision_layer_classes: Tuple[type, ...] = (SiglipEncoderLayer,)

    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def language_model(self) -> nn.Module:
        return self.model.model.language_model


class NoLanguageModel(VisionLanguageAdapter):
    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower


def test_the_base_and_a_family_missing_a_stage_cannot_be_made():
    model = paligemma()
    with pytest.raises(TypeError, match="language_model"):
        NoLanguageModel(model)  # type: ignore[abstract]
    with pytest.raises(TypeError, match="abstract"):
        VisionLanguageAdapter(model)  # type: ignore[abstract]


FAMILIES = {**VLMS, "blip2": blip2, "blip2_t5": lambda: blip2(language="t5")}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_vlm_adapter_is_a_vision_language_adapter(family):
    adapter = adapter_for(FAMILIES[family]())
    assert isinstance(adapter, VisionLanguageAdapter)
    assert isinstance(adapter, LlavaAdapter) == (family in ("llava", "paligemma", "llava_next", "llava_onevision"))  # LLaVA is a family, not the base
    assert isinstance(adapter, Blip2EncoderDecoderAdapter) == (family == "blip2_t5")


@pytest.mark.parametrize("method", [GenericAttention, TransformerAttribution])
def test_a_family_declaring_only_its_stages_explains_as_its_own_adapter(method):
    model = paligemma().double()
    batch = family_prompts("paligemma", batch=2)
    batch["pixel_values"] = batch["pixel_values"].double()
    own, stages_only = method(model), method(model)
    stages_only.adapter = StagesOnly(model)
    assert isinstance(own.adapter, PaliGemmaAdapter)
    expected, got = own.explain(batch, continuation=[[5], [6]]), stages_only.explain(batch, continuation=[[5], [6]])
    for output in ("text", "generated", "image"):
        torch.testing.assert_close(getattr(got, output), getattr(expected, output), rtol=0, atol=0)
    assert expected.image.abs().sum() > 0
