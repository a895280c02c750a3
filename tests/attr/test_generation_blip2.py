"""BLIP-2: generated tokens explained over the image through the LM's query tokens, the Q-Former's
cross-attention to the image (Eq. 10) and its queries' self-attention (docs/METHOD.md)."""

import pytest
import torch

from captum_mm.attr import GenericAttention, PartialLRP, RawAttention
from captum_mm.attr.engine import forward_pass
from captum_mm.generation import generation_forward
from captum_mm.models.capture import use_eager_attention
from helpers import IMAGE_GRID, IMAGE_TOKEN, assert_each_sample_as_alone, assert_same_state, blip2, generation_relevance, model_state, vlm_prompts
from methods_under_test import METHODS

CONTINUATION = [[5, 6], [7], [8, 9]]
LANGUAGES = ["llama", "opt"]


def test_schedule_vision_then_queries_then_the_lm():
    model = blip2(vision_layers=2, qformer_layers=2, layers=2)
    forward, arguments, target = generation_forward(model, vlm_prompts(), CONTINUATION, False, None)
    with forward_pass(model, forward, arguments, target=target, needs=RawAttention.needs) as run:
        schedule = run.schedule
    assert [(e.query, e.key) for e in schedule.events] == (
        [("vision", "vision")] * 2 + [("query", "query"), ("query", "vision")] * 2 + [("sequence", "sequence")] * 2
    )
    image = schedule.outputs["image"]
    assert image.through.pair == ("query", "vision") and image.through.columns == slice(1, None)
    assert schedule.sizes == {"sequence": 24, "vision": 17, "query": 16}


@pytest.mark.parametrize("language", LANGUAGES)
def test_raw_attention_image_is_the_lm_row_times_the_last_cross_attention(language):
    model = blip2(language=language)
    batch = vlm_prompts(batch=1)
    explanation = RawAttention(model).explain(batch, continuation=[[5]])
    ids = torch.cat([batch["input_ids"], torch.tensor([[5]])], dim=1)
    cross = {}
    last = model.qformer.encoder.layer[-1].crossattention.attention
    handle = last.register_forward_hook(lambda module, args, output: cross.__setitem__("map", output[1]))
    restore = use_eager_attention(model)
    try:
        language = model(input_ids=ids, pixel_values=batch["pixel_values"], output_attentions=True).language_model_outputs
    finally:
        restore.remove()
        handle.remove()
    row = language.attentions[-1][0].mean(0)[ids.shape[1] - 2]
    expected = row[2:18] @ cross["map"][0].mean(0)[:, 1:]  # query token i is image token i; patches without [CLS]
    torch.testing.assert_close(explanation.image[0, 0].flatten(), expected)


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_batched_with_left_padding_equals_each_sample_alone(method, language):
    model = blip2(language=language)
    explanation = assert_each_sample_as_alone(lambda: METHODS[method](model), vlm_prompts(), CONTINUATION)
    assert explanation.image.shape == (3, 2, *IMAGE_GRID)


@pytest.mark.parametrize("language", LANGUAGES)
def test_generate_then_explain_and_the_model_left_as_it_was(language):
    model = blip2(language=language)
    batch = vlm_prompts()
    with torch.no_grad():
        model(**batch)  # HF installs its own output-capture hooks on a model's first forward
    before = model_state(model)
    arguments = {"max_new_tokens": 3, "do_sample": False, "suppress_tokens": [IMAGE_TOKEN]}
    generated = GenericAttention(model).explain(batch, generate=True, generation_args=arguments)
    with torch.no_grad():
        tokens = model.generate(**batch, **arguments)[:, batch["input_ids"].shape[1]:]
    assert torch.equal(generated.target, tokens)
    PartialLRP(model).explain(batch, continuation=CONTINUATION)
    with pytest.raises(ValueError, match=r"needs 8 image tokens \(id 3\), one per image feature; samples \[0, 1, 2\] have \[16, 16, 16\]"):
        GenericAttention(blip2(queries=8)).explain(batch, continuation=CONTINUATION)  # 8 queries, 16 image tokens
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("language", LANGUAGES)
def test_lrp_relevance_is_conserved_through_the_three_stages(language):
    """Relevance 1 at the token: what reaches the LM's first layer is whole; the share on the image tokens reaches
    the Q-Former's output, and what reaches the vision tower's output passes every vision layer whole."""
    model = blip2(vision_layers=2, qformer_layers=2, language=language).double()
    batch = vlm_prompts(batch=2)
    batch["attention_mask"][:] = 1  # no padding: float64 eager attention turns fully masked rows NaN
    batch["pixel_values"] = batch["pixel_values"].double()
    vision = model.vision_model.encoder.layers
    layers = model.language_model.model.decoder.layers if language == "opt" else model.language_model.model.layers
    cuts = {"lm": (layers[0], "input"), "projection": (model.language_projection, "output"),
            "vision output": (model.vision_model.encoder.layers[-1], "output")}
    cuts.update({f"vision layer {k}": (layer, "input") for k, layer in enumerate(vision)})
    relevance = generation_relevance(model, batch, [[5], [6]], cuts)
    assert torch.allclose(relevance["lm"], torch.ones(2, dtype=torch.float64), atol=1e-6)
    assert (relevance["projection"] > 0).all() and (relevance["projection"] < 1).all()
    for k in range(2):
        torch.testing.assert_close(relevance[f"vision layer {k}"], relevance["vision output"], atol=1e-6, rtol=0)


def test_a_language_model_of_another_family_is_refused():
    from transformers import Blip2ForConditionalGeneration, GPT2Config

    config = blip2().config
    config.text_config = GPT2Config(vocab_size=40, n_embd=32, n_layer=1, n_head=4)
    model = Blip2ForConditionalGeneration(config).eval()
    with pytest.raises(ValueError, match="with a GPT2LMHeadModel language model is not explained: its attention is none of"):
        GenericAttention(model).explain(vlm_prompts(), continuation=CONTINUATION)
