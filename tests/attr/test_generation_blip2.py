"""BLIP-2: generated tokens explained over the image through the LM's query tokens, the Q-Former's
cross-attention to the image (Eq. 10) and its queries' self-attention (docs/METHOD.md)."""

import pytest
import torch
from helpers import (
    IMAGE_GRID,
    IMAGE_TOKEN,
    assert_each_sample_as_alone,
    assert_same_state,
    blip2,
    generation_relevance,
    in_dtype,
    model_state,
    vlm_prompts,
)
from methods_under_test import METHODS, padded_cases

from captum_mm.attr import GenericAttention, PartialLRP, RawAttention
from captum_mm.attr.engine import forward_pass
from captum_mm.capture.settings import use_eager_attention
from captum_mm.generation import generation_forward
from captum_mm.models import adapter_for

CONTINUATION = [[5, 6], [7], [8, 9]]
LANGUAGES = ["llama", "opt", "t5"]


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


def test_schedule_with_an_encoder_decoder_lm_runs_its_encoder_then_its_decoder():
    model = blip2(vision_layers=1, qformer_layers=1, layers=2, language="t5")
    forward, arguments, target = generation_forward(model, vlm_prompts(), CONTINUATION, False, None)
    with forward_pass(model, forward, arguments, target=target, needs=RawAttention.needs) as run:
        schedule = run.schedule
    assert [(e.query, e.key) for e in schedule.events] == (
        [("vision", "vision"), ("query", "query"), ("query", "vision")] + [("source", "source")] * 2
        + [("target", "target"), ("target", "source")] * 2
    )
    image = schedule.outputs["image"]
    assert (image.row, image.key, image.through.pair) == ("target", "source", ("query", "vision"))
    assert schedule.sizes == {"source": 22, "target": 3, "vision": 17, "query": 16}


def test_raw_attention_image_with_an_encoder_decoder_lm_is_the_cross_attention_row_times_the_q_former_map():
    model = blip2(language="t5")
    batch = vlm_prompts(batch=1)
    explanation = RawAttention(model).explain(batch, continuation=[[5, 6]])
    decoder_ids = torch.tensor([[model.language_model.config.decoder_start_token_id, 5, 6]])
    cross = {}
    last = model.qformer.encoder.layer[-1].crossattention.attention
    handle = last.register_forward_hook(lambda module, args, output: cross.__setitem__("map", output[1]))
    restore = use_eager_attention(model, attention_functions=adapter_for(model).attention_functions)
    try:
        language = model(**batch, decoder_input_ids=decoder_ids, output_attentions=True).language_model_outputs
    finally:
        restore.remove()
        handle.remove()
    lm_cross = language.cross_attentions[-1][0].mean(0)
    for k in range(2):
        torch.testing.assert_close(explanation.image[0, k].flatten(), lm_cross[k, 2:18] @ cross["map"][0].mean(0)[:, 1:])
        text = lm_cross[k].clone()
        text[2:18] = 0.0  # the image tokens are not text
        torch.testing.assert_close(explanation.text[0, k], text)


@pytest.mark.parametrize("language", ["llama", "opt"])
def test_raw_attention_image_is_the_lm_row_times_the_last_cross_attention(language):
    model = blip2(language=language)
    batch = vlm_prompts(batch=1)
    explanation = RawAttention(model).explain(batch, continuation=[[5]])
    ids = torch.cat([batch["input_ids"], torch.tensor([[5]])], dim=1)
    cross = {}
    last = model.qformer.encoder.layer[-1].crossattention.attention
    handle = last.register_forward_hook(lambda module, args, output: cross.__setitem__("map", output[1]))
    restore = use_eager_attention(model, attention_functions=adapter_for(model).attention_functions)
    try:
        language = model(input_ids=ids, pixel_values=batch["pixel_values"], output_attentions=True).language_model_outputs
    finally:
        restore.remove()
        handle.remove()
    row = language.attentions[-1][0].mean(0)[ids.shape[1] - 2]
    expected = row[2:18] @ cross["map"][0].mean(0)[:, 1:]  # query token i is image token i; patches without [CLS]
    torch.testing.assert_close(explanation.image[0, 0].flatten(), expected)


