"""Gemma 3 vision-language: the projector's average pooling as the token map, the LM's bidirectional image block and
sliding window in the recorded maps, raw attention against the model's own eager maps, and LRP conserved in float64
at every layer (vision tower, projector, LM). The shared VLM suites run every method on it (tests/helpers.py)."""


import numpy as np
import pytest
import torch
from helpers import (
    IMAGE_TOKEN,
    assert_image_halves_sum_their_cells,
    assert_raw_attention_is_the_models_own,
    eager_outputs,
    family_prompts,
    gemma3_vl,
    generation_relevance,
    schedule_leaving_the_model_as_it_was,
)

from captum_mm.attr import GenericAttention
from captum_mm.models import adapter_for

GRID = (8, 8)  # 4 x 4 patches of a 32 x 32 image, pooled 2 x 2 into 4 x 4 image tokens


def _with_token(batch):
    """The prompt followed by token 5 (token type 0: text), as the model's forward takes it."""
    extra = torch.tensor([[5]])
    return {"input_ids": torch.cat([batch["input_ids"], extra], dim=1), "pixel_values": batch["pixel_values"],
            "token_type_ids": torch.cat([batch["token_type_ids"], torch.zeros_like(extra)], dim=1)}


def test_schedule_reads_the_vision_tower_then_the_lm_and_leaves_the_model_as_it_was():
    model = gemma3_vl()
    batch = family_prompts("gemma3_vl", batch=2)
    schedule, record = schedule_leaving_the_model_as_it_was(model, batch, [[5], [6]])
    assert [call.name for call in record.calls] == [
        "model.vision_tower.encoder.layers.0.self_attn", "model.vision_tower.encoder.layers.1.self_attn",
        "model.language_model.layers.0.self_attn", "model.language_model.layers.1.self_attn"]
    assert [(e.query, e.key) for e in schedule.events] == [("vision", "vision")] * 2 + [("sequence", "sequence")] * 2
    assert schedule.sizes["vision"] == 64 and schedule.causal == frozenset({"sequence"})


def test_the_lm_attends_bidirectionally_in_the_image_block_causally_elsewhere_and_within_its_window():
    model = gemma3_vl()
    batch = family_prompts("gemma3_vl", batch=1)
    maps = eager_outputs(model, _with_token(batch), model.model.vision_tower.encoder.layers[-1].self_attn)[0].attentions
    sliding, full = maps[-2][0], maps[-1][0]  # language layers: sliding window 4, then full attention
    image = slice(2, 18)
    assert (full[:, image, image] > 0).all()  # every image token sees every other, later ones too
    text = full[:, 18:, 18:]
    seen = torch.ones(5, 5, dtype=torch.bool).tril()
    assert (text[:, ~seen] == 0).all() and (text[:, seen] > 0).all()
    assert (sliding[:, 20, :17] == 0).all() and (sliding[:, 20, 17:21] > 0).all()  # a text token sees its last 4 tokens


def test_the_token_map_is_the_projectors_pooling_one_patch_changing_only_its_image_token():
    model = gemma3_vl(vision_layers=0)  # no vision layer: a patch reaches only the image token pooled from it
    batch = family_prompts("gemma3_vl", batch=1)
    changed = batch["pixel_values"].clone()
    changed[0, :, 4:8, 20:24] += 1.0  # the patch in row 1, column 5 of the grid: pooled into token (0, 2)
    with torch.no_grad():
        before, after = (model.model.get_image_features(pixels).pooler_output for pixels in (batch["pixel_values"], changed))
    assert (before - after).abs().sum(-1).flatten().nonzero().flatten().tolist() == [2]
    token_map = adapter_for(model).token_map(GRID)
    assert token_map.shape == (16, 64) and torch.equal(token_map.sum(1), torch.ones(16, dtype=torch.float64))
    assert token_map[2].reshape(GRID).nonzero().tolist() == [[0, 4], [0, 5], [1, 4], [1, 5]]
    assert (token_map[2][token_map[2] > 0] == 0.25).all()


def test_raw_attention_image_is_the_lm_row_times_the_pooling_times_the_last_vision_map():
    model = gemma3_vl()
    batch = family_prompts("gemma3_vl", batch=1)
    last = model.model.vision_tower.encoder.layers[-1].self_attn
    assert_raw_attention_is_the_models_own(model, batch, _with_token(batch), last, slice(None))


def test_the_image_reaches_the_logits_only_once_its_zero_initialised_projection_is_drawn():
    batch = family_prompts("gemma3_vl", batch=1)
    other = dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]))
    torch.manual_seed(0)
    model = gemma3_vl()
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, model(**other).logits)
        model.model.multi_modal_projector.mm_input_projection_weight.zero_()  # as HF initialises it
        torch.testing.assert_close(model(**batch).logits, model(**other).logits)


