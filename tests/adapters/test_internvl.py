"""InternVL: the pixel shuffle as the token map (checked against the model by perturbing one patch), raw attention
against the model's own eager maps, the class token and position embeddings HF leaves at zero, and LRP conserved in
float64 at every layer (InternViT's layer-scaled residuals, the projector, the LM). The shared VLM suites run every
method on it (tests/helpers.py)."""


import numpy as np
import pytest
import torch
from helpers import assert_image_halves_sum_their_cells, assert_raw_attention_is_the_models_own, family_prompts, idefics3, internvl, generation_relevance, schedule_leaving_the_model_as_it_was

from methods_under_test import MAY_VANISH, methods_for

from captum_mm.models import adapter_for

GRID = (8, 8)  # 4 x 4 patches of a 32 x 32 image, shuffled 2 x 2 into 4 x 4 image tokens


def test_schedule_reads_the_vision_tower_then_the_lm_and_leaves_the_model_as_it_was():
    model = internvl()
    batch = family_prompts("internvl", batch=2)
    schedule, record = schedule_leaving_the_model_as_it_was(model, batch, [[5], [6]])
    assert [call.name for call in record.calls] == [
        "model.vision_tower.encoder.layer.0.attention", "model.vision_tower.encoder.layer.1.attention",
        "model.language_model.layers.0.self_attn", "model.language_model.layers.1.self_attn"]
    assert [(e.query, e.key) for e in schedule.events] == [("vision", "vision")] * 2 + [("sequence", "sequence")] * 2
    assert schedule.sizes["vision"] == 65  # the class token and 64 patches


def test_one_patch_changes_only_the_token_its_pixel_shuffle_makes_the_same_block_as_idefics3s():
    """HF's InternVL pixel shuffle names its axes width and height, but its two permutes cancel: the token made from
    a patch is the one of row-major 2 x 2 blocks, as Idefics3's (a transpose would put the patch in token 4)."""
    model = internvl(vision_layers=0)  # no vision layer: a patch reaches only the image token shuffled from it
    batch = family_prompts("internvl", batch=1)
    changed = batch["pixel_values"].clone()
    changed[0, :, 0:4, 8:12] += 1.0  # the patch in row 0, column 2 of the grid
    with torch.no_grad():
        before, after = (model.model.get_image_features(pixels).pooler_output for pixels in (batch["pixel_values"], changed))
    assert (before - after).abs().sum(-1).flatten().nonzero().flatten().tolist() == [1]
    token_map = adapter_for(model).token_map(GRID)
    assert token_map[1].reshape(GRID).nonzero().tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]
    assert (token_map.sum(1) == 1).all() and (token_map[token_map > 0] == 0.25).all()
    torch.testing.assert_close(token_map, adapter_for(idefics3(vision_layers=0, layers=1)).token_map(GRID))


@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qk-norm"])
def test_raw_attention_image_is_the_lm_row_times_the_pixel_shuffle_times_the_last_vision_map(qk_norm):
    model = internvl(qk_norm=qk_norm)
    batch = family_prompts("internvl", batch=1)
    arguments = {"input_ids": torch.cat([batch["input_ids"], torch.tensor([[5]])], dim=1), "pixel_values": batch["pixel_values"]}
    last = model.model.vision_tower.encoder.layer[-1].attention
    assert_raw_attention_is_the_models_own(model, batch, arguments, last, slice(1, None))  # the class token left out


def test_the_class_token_and_position_embeddings_hf_leaves_at_zero_change_the_logits_once_drawn():
    batch = family_prompts("internvl", batch=1)
    model = internvl()
    embeddings = model.model.vision_tower.embeddings
    with torch.no_grad():
        drawn = model(**batch).logits
        for parameter in (embeddings.cls_token, embeddings.position_embeddings):
            kept = parameter.clone()
            parameter.zero_()
            assert not torch.allclose(model(**batch).logits, drawn)
            parameter.copy_(kept)
        assert not torch.allclose(model(**dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]))).logits, drawn)


@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qk-norm"])
def test_lrp_conserves_relevance_at_every_layer_through_the_layer_scales_and_the_projector_in_float64(qk_norm):
    """The token's 1 reaches every LM layer's input whole; what reaches the image tokens passes the projector
    (MLP, LayerNorm), the pixel shuffle and each InternViT layer (its branches scaled by lambda_1, lambda_2; with
    InternViT-6B's QK-norm, RMSNorms over all heads' queries and keys, passed through) whole."""
    model = internvl(qk_norm=qk_norm).double()
    vision, projector = model.model.vision_tower, model.model.multi_modal_projector
    for layer in vision.encoder.layer:  # distinct layer scales per channel, not HF's uniform 0.1
        torch.nn.init.normal_(layer.lambda_1, std=0.5)
        torch.nn.init.normal_(layer.lambda_2, std=0.5)
    batch = family_prompts("internvl", batch=2)
    batch["pixel_values"] = batch["pixel_values"].double()
    language = model.model.language_model
    cuts = {f"lm {k}": (layer, "input") for k, layer in enumerate(language.layers)}
    cuts.update({"image tokens": (projector, "output"), "projector": (projector, "input"),
                 "projector mlp": (projector.linear_1, "input")})
    cuts.update({f"vision {k}": (layer, "input") for k, layer in enumerate(vision.encoder.layer)})
    relevance = generation_relevance(model, batch, [[5], [6]], cuts)
    for k in range(len(language.layers)):
        torch.testing.assert_close(relevance[f"lm {k}"], torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-6)
    assert (relevance["image tokens"].abs() > 1e-3).all()
    for name in ("projector", "projector mlp", *(f"vision {k}" for k in range(len(vision.encoder.layer)))):
        torch.testing.assert_close(relevance[name], relevance["image tokens"], rtol=0, atol=1e-6, msg=name)


def test_qk_norm_spanning_all_heads_is_followed_by_every_method():
    # the norms (randomised weights) change what the model computes; every method runs on it
    model = internvl(qk_norm=True)
    batch = family_prompts("internvl", batch=2)
    with torch.no_grad():
        plain = internvl(qk_norm=False)
        plain.load_state_dict(model.state_dict(), strict=False)
        assert not torch.allclose(model(**batch).logits, plain(**batch).logits)
    for key, method in methods_for("internvl").items():
        image = method(model).explain(batch, continuation=[[5], [6]]).image
        assert torch.isfinite(image).all() and (key in MAY_VANISH or image.abs().sum() > 0), key


def _model_and_processor(tokenizer):
    """A tiny model on the MiniLM WordPiece vocabulary ([unused0] the image token) and a hand-made processor: the
    image resized to 32 x 32 (an 8 x 8 patch grid, 16 image tokens) after a [CLS], then the question."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    image_token = tokenizer.convert_tokens_to_ids("[unused0]")
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=4)
    text = dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, eos_token_id=tokenizer.sep_token_id)
    model = InternVLForConditionalGeneration(InternVLConfig(vision_config=vision, text_config=text,
                                                            image_token_id=image_token)).eval()
    question = tokenizer.encode("what color is the circle?", add_special_tokens=False)

    def processor(image):
        pixels = torch.tensor(np.asarray(image.resize((32, 32)), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        ids = torch.tensor([[tokenizer.cls_token_id] + [image_token] * 16 + question])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}

    return model, processor


def test_captums_llm_api_sums_the_patch_relevance_each_image_segment_covers():
    assert_image_halves_sum_their_cells(_model_and_processor, 64, 64)
