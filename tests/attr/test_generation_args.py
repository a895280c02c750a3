"""``generate=True`` with ordinary ``generation_args``: the end token, ``return_dict_in_generate``, several sequences
per prompt and the padding after a sample's end honoured; a generation longer than the model's positions refused
before generating."""

import pytest
import torch

from captum_mm.attr import GenericAttention
from helpers import encoder_decoder_model, family_prompts, language_model, prompt_batch, qwen2_vl

GREEDY = {"max_new_tokens": 4, "do_sample": False}


def prompt():
    torch.manual_seed(0)
    ids, mask = prompt_batch()
    return {"input_ids": ids, "attention_mask": mask}


def first_greedy_tokens(model, batch):
    with torch.no_grad():
        return model.generate(**batch, max_new_tokens=1, do_sample=False)[:, -1]


def test_eos_token_id_of_generation_args_ends_the_explained_tokens_whatever_pads_after_it():
    model = language_model("llama")
    batch = prompt()
    end = int(first_greedy_tokens(model, batch)[0])  # sample 0's first token ends it
    assert model.generation_config.eos_token_id != end
    explanation = GenericAttention(model).explain(batch, generate=True, generation_args={**GREEDY, "eos_token_id": end, "pad_token_id": 7})
    with torch.no_grad():
        sequences = model.generate(**batch, **GREEDY, eos_token_id=end, pad_token_id=7)[:, 6:]
    assert sequences[0, 0] == end and (sequences[0, 1:] == 7).all()  # generate pads sample 0 after its end
    assert explanation.target[0, 0] == end and (explanation.target[0, 1:] == -1).all()
    explained = explanation.target >= 0
    assert torch.equal(explanation.target[explained], sequences[explained])
    assert explanation.text[0, 1:].abs().sum() == 0


def test_eos_token_id_none_in_generation_args_ends_nothing():
    model = language_model("llama")
    batch = prompt()
    model.generation_config.eos_token_id = int(first_greedy_tokens(model, batch)[0])  # would end sample 0 at once
    try:
        explanation = GenericAttention(model).explain(batch, generate=True, generation_args={**GREEDY, "eos_token_id": None})
        with torch.no_grad():
            sequences = model.generate(**batch, **GREEDY, eos_token_id=None)[:, 6:]
    finally:
        model.generation_config.eos_token_id = 2
    assert torch.equal(explanation.target, sequences)  # every generated token explained


@pytest.mark.parametrize("family", ["llama", "bart"])
def test_return_dict_in_generate_gives_the_same_explanation(family):
    model = language_model(family) if family == "llama" else encoder_decoder_model(family)
    batch = prompt()
    explainer = GenericAttention(model)
    plain = explainer.explain(batch, generate=True, generation_args=GREEDY)
    as_dict = explainer.explain(batch, generate=True, generation_args={**GREEDY, "return_dict_in_generate": True, "output_scores": True})
    assert torch.equal(as_dict.target, plain.target)
    for name in plain.relevance:
        torch.testing.assert_close(as_dict.relevance[name], plain.relevance[name])


@pytest.mark.parametrize("family", ["llama", "bart"])
def test_several_sequences_per_prompt_are_each_explained_after_their_prompt(family):
    model = language_model(family) if family == "llama" else encoder_decoder_model(family)
    batch = prompt()
    arguments = {"max_new_tokens": 3, "num_beams": 2, "num_return_sequences": 2, "do_sample": False}
    explainer = GenericAttention(model)
    explanation = explainer.explain(batch, generate=True, generation_args=arguments)
    with torch.no_grad():
        sequences = model.generate(**batch, **arguments)
    continuation = sequences[:, 1:] if family == "bart" else sequences[:, 6:]
    assert explanation.target.shape == (6, 3)  # sequence 2 i + r: the r-th of prompt i, as generate orders them
    explained = explanation.target >= 0
    assert torch.equal(explanation.target[explained], continuation[explained])
    repeated = {name: value.repeat_interleave(2, dim=0) for name, value in batch.items()}
    given = explainer.explain(repeated, continuation=[row[keep].tolist() for row, keep in zip(continuation, explained)])
    for name in given.relevance:
        torch.testing.assert_close(explanation.relevance[name], given.relevance[name])


