"""Encoder-decoder LMs (BART, T5): generated tokens explained over the prompt (through the decoder's
cross-attention, Eq. 10) and the earlier generated tokens."""

import pytest
import torch
from helpers import (
    ENCODER_DECODERS,
    assert_last_layer_rows,
    assert_each_sample_as_alone,
    assert_same_state,
    encoder_decoder_model,
    in_dtype,
    model_state,
    prompt_batch,
)
from methods_under_test import METHODS, padded_cases

from captum_mm.attr import GenericAttention, RawAttention
from captum_mm.attr.engine import forward_pass
from captum_mm.generation import generation_forward

CONTINUATION = [[5, 6, 7], [8, 9], [10]]
FAMILIES = sorted(ENCODER_DECODERS)


def prompt(batch=3):
    ids, _ = prompt_batch(batch)
    mask = torch.ones_like(ids)
    if batch > 1:
        mask[1, 4:], ids[1, 4:] = 0, 0  # the encoder's padding may sit on either side
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", FAMILIES)
def test_schedule_encoder_then_each_decoder_layers_self_and_cross_attention(family):
    model = encoder_decoder_model(family, layers=2)
    forward, arguments, target = generation_forward(model, prompt(), CONTINUATION, False, None)
    with forward_pass(model, forward, arguments, target=target, needs=RawAttention.needs) as run:
        schedule = run.schedule
    roles = [(event.query, event.key) for event in schedule.events]
    assert roles == [("source", "source")] * 2 + [("target", "target"), ("target", "source")] * 2
    text, generated = schedule.outputs["text"], schedule.outputs["generated"]
    assert text.pair == ("target", "source") and generated.pair == ("target", "target")
    assert text.rows.tolist() == [0, 1, 2, 0, 1, 0]  # token k is predicted at decoder position k (start token first)
    assert generated.columns == slice(1, None) and schedule.sizes == {"source": 6, "target": 4}
    assert schedule.masks["target"][3:5].tolist() == [[True, False, False, False], [True, True, False, False]]  # up to the row


@pytest.mark.parametrize("family", FAMILIES)
def test_raw_attention_reads_the_last_cross_and_self_attention_rows(family):
    model = encoder_decoder_model(family)
    batch = prompt(batch=1)
    explanation = RawAttention(model).explain(batch, continuation=[[5, 6, 7]])
    start = model.generation_config.decoder_start_token_id
    assert_last_layer_rows(model, batch, torch.tensor([[start, 5, 6, 7]]), explanation.text[0], explanation.generated[0])


@pytest.mark.parametrize("family, method, dtype", padded_cases(FAMILIES, sorted(METHODS), "t5"))
def test_batched_with_padding_equals_each_sample_alone(family, method, dtype):
    model = encoder_decoder_model(family)
    explanation = assert_each_sample_as_alone(lambda: METHODS[method](model), in_dtype(model, prompt(), dtype), CONTINUATION)
    assert explanation.text.shape == (3, 3, 6) and explanation.generated.shape == (3, 3, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_explains_what_greedy_generation_says(family):
    model = encoder_decoder_model(family)
    batch = prompt()
    arguments = {"max_new_tokens": 3, "do_sample": False, "min_new_tokens": 3}
    generated = GenericAttention(model).explain(batch, generate=True, generation_args=arguments)
    with torch.no_grad():
        result = model.generate(**batch, **arguments, output_logits=True, return_dict_in_generate=True)
    tokens = result.sequences[:, 1:]
    assert torch.equal(generated.target, tokens)
    # the probabilities of the model's own logits (min_new_tokens changes only which token generate picks)
    probabilities = torch.stack([step.softmax(-1) for step in result.logits], dim=1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(generated.scores, probabilities, atol=1e-5, rtol=1e-4)
    given = GenericAttention(model).explain(batch, continuation=tokens)
    torch.testing.assert_close(given.text, generated.text)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_left_as_it_was_and_clear_errors(family):
    model = encoder_decoder_model(family)
    batch = prompt()
    with torch.no_grad():
        model(**batch, decoder_input_ids=batch["input_ids"][:, :2])  # HF's own hooks, installed on a first forward
    before = model_state(model)
    GenericAttention(model).explain(batch, continuation=CONTINUATION)
    with pytest.raises(ValueError, match="pass them as continuation="):
        GenericAttention(model).explain(dict(batch, decoder_input_ids=batch["input_ids"]), continuation=CONTINUATION)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        RawAttention(model).explain(batch, continuation=[[5], [6], [400]])
    assert_same_state(before, model_state(model))
