"""The perturbation test: packing equals dropping, oracle behaviour, AUC, bad input."""

import pytest
import torch

from captum_mm.metrics import (
    DEFAULT_STEPS,
    LXMERT_IMAGE,
    LXMERT_TEXT,
    VISUAL_BERT_IMAGE,
    VISUAL_BERT_IMAGE_STEPS,
    VISUAL_BERT_TEXT,
    accuracy,
    area_under_curve,
    perturbation_curve,
    vqa_score,
)
from captum_mm.metrics.perturbation import kept_tokens
from helpers import FEATURES, lxmert, text_batch, visual_bert


def lxmert_inputs(batch=4, regions=6):
    ids, mask = text_batch(batch, tokens=7)
    mask[2, 3:] = 0
    return {
        "input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
        "visual_feats": torch.randn(batch, regions, FEATURES), "visual_pos": torch.rand(batch, regions, 4),
    }


def dropped_one_by_one(model_forward, inputs, relevance, group, positive, steps):
    """The definition: each sample alone, its padding removed, tokens dropped from the sequence
    (with none left, one masked token: HF LXMERT cannot run on an empty modality)."""
    predictions = []
    for index in range(relevance.shape[0]):
        alone = {name: value[index:index + 1] for name, value in inputs.items()}
        length = int(alone[group.mask].sum()) if group.mask in alone else relevance.shape[1]
        alone = {n: (v[:, :length] if n in group.tensors + (group.mask,) else v) for n, v in alone.items()}
        row = []
        for step in steps:
            keep = kept_tokens(relevance[index:index + 1, :length], alone.get(group.mask, torch.ones(1, length)), step, positive, group.keep_ends)
            positions = torch.nonzero(keep[0]).flatten()
            dropped = {n: (v[:, positions] if n in group.tensors + (group.mask,) else v) for n, v in alone.items()}
            if positions.numel() == 0:
                dropped = {n: (v[:, :1] if n in group.tensors else v) for n, v in alone.items()}
                dropped[group.mask] = torch.zeros(1, 1, dtype=torch.long)
            row.append(model_forward(**dropped).argmax(-1).item())
        predictions.append(row)
    return torch.tensor(predictions)


@pytest.mark.parametrize("group", [LXMERT_TEXT, LXMERT_IMAGE], ids=["text", "image"])
@pytest.mark.parametrize("positive", [True, False])
def test_packing_equals_dropping_one_by_one_lxmert(group, positive):
    model = lxmert()
    inputs = lxmert_inputs()

    def forward(**kwargs):
        return model(**kwargs).question_answering_score

    tokens = inputs[group.tensors[0]].shape[1]
    relevance = torch.rand(4, tokens)
    expected = dropped_one_by_one(forward, inputs, relevance, group, positive, DEFAULT_STEPS)
    score = lambda logits, samples: logits.argmax(-1).double()  # noqa: E731  (the prediction itself)
    curve = perturbation_curve(forward, inputs, relevance, group, score, positive, batch_size=7)
    assert torch.equal(curve.scores.long(), expected)


@pytest.mark.parametrize("group, steps", [(VISUAL_BERT_TEXT, DEFAULT_STEPS), (VISUAL_BERT_IMAGE, VISUAL_BERT_IMAGE_STEPS)], ids=["text", "image"])
def test_packing_equals_dropping_one_by_one_visual_bert(group, steps):
    model = visual_bert()
    inputs = lxmert_inputs()
    inputs = {
        "input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
        "token_type_ids": inputs["token_type_ids"], "visual_embeds": inputs["visual_feats"],
    }

    def forward(**kwargs):
        return model(**kwargs).logits

    relevance = torch.rand(4, inputs[group.tensors[0]].shape[1])
    expected = dropped_one_by_one(forward, inputs, relevance, group, True, steps)
    curve = perturbation_curve(forward, inputs, relevance, group, lambda logits, s: logits.argmax(-1).double(), True, steps)
    assert torch.equal(curve.scores.long(), expected)


