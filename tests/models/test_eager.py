"""Eager attention as captum_mm computes it: the family's own function, with an exact softmax in float64."""

import pytest
import torch
from transformers.models.llama.modeling_llama import eager_attention_forward as llama_eager

from captum_mm.models.capture import use_eager_attention
from captum_mm.models.eager import EXACT_EAGER, exact_eager_attention
from helpers import language_model


def _inputs(dtype):
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 4, 5, 8, dtype=dtype), torch.randn(2, 2, 5, 8, dtype=dtype), torch.randn(2, 2, 5, 8, dtype=dtype)
    seen = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    seen[1, :, :, :2] = False  # sample 1 left-padded by two: its first two query rows see no key
    mask = torch.zeros(seen.shape, dtype=dtype).masked_fill(~seen, torch.finfo(dtype).min)
    return query, key, value, mask, seen


def test_float64_softmax_is_exact_and_a_row_seeing_no_key_is_uniform():
    attention = language_model("llama").model.layers[0].self_attn.double()
    query, key, value, mask, seen = _inputs(torch.float64)
    with torch.no_grad():
        output, probs = exact_eager_attention(attention, query, key, value, mask, scaling=0.25)
        hf_output, _ = llama_eager(attention, query, key, value, mask, scaling=0.25)
    assert torch.isnan(hf_output[1, :2]).all()  # HF's float32 softmax: the mask is -inf there, the padding rows NaN
    torch.testing.assert_close(probs[1, :, :2], torch.full((4, 2, 5), 0.2, dtype=torch.float64), rtol=0, atol=1e-15)
    real = seen.any(-1)[:, 0]  # [B, Nq] rows seeing a key
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1), attn_mask=seen, scale=0.25).transpose(1, 2)
    torch.testing.assert_close(output[real], expected[real], rtol=1e-14, atol=1e-14)
    assert not torch.allclose(output[real], hf_output[real], rtol=1e-12, atol=0)  # HF's float32 rounding, absent here


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_other_dtypes_get_the_familys_own_function(dtype):
    attention = language_model("llama").model.layers[0].self_attn.to(dtype)
    query, key, value, mask, _ = _inputs(dtype)
    with torch.no_grad():
        ours, hf = exact_eager_attention(attention, query, key, value, mask, 0.25), llama_eager(attention, query, key, value, mask, 0.25)
    assert all(torch.equal(a, b) for a, b in zip(ours, hf))


def test_float32_softmax_families_are_switched_to_it_and_restored():
    model = language_model("llama")
    before = model.config._attn_implementation
    handle = use_eager_attention(model)
    assert model.config._attn_implementation == EXACT_EAGER
    handle.remove()
    assert model.config._attn_implementation == before