def test_lrp_conserves_relevance_at_every_layer_through_the_projector_in_float64(monkeypatch):
    """The token's 1 reaches every LM layer's input whole; what reaches the image tokens passes the projector
    (projection, RMSNorm, pooling) and each vision layer whole."""
    monkeypatch.setattr("captum_mm.lrp.rules.STABILIZER", 1e-20)  # Gemma's post-norms: see test_qwen3_gemma.py
    model = gemma3_vl().double()
    projector, language = model.model.multi_modal_projector, model.model.language_model
    torch.nn.init.normal_(projector.mm_soft_emb_norm.weight, std=0.2)
    batch = family_prompts("gemma3_vl", batch=2)
    batch["pixel_values"] = batch["pixel_values"].double()
    vision = model.model.vision_tower
    cuts = {f"lm {k}": (layer, "input") for k, layer in enumerate(language.layers)}
    cuts.update({"image tokens": (projector, "output"), "projector": (projector, "input"),
                 "pooled": (projector.mm_soft_emb_norm, "input"), "post norm": (vision.post_layernorm, "input")})
    cuts.update({f"vision {k}": (layer, "input") for k, layer in enumerate(vision.encoder.layers)})
    relevance = generation_relevance(model, batch, [[5], [6]], cuts)
    for k in range(len(language.layers)):
        torch.testing.assert_close(relevance[f"lm {k}"], torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (relevance["image tokens"].abs() > 1e-3).all()
    for name in ("projector", "pooled", "post norm", *(f"vision {k}" for k in range(len(vision.encoder.layers)))):
        torch.testing.assert_close(relevance[name], relevance["image tokens"], rtol=0, atol=1e-9, msg=name)


def test_a_prompt_without_one_image_token_per_pooled_token_is_refused():
    model = gemma3_vl()
    batch = family_prompts("gemma3_vl", batch=1)
    batch["input_ids"][0, 2] = 7
    with pytest.raises(ValueError, match="Each prompt needs 16 image tokens"):
        GenericAttention(model).explain(batch, continuation=[[5]])
    assert IMAGE_TOKEN == model.config.image_token_id


def test_a_bidirectional_language_model_is_refused():
    model = gemma3_vl()
    model.config.text_config.use_bidirectional_attention = True
    with pytest.raises(ValueError, match="attends bidirectionally"):
        GenericAttention(model).explain(family_prompts("gemma3_vl", batch=1), continuation=[[5]])


def test_attribute_explains_the_next_token_over_the_prompt_and_the_image():
    model = gemma3_vl()
    batch = family_prompts("gemma3_vl")

    def forward(ids, pixels, types, mask):
        return model(input_ids=ids, pixel_values=pixels, token_type_ids=types, attention_mask=mask).logits

    ids, pixels = batch["input_ids"], batch["pixel_values"]
    text, image = GenericAttention(forward, model).attribute(
        (ids, pixels), additional_forward_args=(batch["token_type_ids"], batch["attention_mask"]))
    assert text.shape == ids.shape and image.shape == pixels.shape
    with torch.no_grad():
        next_tokens = model(**batch).logits[:, -1].argmax(-1)
    explained = GenericAttention(model).explain(batch, continuation=next_tokens[:, None])
    torch.testing.assert_close(text, explained.text[:, 0])
    torch.testing.assert_close(image[:, 0, ::4, ::4], explained.image[:, 0])  # each 4 x 4 patch holds its cell's value


def _model_and_processor(tokenizer):
    """A tiny model on the MiniLM WordPiece vocabulary ([unused0] the image token) and a hand-made processor: the
    image resized to 32 x 32 (an 8 x 8 patch grid, 16 image tokens) after a [CLS], then the question."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    image_token = tokenizer.convert_tokens_to_ids("[unused0]")
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=4)
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=8, sliding_window=4, pad_token_id=0, eos_token_id=tokenizer.sep_token_id)
    model = Gemma3ForConditionalGeneration(Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=16,
                                                        image_token_index=image_token)).eval()
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.2)  # HF's zeros hide the image
    question = tokenizer.encode("what color is the circle?", add_special_tokens=False)

    def processor(image):
        pixels = torch.tensor(np.asarray(image.resize((32, 32)), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        ids = torch.tensor([[tokenizer.cls_token_id] + [image_token] * 16 + question])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
                "token_type_ids": (ids == image_token).long()}

    return model, processor


def test_captums_llm_api_sums_the_patch_relevance_each_image_segment_covers():
    assert_image_halves_sum_their_cells(_model_and_processor, 64, 64)