def needle_model(needle=7):
    """Answers 1 exactly when token ``needle`` is among the real text tokens."""

    def forward(input_ids, attention_mask, **unused):
        present = ((input_ids == needle) & attention_mask.bool()).any(1)
        return torch.stack([(~present).double(), present.double()], 1)

    return forward


def test_oracle_relevance_positive_drops_at_once_negative_keeps():
    ids = torch.tensor([[101, 3, 7, 4, 5, 102], [101, 7, 3, 4, 102, 0]])
    mask = (ids != 0).long()
    inputs = {"input_ids": ids, "attention_mask": mask}
    relevance = (ids == 7).double()
    answers = torch.ones(2, dtype=torch.long)
    positive = perturbation_curve(needle_model(), inputs, relevance, LXMERT_TEXT, accuracy(answers), True)
    negative = perturbation_curve(needle_model(), inputs, relevance, LXMERT_TEXT, accuracy(answers), False)
    assert positive.accuracy.tolist() == [100.0] + [0.0] * 8
    # the needle stays while one removable token is kept: int((1 - f) * n) > 0 for n = 4 and 3
    assert negative.accuracy.tolist() == [100.0, 100.0, 100.0, 50.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert negative.auc > positive.auc


def test_kept_tokens_keeps_cls_sep_and_counts_like_the_reference():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    relevance = torch.tensor([[9.0, 1.0, 5.0, 3.0, 4.0, 9.0, 9.0]])
    # four removable tokens (1..4); keeping int((1 - 0.5) * 4) = 2: the most relevant are 2 and 4
    assert kept_tokens(relevance, mask, 0.5, False, True).long().tolist() == [[1, 0, 1, 0, 1, 1, 0]]
    assert kept_tokens(relevance, mask, 0.5, True, True).long().tolist() == [[1, 1, 0, 1, 0, 1, 0]]
    # int((1 - 0.8) * 5) is 0 in floating point, as in the reference
    assert kept_tokens(torch.ones(1, 5), torch.ones(1, 5), 0.8, False, False).sum() == 0


def test_auc_of_known_curves():
    assert area_under_curve([100.0, 50.0, 0.0], [0.0, 0.5, 1.0]) == pytest.approx(50.0)
    assert area_under_curve([80.0] * 9, DEFAULT_STEPS) == pytest.approx(80.0)


def test_vqa_soft_score():
    answer_scores = torch.tensor([[0.0, 0.3, 1.0], [0.6, 0.0, 0.0]])
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    assert torch.allclose(vqa_score(answer_scores)(logits, torch.tensor([0, 1])), torch.tensor([0.3, 0.6], dtype=torch.float64))


@pytest.mark.parametrize("steps, message", [((0.0, 1.5), r"fractions in \[0, 1\]"), ((0.0, 0.5, 0.25), "strictly increasing"), ((), "fractions")])
def test_bad_steps(steps, message):
    with pytest.raises(ValueError, match=message):
        perturbation_curve(needle_model(), {"input_ids": torch.ones(1, 3, dtype=torch.long)}, torch.ones(1, 3), LXMERT_TEXT, accuracy(torch.ones(1)), True, steps)


def test_relevance_shape_and_empty_set():
    inputs = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5)}
    with pytest.raises(ValueError, match=r"relevance has shape \(2, 4\) but the input_ids tokens are \(2, 5\)"):
        perturbation_curve(needle_model(), inputs, torch.ones(2, 4), LXMERT_TEXT, accuracy(torch.ones(2)), True)
    empty = {"input_ids": torch.ones(0, 5, dtype=torch.long), "attention_mask": torch.ones(0, 5)}
    with pytest.raises(ValueError, match="sample set is empty"):
        perturbation_curve(needle_model(), empty, torch.ones(0, 5), LXMERT_TEXT, accuracy(torch.ones(0)), True)
