"""The generative VLM's study: its perturbed forward generates what the model generates, and the relevance it
perturbs by is the explanation of the generated answer, placed on the question tokens and the patch grid."""

import torch

from captum_mm import zoo
from captum_mm.attr import GenericAttention
from captum_mm.datasets.easy_vqa import EasyVQA
from captum_mm.metrics.perturbation import perturbation_curve, vqa_score
from captum_mm.study.llava import IMAGE, QUESTION, GeneratedAnswer, _collate, answer_relevance, prompt_of
from captum_mm.zoo.train_llava import generated_answers, prompts

QUESTIONS = list(range(16))


def setup():
    return zoo.load("llava-easyvqa"), EasyVQA("test")


def test_the_sequence_rebuilt_from_kept_tokens_generates_what_the_model_generates():
    model, dataset = setup()
    batch, _ = _collate(dataset)(QUESTIONS)
    answers = GeneratedAnswer(model, dataset.answers)(**batch).argmax(-1)
    generated = generated_answers(model, dataset, QUESTIONS)
    assert [dataset.answers[a] if a < len(dataset.answers) else None for a in answers.tolist()] == [
        answer if answer in dataset.answers else None for answer in generated]
    assert torch.equal(prompt_of(batch)["input_ids"], prompts(dataset, QUESTIONS)["input_ids"])


def test_relevance_is_the_explanation_of_the_answer_summed_over_its_word_pieces():
    model, dataset = setup()
    batch, _ = _collate(dataset)(QUESTIONS[:4])
    relevance = answer_relevance(GenericAttention, model)(batch, None)
    explanation = GenericAttention(model).explain(prompts(dataset, QUESTIONS[:4]), generate=True,
                                                 generation_args={"max_new_tokens": 3, "do_sample": False})
    end = model.config.text_config.eos_token_id
    for row in range(4):
        pieces = (explanation.target[row] >= 0) & (explanation.target[row] != end)
        length = int(batch["question_mask"][row].sum())
        expected_text = explanation.text[row, pieces].sum(0)[-length:]
        torch.testing.assert_close(relevance["text"][row, :length], expected_text)
        torch.testing.assert_close(relevance["image"][row], explanation.image[row, pieces].sum(0).flatten())
        assert (relevance["text"][row, length:] == 0).all()


def test_dropping_every_image_token_or_every_question_token_changes_the_answers():
    """With nothing of one modality left, the answers fall to what the other alone allows (checked on 16 questions)."""
    model, dataset = setup()
    batch, scores = _collate(dataset)(QUESTIONS)
    forward = GeneratedAnswer(model, dataset.answers)
    relevance = answer_relevance(GenericAttention, model)(batch, None)
    for group, modality in ((IMAGE, "image"), (QUESTION, "text")):
        curve = perturbation_curve(forward, batch, relevance[modality], group, vqa_score(scores), True, (0.0, 1.0))
        assert curve.accuracy[0] > 75 and curve.accuracy[1] < curve.accuracy[0]
