"""BLIP question answering: each answer token explained over the question (through the decoder's cross-attention,
Eq. 10), the earlier answer tokens, and the image through the question encoder's cross-attention (docs/METHOD.md,
"BLIP question answering")."""

import pytest
import torch

from captum_mm.attr import GenericAttention, PartialLRP, RawAttention, TransformerAttribution
from captum_mm.attr.engine import forward_pass
from captum_mm.generation import GenerationConvention, generation_forward
from captum_mm.models import adapter_for
from helpers import BLIP_END, BLIP_START, IMAGE_GRID, assert_each_sample_as_alone, assert_same_state, blip_questions, in_dtype, blip_vqa, model_state
from methods_under_test import METHODS

CONTINUATION = [[5, 6, 7], [8, 9], [10]]


def run_schedule(model, batch, continuation):
    forward, arguments, target = generation_forward(model, batch, continuation, False, None)  # the adapter's conventions
    with forward_pass(model, forward, arguments, target=target, needs=RawAttention.needs) as run:
        return run.schedule


def test_the_adapter_states_blips_conventions():
    model = blip_vqa()
    assert not model.config.is_encoder_decoder  # what HF's config says; the forward takes decoder_input_ids all the same
    assert adapter_for(model).generation_convention() == GenerationConvention(True, BLIP_START, (BLIP_END,), 12)


def test_schedule_vision_then_question_layers_then_answer_layers():
    schedule = run_schedule(blip_vqa(vision_layers=2, layers=2), blip_questions(), CONTINUATION)
    assert [(e.query, e.key) for e in schedule.events] == (
        [("vision", "vision")] * 2 + [("question", "question"), ("question", "vision")] * 2
        + [("target", "target"), ("target", "question")] * 2
    )
    assert [e.name.split(".")[0] for e in schedule.events] == ["vision_model"] * 2 + ["text_encoder"] * 4 + ["text_decoder"] * 4
    text, generated, image = (schedule.outputs[name] for name in ("text", "generated", "image"))
    assert text.pair == image.pair == ("target", "question") and generated.pair == ("target", "target")
    assert text.rows.tolist() == [0, 1, 2, 0, 1, 0]  # token k is predicted at decoder position k (start token first)
    assert generated.columns == slice(1, None) and image.grid == IMAGE_GRID
    assert image.through.pair == ("question", "vision") and image.through.columns == slice(1, None)  # [CLS] left out
    assert schedule.sizes == {"vision": 17, "question": 6, "target": 4}
    assert schedule.masks["question"][3].tolist() == [True] * 4 + [False] * 2  # sample 1's question is right-padded
    assert schedule.masks["target"][3:5].tolist() == [[True, False, False, False], [True, True, False, False]]  # up to the row


def test_raw_attention_reads_the_models_own_eager_maps():
    """text: the last decoder cross-attention's row; generated: its last self-attention's row (own entry 0); image:
    the cross-attention row times the question encoder's last cross-attention to the patches. The maps are the
    model's own (output_attentions of its text encoder and decoder, run as its forward runs them)."""
    model = blip_vqa()
    batch = blip_questions(batch=1)
    explanation = RawAttention(model).explain(batch, continuation=[[5, 6, 7]])
    answer = torch.tensor([[BLIP_START, 5, 6, 7]])
    with torch.no_grad():
        image_embeds = model.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
        question = model.text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      encoder_hidden_states=image_embeds, output_attentions=True)
        decoded = model.text_decoder(input_ids=answer, encoder_hidden_states=question.last_hidden_state,
                                     encoder_attention_mask=batch["attention_mask"], output_attentions=True)
    to_patches = question.cross_attentions[-1][0].mean(0)[:, 1:]
    cross, self_attention = decoded.cross_attentions[-1][0].mean(0), decoded.attentions[-1][0].mean(0)
    probabilities = decoded.logits[0, :3].softmax(-1).gather(-1, answer[0, 1:, None])[:, 0]
    torch.testing.assert_close(explanation.scores[0], probabilities)  # the decoder's logits, which the forward drops
    for k in range(3):
        torch.testing.assert_close(explanation.text[0, k], cross[k])
        row = self_attention[k].clone()
        row[k] = 0.0  # the row token's own entry
        torch.testing.assert_close(explanation.generated[0, k], row[1:])
        torch.testing.assert_close(explanation.image[0, k], (cross[k] @ to_patches).reshape(IMAGE_GRID))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_batched_answers_of_different_lengths_equal_each_sample_alone(method):
    """The answers' padding; the questions' is in the next test. In float64: batching is what is compared (in float32
    the LRP-based methods' rounding, amplified ~1e3 on this random model, reaches the float32 tolerance)."""
    model = blip_vqa()
    batch = in_dtype(model, blip_questions(pad=False), torch.float64)
    explanation = assert_each_sample_as_alone(lambda: METHODS[method](model), batch, CONTINUATION, scaled=True)
    assert explanation.text.shape == (3, 3, 6) and explanation.generated.shape == (3, 3, 3)
    assert explanation.image.shape == (3, 3, *IMAGE_GRID)


