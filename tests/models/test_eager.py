"""Eager attention as captum_mm computes it: the family's own function, with an exact softmax in float64."""

from contextlib import contextmanager

import pytest
import torch
from helpers import language_model
from transformers.models.llama.modeling_llama import LlamaAttention
from transformers.models.llama.modeling_llama import eager_attention_forward as llama_eager

from captum_mm.adapters.llama import LlamaAdapter
from captum_mm.capture.eager import EXACT_EAGER, declare_attention_functions, exact_eager_attention, family_eager
from captum_mm.capture.settings import use_eager_attention


class SubclassedAttention(LlamaAttention):
    """A user's subclass, defined outside LLaMA's modeling file (it may compute attention otherwise)."""


@contextmanager
def declared(attention_functions=LlamaAdapter.attention_functions):
    handle = declare_attention_functions(attention_functions)
    try:
        yield
    finally:
        handle.remove()


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
    with torch.no_grad(), declared():
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
    with torch.no_grad(), declared():
        ours, hf = exact_eager_attention(attention, query, key, value, mask, 0.25), llama_eager(attention, query, key, value, mask, 0.25)
    assert all(torch.equal(a, b) for a, b in zip(ours, hf))


def test_float32_softmax_families_are_switched_to_it_and_restored():
    model = language_model("llama")
    before = model.config._attn_implementation
    handle = use_eager_attention(model, attention_functions=LlamaAdapter.attention_functions)
    assert model.config._attn_implementation == EXACT_EAGER
    handle.remove()
    assert model.config._attn_implementation == before
    handle = use_eager_attention(model)  # no declaration: every module its family's own function
    assert model.config._attn_implementation == "eager"
    handle.remove()


def _float64_outputs(attention):
    query, key, value, mask, _ = _inputs(torch.float64)
    with torch.no_grad():
        return exact_eager_attention(attention, query, key, value, mask, 0.25), llama_eager(attention, query, key, value, mask, 0.25)


def test_only_the_declared_exact_types_get_the_float64_softmax_and_only_while_declared():
    config = language_model("llama").config
    subclassed = SubclassedAttention(config, layer_idx=0).double()
    assert family_eager(subclassed) is llama_eager  # found through the class's bases
    with declared():  # LlamaAttention declared, not its subclass
        ours, hf = _float64_outputs(subclassed)
    torch.testing.assert_close(ours, hf, rtol=0, atol=0, equal_nan=True)  # the family's own function, NaN rows and all
    with declared({SubclassedAttention: True}):
        ours, hf = _float64_outputs(subclassed)
    assert not torch.isnan(ours[0]).any() and torch.isnan(hf[0]).any()
    ours, hf = _float64_outputs(LlamaAttention(config, layer_idx=0).double())  # the declaration is gone
    assert torch.isnan(ours[0]).any() and torch.isnan(hf[0]).any()


def test_a_class_from_no_modeling_file_is_refused():
    class Unknown(torch.nn.Module):
        pass

    with pytest.raises(TypeError, match="eager_attention_forward"):
        family_eager(Unknown())
