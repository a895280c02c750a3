"""Generated tokens of decoder-only LMs as explained elements: schedule, readout, batching with left
padding, continuation == generate, model left unchanged, and the errors users get."""

from types import MappingProxyType

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

from captum_mm.attr import AttentionGradCam, AttentionRollout, GenericAttention, PartialLRP, RawAttention
from captum_mm.attr.engine import forward_pass
from captum_mm.generation import Continuation, generation_forward, prompt_arguments
from captum_mm.models import adapter_for
from helpers import (LANGUAGE_MODELS, LM_VOCAB, assert_each_sample_as_alone, assert_same_state, bert, in_dtype, language_model, model_state,
                     prompt_batch)
from methods_under_test import METHODS, padded_cases

GREEDY = {"max_new_tokens": 4, "do_sample": False}


def prompt(batch=3, tokens=6):
    ids, mask = prompt_batch(batch, tokens)
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", sorted(LANGUAGE_MODELS))
def test_schedule_is_one_causal_stream_read_at_the_position_before_each_token(family):
    model = language_model(family, layers=3)
    batch = prompt(batch=2)
    forward, arguments, target = generation_forward(model, batch, [[5, 6, 7], [8]], False, None)
    with forward_pass(model, forward, arguments, target=target, needs=GenericAttention.needs) as run:
        schedule, selection = run.schedule, run.selection
    assert [(e.query, e.key) for e in schedule.events] == [("sequence", "sequence")] * 3
    assert [step[0].call for step in schedule.steps] == [0, 1, 2]
    assert selection.sample.tolist() == [0, 0, 0, 1] and selection.slot.tolist() == [0, 1, 2, 0]
    assert selection.positions.tolist() == [6, 7, 8, 6]  # prompt of 6, then the continuation
    text, generated = schedule.outputs["text"], schedule.outputs["generated"]
    assert text.rows.tolist() == [5, 6, 7, 5] and text.columns == slice(0, 6) and generated.columns == slice(6, None)
    # each element sees up to its readout row (causality): sample 0's three tokens, sample 1 (left padding) its first
    assert schedule.masks["sequence"].int().tolist() == [
        [1] * 6 + [0, 0, 0], [1] * 7 + [0, 0], [1] * 8 + [0], [0, 0, 1, 1, 1, 1, 0, 0, 0]
    ]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_raw_attention_reads_the_last_layers_head_mean_row_before_each_token(family):
    model = language_model(family)
    batch = prompt(batch=1)
    explanation = RawAttention(model).explain(batch, continuation=[[5, 6, 7]])
    ids = torch.cat([batch["input_ids"], torch.tensor([[5, 6, 7]])], dim=1)
    model.config._attn_implementation = "eager"  # a copy of the setting: restored below
    try:
        attention = model(input_ids=ids, output_attentions=True).attentions[-1][0].mean(0)  # [N, N]
    finally:
        model.config._attn_implementation = "sdpa"
    for k in range(3):
        row = attention[5 + k].clone()
        row[5 + k] = 0.0  # the row token's own entry
        torch.testing.assert_close(explanation.text[0, k], row[:6])
        torch.testing.assert_close(explanation.generated[0, k], row[6:])
    assert explanation.generated[0, 0].abs().sum() == 0  # token 0 comes before every generated token


@pytest.mark.parametrize("family, method, dtype", padded_cases(sorted(LANGUAGE_MODELS), sorted(METHODS), "llama"))
def test_batched_with_left_padding_equals_each_sample_alone(family, method, dtype):
    model = language_model(family)
    batch = in_dtype(model, prompt(), dtype)
    explanation = assert_each_sample_as_alone(lambda: METHODS[method](model), batch, [[5, 6, 7], [8, 9], [10]])
    assert explanation.text.shape == (3, 3, 6) and explanation.generated.shape == (3, 3, 3) and explanation.text.dtype == dtype
    assert explanation.target.tolist() == [[5, 6, 7], [8, 9, -1], [10, -1, -1]]


