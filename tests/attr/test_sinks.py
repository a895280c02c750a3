"""Attention sinks: the shares received, by hand; relevance without sinks, by hand; the diagnostic on models."""

from types import SimpleNamespace

import pytest
import torch

from captum_mm.attr import GenericAttention
from captum_mm.attr.sinks import AttentionSinks, WithoutSinks, _received, without_sinks
from captum_mm.attr._readout import Explanation
from helpers import CASES, LANGUAGE_MODELS


def test_received_shares_by_hand():
    real = {"s": torch.ones(1, 3, dtype=torch.bool)}
    full = torch.tensor([[[0.5, 0.25, 0.25], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]])
    # column sums [2, .75, .25] over the 3 rows that see every token
    shares = _received(SimpleNamespace(masks=real, causal=frozenset()), "s", [full, full])
    torch.testing.assert_close(shares, torch.tensor([[2 / 3, 0.25, 0.25 / 3]]))
    causal = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.25, 0.25]]])
    # the same column sums over the rows that see each token: 3, 2 and 1
    shares = _received(SimpleNamespace(masks=real, causal=frozenset({"s"})), "s", [causal])
    torch.testing.assert_close(shares, torch.tensor([[2 / 3, 0.375, 0.25]]))


def test_without_sinks_by_hand():
    explanation = Explanation({"text": torch.tensor([[1.0, -2.0, 3.0]])}, torch.tensor([0]), torch.tensor([0.5]))
    sinks = {"text": torch.tensor([[False, True, False]])}
    # |1| + |3| = 4 left of 6: the rest scaled by 1.5
    assert without_sinks(explanation, sinks).text.tolist() == [[1.5, 0.0, 4.5]]
    assert without_sinks(explanation, sinks, renormalize=False).text.tolist() == [[1.0, 0.0, 3.0]]
    with pytest.raises(ValueError, match="same inputs and targets"):
        without_sinks(explanation, {"text": torch.ones(1, 4, dtype=torch.bool)})


def test_diagnostic_names_the_first_real_token_and_heavy_receivers():
    model = LANGUAGE_MODELS["llama"]().eval()
    ids = torch.randint(3, 40, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    diagnostic = AttentionSinks(model, share=0.3)
    shares = diagnostic.explain(ids, None, (mask,))
    assert shares.text[0, 0] == 1 and shares.text[1, 2] == 1 and not shares.text[1, :2].any()
    sinks = diagnostic.sinks(shares)["text"]
    assert torch.equal(sinks, shares.text >= 0.3) and sinks[:, 0].tolist() == [True, False]
    explanation = GenericAttention(model).explain(ids, None, (mask,))
    cleaned = without_sinks(explanation, diagnostic.sinks(shares))
    assert not cleaned.text[sinks].any()
    wrapped = WithoutSinks(GenericAttention(model), share=0.3)
    assert torch.equal(wrapped.explain(ids, None, (mask,)).text, cleaned.text)
    assert torch.equal(wrapped.last_sinks["text"], sinks)
    generated = diagnostic.explain(ids, continuation=torch.randint(3, 40, (2, 2)), additional_forward_args=(mask,))
    assert generated.text.shape == (2, 2, 6) and generated.generated.shape == (2, 2, 2)


def test_diagnostic_on_an_image_grid_and_bad_share():
    case = CASES["vit"]()
    shares = AttentionSinks(case.model, first_token=False).explain(case.inputs).image
    assert shares.shape == (3, 4, 4) and ((shares > 0) & (shares < 1)).all()
    with pytest.raises(ValueError, match="share"):
        AttentionSinks(case.model, share=0.0)