def test_several_sequences_per_prompt_are_refused_where_arguments_are_not_batched():
    model = qwen2_vl()
    batch = family_prompts("qwen2_vl")
    model.generate = lambda **kwargs: pytest.fail("generate was called")
    with pytest.raises(ValueError, match=r"num_return_sequences=2: .* Qwen2VLForConditionalGeneration's unbatched "
                                         r"\['pixel_values', 'image_grid_thw'\] do not allow"):
        GenericAttention(model).explain(batch, generate=True, generation_args={**GREEDY, "num_beams": 2, "num_return_sequences": 2})


@pytest.mark.parametrize("family", ["gpt2", "bart"])
def test_a_generation_longer_than_the_positions_is_refused_before_generating(family):
    model = language_model(family) if family == "gpt2" else encoder_decoder_model(family)  # both 48 positions
    batch = prompt()
    start = 6 if family == "gpt2" else 1  # the prompt, or the decoder's start token
    explainer = GenericAttention(model)
    model.generate = lambda **kwargs: pytest.fail("generate was called")
    with pytest.raises(ValueError, match=f"max_new_tokens={49 - start} lets generate produce 49 tokens .* more than the 48 "
                                         f"positions .* ask for at most {48 - start} new tokens"):
        explainer.explain(batch, generate=True, generation_args={"max_new_tokens": 49 - start})
    with pytest.raises(ValueError, match="max_length=60 lets generate produce 60 tokens"):
        explainer.explain(batch, generate=True, generation_args={"max_length": 60})
    model.generation_config.max_new_tokens = 100  # the model's own setting, when generation_args give none
    try:
        with pytest.raises(ValueError, match="max_new_tokens=100 lets generate produce"):
            explainer.explain(batch, generate=True)
    finally:
        model.generation_config.max_new_tokens = None


def test_a_generation_that_fits_the_positions_runs():
    model = language_model("gpt2")
    explanation = GenericAttention(model).explain(prompt(), generate=True, generation_args={"max_new_tokens": 42, "min_new_tokens": 42})
    assert explanation.target.shape == (3, 42)


def test_prompt_ids_outside_the_vocabulary_are_a_clear_error():
    model = language_model("llama")
    batch = prompt()
    batch["input_ids"][2, 3] = 40
    batch["input_ids"][0, 0] = -1
    with pytest.raises(ValueError, match=r"The prompt's input_ids holds token ids outside the vocabulary \(0..39\): \[-1, 40\]"):
        GenericAttention(model).explain(batch, continuation=[[5], [6], [7]])


def test_stopping_criteria_in_a_batch_are_refused_and_alone_explain_what_generate_says():
    """A sample stopped by ``stopping_criteria`` (or ``stop_strings``) has no end token: in a batch its padding would be
    explained as generated tokens, so a batch is refused; a prompt alone has no padding."""
    from transformers import MaxLengthCriteria, StoppingCriteriaList

    model = language_model("llama")
    batch = prompt()
    stopping = StoppingCriteriaList([MaxLengthCriteria(max_length=batch["input_ids"].shape[1] + 2)])
    with pytest.raises(ValueError, match="stopping_criteria ends a sample without an end token"):
        GenericAttention(model).explain(batch, generate=True, generation_args={**GREEDY, "stopping_criteria": stopping})
    alone = {name: value[:1] for name, value in batch.items()}
    explanation = GenericAttention(model).explain(alone, generate=True, generation_args={**GREEDY, "stopping_criteria": stopping})
    with torch.no_grad():
        sequences = model.generate(**alone, **GREEDY, stopping_criteria=stopping)[:, batch["input_ids"].shape[1]:]
    assert sequences.shape[1] == 2 and torch.equal(explanation.target, sequences)