@pytest.mark.parametrize("family", sorted(LANGUAGE_MODELS))
def test_generate_explains_what_greedy_generation_says(family):
    model = language_model(family)
    batch = prompt()
    explainer = GenericAttention(model)
    generated = explainer.explain(batch, generate=True, generation_args=GREEDY)
    with torch.no_grad():
        sequences = model.generate(**batch, **GREEDY)
    tokens = sequences[:, 6:]
    explained = generated.target >= 0
    assert torch.equal(generated.target[explained], tokens[explained])
    # our one forward over prompt + continuation agrees with generate: each greedy token is the most probable
    given = explainer.explain(batch, continuation=tokens)
    assert torch.equal(given.target, tokens)
    for name in ("text", "generated", "scores"):
        torch.testing.assert_close(getattr(generated, name)[explained], getattr(given, name)[explained])
    probabilities = torch.stack([step.softmax(-1) for step in model.generate(
        **batch, **GREEDY, output_scores=True, return_dict_in_generate=True).scores], dim=1)
    torch.testing.assert_close(given.scores, probabilities.gather(-1, tokens[..., None])[..., 0], atol=1e-5, rtol=1e-4)


def test_tokens_after_the_end_of_sequence_are_not_explained():
    model = language_model("llama")
    batch = prompt(batch=1)
    with torch.no_grad():
        first = model.generate(**batch, max_new_tokens=1, do_sample=False)[0, -1].item()
    model.generation_config.eos_token_id = first  # the first greedy token ends the sequence
    try:
        explanation = GenericAttention(model).explain(batch, generate=True, generation_args=GREEDY)
    finally:
        model.generation_config.eos_token_id = 2
    assert explanation.target[0, 0].item() == first and (explanation.target[0, 1:] == -1).all()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_next_token_of_a_prompt_through_attribute(family):
    model = language_model(family)
    ids, mask = prompt_batch()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate counts them under left padding
    forward = lambda ids, mask: model(input_ids=ids, attention_mask=mask, position_ids=positions).logits  # noqa: E731
    explainer = GenericAttention(forward, model)
    attributions = explainer.attribute(ids, additional_forward_args=(mask,))
    assert attributions.shape == ids.shape and attributions[1, :2].abs().sum() == 0
    next_tokens = forward(ids, mask)[:, -1].argmax(-1)
    as_continuation = GenericAttention(model).explain({"input_ids": ids, "attention_mask": mask}, continuation=next_tokens[:, None])
    torch.testing.assert_close(attributions, as_continuation.text[:, 0])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_model_left_bit_identical_also_after_an_error(family):
    model = language_model(family)
    before = model_state(model)
    batch = prompt()
    GenericAttention(model).explain(batch, generate=True, generation_args=GREEDY)
    RawAttention(model).explain(batch, continuation=[[5], [6], [7]])
    PartialLRP(model).explain(batch, continuation=[[5], [6], [7]])  # LRP's hooks removed too
    with pytest.raises(ValueError):
        AttentionRollout(model).explain(batch, continuation=[[5], [6], [LM_VOCAB]])
    assert_same_state(before, model_state(model))