@pytest.mark.parametrize("language, method, dtype", padded_cases(LANGUAGES, sorted(METHODS), "opt"))
def test_batched_with_left_padding_equals_each_sample_alone(method, language, dtype):
    model = blip2(language=language)
    explanation = assert_each_sample_as_alone(lambda: METHODS[method](model), in_dtype(model, vlm_prompts(), dtype), CONTINUATION)
    assert explanation.image.shape == (3, 2, *IMAGE_GRID)


@pytest.mark.parametrize("language", LANGUAGES)
def test_generate_then_explain_and_the_model_left_as_it_was(language):
    model = blip2(language=language)
    batch = vlm_prompts()
    with torch.no_grad():
        decoder = {"decoder_input_ids": torch.zeros(3, 1, dtype=torch.long)} if language == "t5" else {}
        model(**batch, **decoder)  # HF installs its own output-capture hooks on a model's first forward
    before = model_state(model)
    arguments = {"max_new_tokens": 3, "do_sample": False, "suppress_tokens": [IMAGE_TOKEN]}
    generated = GenericAttention(model).explain(batch, generate=True, generation_args=arguments)
    with torch.no_grad():
        tokens = model.generate(**batch, **arguments)
    tokens = tokens[:, 1:] if language == "t5" else tokens[:, batch["input_ids"].shape[1]:]  # after the decoder's start
    assert torch.equal(generated.target, tokens)
    PartialLRP(model).explain(batch, continuation=CONTINUATION)
    with pytest.raises(ValueError, match=r"needs 8 image tokens \(id 3\), one per image feature; samples \[0, 1, 2\] have \[16, 16, 16\]"):
        GenericAttention(blip2(queries=8)).explain(batch, continuation=CONTINUATION)  # 8 queries, 16 image tokens
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("language", LANGUAGES)
def test_lrp_relevance_is_conserved_through_the_three_stages(language):
    """Relevance 1 at the token: what reaches the LM's first layer (T5: its encoder's and decoder's) is whole; the share on the image tokens reaches
    the Q-Former's output, and what reaches the vision tower's output passes every vision layer whole."""
    model = blip2(vision_layers=2, qformer_layers=2, language=language).double()
    batch = vlm_prompts(batch=2)
    batch["pixel_values"] = batch["pixel_values"].double()
    vision = model.vision_model.encoder.layers
    layers = {"opt": lambda lm: lm.model.decoder.layers, "llama": lambda lm: lm.model.layers, "t5": lambda lm: lm.encoder.block}
    cuts = {"lm": (layers[language](model.language_model)[0], "input"), "projection": (model.language_projection, "output"),
            "vision output": (model.vision_model.encoder.layers[-1], "output")}
    cuts.update({f"vision layer {k}": (layer, "input") for k, layer in enumerate(vision)})
    if language == "t5":  # the token's 1 split between the decoder and the encoder (the prompt)
        cuts["decoder"] = (model.language_model.decoder.block[0], "input")
    relevance = generation_relevance(model, batch, [[5], [6]], cuts)
    assert torch.allclose(relevance["lm"] + relevance.get("decoder", 0), torch.ones(2, dtype=torch.float64), atol=1e-6)
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


@pytest.mark.parametrize("language", LANGUAGES)
def test_attribute_explains_the_next_token_and_stopping_at_the_queries(language):
    # attribute: the image's patch-grid relevance spread over each patch's pixels, as explain gives it for the next
    # token (T5: the token after the decoder's start); compose_vision = False: over the 16 query tokens, not a grid
    model = blip2(language=language)
    batch = vlm_prompts()
    decoder = {"decoder_input_ids": torch.zeros(3, 1, dtype=torch.long)} if language == "t5" else {}
    forward = lambda ids, pixels, mask: model(input_ids=ids, pixel_values=pixels, attention_mask=mask, **decoder).logits  # noqa: E731
    ids, pixels = batch["input_ids"], batch["pixel_values"]
    text, image = GenericAttention(forward, model).attribute((ids, pixels), additional_forward_args=(batch["attention_mask"],))
    with torch.no_grad():
        next_tokens = model(**batch, **decoder).logits[:, -1].argmax(-1)
    explained = GenericAttention(model).explain(batch, continuation=next_tokens[:, None])
    torch.testing.assert_close(text, explained.text[:, 0])
    torch.testing.assert_close(image[:, :, ::8, ::8][:, 0], explained.image[:, 0])
    stopped = GenericAttention(model)
    stopped.adapter.compose_vision = False
    assert stopped.explain(batch, continuation=next_tokens[:, None]).image.shape == (3, 1, 16)