def test_the_models_decoder_reads_the_questions_padding_which_gets_no_relevance():
    """HF's BLIP (transformers 5.25) never masks a cross-attention: BlipTextAttention hands its mask to
    BlipTextSelfAttention as attention_mask, which a cross-attention replaces by its (absent) encoder_attention_mask.
    So the answer decoder attends to the question's padding, forward and generate alike, and a padded question is
    answered otherwise than alone: no explanation can equal the sample's alone. The padding gets no relevance."""
    model = blip_vqa()
    batch = blip_questions()
    explanation = RawAttention(model).explain(batch, continuation=CONTINUATION)
    real = batch["attention_mask"][1].bool()
    alone = RawAttention(model).explain({"input_ids": batch["input_ids"][1:2, real], "pixel_values": batch["pixel_values"][1:2]},
                                        continuation=CONTINUATION[1:2])
    assert not torch.allclose(explanation.scores[1, :2], alone.scores[0], rtol=1e-3)  # the model's own probabilities
    assert explanation.text[1, :, ~real].abs().sum() == 0 and explanation.text[1, :2, real].abs().sum() > 0


def test_generate_explains_what_greedy_generation_says():
    model = blip_vqa()
    batch = blip_questions()
    arguments = {"max_new_tokens": 3, "do_sample": False}
    generated = GenericAttention(model).explain(batch, generate=True, generation_args=arguments)
    with torch.no_grad():
        result = model.generate(**batch, **arguments, output_logits=True, return_dict_in_generate=True)
    tokens = result.sequences[:, 1:]  # after the start token
    assert torch.equal(generated.target, tokens) and generated.positions.tolist() == [[1, 2, 3]] * 3
    probabilities = torch.stack([step.softmax(-1) for step in result.logits], dim=1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(generated.scores, probabilities, atol=1e-5, rtol=1e-4)
    given = GenericAttention(model).explain(batch, continuation=tokens)
    torch.testing.assert_close(given.image, generated.image)


def test_generation_ends_at_the_sep_token_not_at_the_configs_eos():
    model = blip_vqa()
    batch = blip_questions()
    # token 3 (the text config's eos) every step, then the sep token after two of them
    arguments = {"max_new_tokens": 5, "sequence_bias": {(3,): 100.0, (3, 3, BLIP_END): 200.0}}
    explanation = RawAttention(model).explain(batch, generate=True, generation_args=arguments)
    assert explanation.target.tolist() == [[3, 3, BLIP_END]] * 3  # the sep token is explained, and ends the answer


def test_lrp_methods_attribute_and_the_model_left_as_it_was():
    model = blip_vqa()
    batch = blip_questions()
    answer = torch.tensor([[BLIP_START, 5, 6]] * 3)
    with torch.no_grad():
        model(**batch, decoder_input_ids=answer)  # HF installs its own output-capture hooks on a model's first forward
    before = model_state(model)
    for method in (GenericAttention(model, head_weighting="lrp"), PartialLRP(model), TransformerAttribution(model)):
        assert method.explain(batch, continuation=CONTINUATION).image.abs().sum() > 0
    # Captum's contract: the next token after decoder_input_ids, each input's attribution shaped like it
    text, pixels = GenericAttention(model).attribute((batch["input_ids"], batch["pixel_values"], answer),
                                                     additional_forward_args=(None, batch["attention_mask"]))[:2]
    assert text.shape == batch["input_ids"].shape and pixels.shape == batch["pixel_values"].shape
    assert text[1, -2:].abs().sum() == 0 and pixels.abs().sum() > 0  # padding has no relevance
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=2)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("pixel_values"), r"needs pixel_values \[batch, channels, height, width\]"),
    (lambda b: b.update(pixel_values=torch.randn(3, 3, 48, 48)), "pixel_values are 48 x 48, the vision model takes 32 x 32"),
    (lambda b: b.update(pixel_values=torch.randn(2, 3, 32, 32)), "Batch sizes disagree"),
    (lambda b: b.update(decoder_input_ids=b["input_ids"]), "pass them as continuation="),
    (lambda b: b.update(labels=b["input_ids"]), "labels are not explained"),
])
def test_clear_errors_for_bad_inputs(change, message):
    model = blip_vqa()
    batch = blip_questions()
    change(batch)
    with pytest.raises(ValueError, match=message):
        GenericAttention(model).explain(batch, continuation=CONTINUATION)


def test_clear_errors_for_bad_continuations():
    model, batch = blip_vqa(), blip_questions()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        RawAttention(model).explain(batch, continuation=[[5], [6], [400]])
    with pytest.raises(ValueError, match=r"Prompt \(1\) \+ continuation \(12\) = 13 tokens, more than the 12 positions"):
        RawAttention(model).explain(batch, continuation=[[5] * 12] * 3)  # the decoder's positions, its start token first