def test_clear_errors():
    model = language_model("gpt2")
    batch = prompt()
    explainer = AttentionGradCam(model)
    with pytest.raises(ValueError, match="more than the 48 positions"):
        explainer.explain(batch, continuation=torch.full((3, 43), 5))
    with pytest.raises(ValueError, match=r"outside the vocabulary \(0..39\): \[40, 99\]"):
        explainer.explain(batch, continuation=[[5, 40], [99], [6]])
    with pytest.raises(ValueError, match="not both"):
        explainer.explain(batch, continuation=[[5], [6], [7]], generate=True)
    with pytest.raises(ValueError, match="only with generate=True"):
        explainer.explain(batch, continuation=[[5], [6], [7]], generation_args=GREEDY)
    with pytest.raises(ValueError, match="one list of int token ids per sample"):
        explainer.explain(batch, continuation=[[5], [6]])
    with pytest.raises(ValueError, match="pass target=None"):
        explainer.explain(batch, target=3, continuation=[[5], [6], [7]])
    with pytest.raises(ValueError, match="left padding"):
        right = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"].flip(-1)}
        explainer.explain(right, continuation=[[5], [6], [7]])
    with pytest.raises(ValueError, match="gives cache.*pass the prompt as a dict"):
        explainer.explain(batch["input_ids"], additional_forward_args=(batch["attention_mask"],), continuation=[[5], [6], [7]])
    with pytest.raises(ValueError, match="for generated tokens only"):
        explainer.explain(batch)
    with pytest.raises(ValueError, match="continuation is empty"):
        explainer.explain(batch, continuation=torch.zeros(3, 0, dtype=torch.long))
    right_padded = (batch["input_ids"], batch["attention_mask"].flip(-1))
    forward = lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits  # noqa: E731
    with pytest.raises(ValueError, match="last position, which is padding"):
        GenericAttention(forward, model).attribute(right_padded[0], additional_forward_args=(right_padded[1],))
    with pytest.raises(ValueError, match="BertForSequenceClassification does not generate text"):
        GenericAttention(bert()).explain(batch["input_ids"], continuation=[[5], [6], [7]])
    cross = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=LM_VOCAB, add_cross_attention=True)).eval()
    with pytest.raises(NotImplementedError, match="cross-attention layers .* no LRP structure"):
        PartialLRP(cross).explain(batch, continuation=[[5], [6], [7]])
    with pytest.raises(TypeError, match=r"cannot explain a GPT2Model \(model_type 'gpt2'\): no architecture adapter.*closest supported family by name is GPT2LMHeadModel"):
        GenericAttention(GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2)))


def test_prompt_arguments_binds_positional_inputs_to_the_forward_signature():
    model = language_model("llama")
    ids, mask = prompt_batch()
    assert prompt_arguments(model, (ids, mask)).keys() == {"input_ids", "attention_mask"}
    assert isinstance(generation_forward(model, {"input_ids": ids}, [[4]] * 3, False, None)[2], Continuation)
    assert adapter_for(model).outputs == ("text", "generated")


def test_generated_ids_hold_the_explained_tokens_and_target_the_explained_classes():
    model = language_model("llama")
    explanation = GenericAttention(model).explain(prompt(), continuation=[[5, 6, 7], [8, 9], [10]])
    assert explanation.generated_ids.tolist() == [[5, 6, 7], [8, 9, -1], [10, -1, -1]]
    assert torch.equal(explanation.target, explanation.generated_ids)  # an LM's explained class is a token id
    ids, mask = prompt_batch()
    next_token = GenericAttention(model).explain(ids, target=[5, 6, 7], additional_forward_args=(mask,))
    assert next_token.target.tolist() == [5, 6, 7] and next_token.generated_ids is None and next_token.positions is None


def test_generation_extends_what_the_adapter_declares_and_nothing_else():
    assert adapter_for(bert()).generation_convention() is None  # families that do not generate declare none
    model = language_model("llama")
    ids, mask = prompt_batch()
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with pytest.raises(ValueError, match=r"\['token_type_ids'\] hold one entry per prompt token"):
        generation_forward(model, batch, [[4, 5]] * 3, False, None)

    class Declaring(type(adapter_for(model))):
        generated_token_types = MappingProxyType({"token_type_ids": 1})
        model_positions = True

    arguments = generation_forward(model, batch, [[4, 5]] * 3, False, None, Declaring(model))[1]
    assert len(arguments) == 3  # input_ids, attention_mask, token_type_ids: no position_ids, the model computes them
    assert arguments[2].tolist() == [[0] * ids.shape[1] + [1, 1]] * 3
