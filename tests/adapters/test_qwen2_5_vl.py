"""Qwen2.5-VL: the windowed vision tower's maps (block-diagonal per image), its window order undone on the patch
grid and in the merger's token map, raw attention against the model's own maps, and LRP conserved in float64."""

import numpy as np
import pytest
import torch
from helpers import (IMAGE_TOKEN, assert_image_halves_sum_their_cells, assert_same_state, family_prompts, generation_relevance,
                     model_state, qwen2_5_vl, qwen_eager_output, qwen_vision_inputs)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

from captum_mm.attr import GenericAttention, RawAttention
from captum_mm.attr.engine import forward_pass
from captum_mm.generation import generation_forward
from captum_mm.models import adapter_for

GRID = (8, 8)


def _schedule_and_record(model, batch, continuation):
    forward, arguments, target = generation_forward(model, batch, continuation, False, None)
    with forward_pass(model, forward, arguments, target=target, needs=RawAttention.needs) as run:
        return run.schedule, run.record


def _hand_maps(kept, k):
    """``[images, H, 64, 64]``: softmax(q k^T / sqrt(d)) inside each window (``cu_seqlens``), zero outside."""
    q, key, _ = kept[("qkv", k)].reshape(-1, 3, 4, 8).permute(1, 0, 2, 3).unbind(0)
    q, key = apply_rotary_pos_emb_vision(q, key, *kept[("kw", k)]["position_embeddings"])
    scores = torch.einsum("nhd,mhd->hnm", q, key) / 8 ** 0.5
    full = torch.zeros_like(scores)
    bounds = kept[("kw", k)]["cu_seqlens"].tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        full[:, start:end, start:end] = scores[:, start:end, start:end].softmax(-1)
    return torch.stack([full[:, i * 64:(i + 1) * 64, i * 64:(i + 1) * 64] for i in range(full.shape[1] // 64)])


def test_windowed_maps_are_recorded_block_diagonal_per_image_and_the_model_left_as_it_was():
    model = qwen2_5_vl()
    batch = family_prompts("qwen2_5_vl", batch=2)
    kept = qwen_vision_inputs(model, batch, (0, 1))
    assert kept[("kw", 0)]["cu_seqlens"].diff().tolist() == [36, 12, 12, 4] * 2  # uneven windows in block 0
    assert kept[("kw", 1)]["cu_seqlens"].diff().tolist() == [64, 64]  # full attention in block 1
    before = model_state(model)
    schedule, record = _schedule_and_record(model, batch, [[5], [6]])
    assert_same_state(before, model_state(model))
    vision = [call for call in record.calls if call.spec.roles == (("vision", "vision"),)]
    assert [call.name for call in vision] == ["model.visual.blocks.0.attn", "model.visual.blocks.1.attn"]
    for k, call in enumerate(vision):
        torch.testing.assert_close(call.probs, _hand_maps(kept, k))
    assert (vision[0].probs[0, :, :36, 36:] == 0).all() and (vision[1].probs > 0).all()
    assert schedule.sizes["vision"] == 64 and [e.query for e in schedule.events] == ["vision"] * 2 + ["sequence"] * 2


def _cells_and_tokens_seen_in_the_model(model, batch):
    """Read off the model itself, for its window-ordered vision sequence: each position's grid cell (matching the
    first block's input rows to the patch embeddings of the processor's rows) and the image token made from it
    (matching the merger's rows to the tower's reordered output)."""
    visual, kept = model.model.visual, {}
    handles = [visual.patch_embed.register_forward_hook(lambda m, a, o: kept.__setitem__("embedded", o)),
               visual.blocks[0].register_forward_pre_hook(lambda m, a: kept.__setitem__("ordered", a[0])),
               visual.merger.register_forward_hook(lambda m, a, o: kept.__setitem__("merged", o))]
    try:
        with torch.no_grad():
            tokens = visual(batch["pixel_values"][:64], grid_thw=batch["image_grid_thw"][:1]).pooler_output
    finally:
        for handle in handles:
            handle.remove()
    rows = torch.cdist(kept["ordered"], kept["embedded"]).argmin(1)  # the processor's row at each position
    block, within = rows // 4, rows % 4  # the processor's rows: 2 x 2 blocks, row-major, each row-major
    cells = (2 * (block // 4) + within // 2) * GRID[1] + 2 * (block % 4) + within % 2
    token_of_block = torch.cdist(kept["merged"], tokens).argmin(1)  # merger row (window-ordered block) -> token
    return cells, token_of_block.repeat_interleave(4)


def test_window_order_is_undone_on_the_patch_grid_and_in_the_token_map():
    model = qwen2_5_vl()
    batch = family_prompts("qwen2_5_vl", batch=1)
    cells, token_of_position = _cells_and_tokens_seen_in_the_model(model, batch)
    assert not torch.equal(token_of_position, torch.arange(64) // 4)  # the windows do reorder
    adapter = adapter_for(model)
    assert torch.equal(adapter.patch_cells(GRID), cells)
    expected = torch.zeros(16, 64, dtype=torch.float64)
    expected[token_of_position, torch.arange(64)] = 0.25
    torch.testing.assert_close(adapter.token_map(GRID), expected)


def test_one_patch_changes_only_its_image_token_and_its_relevance_lands_on_its_cell():
    # no vision block: a patch reaches only the image token merged from it
    model = qwen2_5_vl(vision_layers=0)
    batch = family_prompts("qwen2_5_vl", batch=1)
    changed = dict(batch, pixel_values=batch["pixel_values"].clone())
    changed["pixel_values"][13] += 1.0  # the processor's row 13: block 3 (cells (0, 6), (0, 7), (1, 6), (1, 7)), its second
    visual = model.model.visual
    with torch.no_grad():
        before, after = (visual(b["pixel_values"], grid_thw=b["image_grid_thw"]).pooler_output for b in (batch, changed))
    assert (before - after).abs().sum(-1).nonzero().flatten().tolist() == [3]
    adapter = adapter_for(model)
    spread = torch.zeros(64, dtype=torch.float64).index_add_(0, adapter.patch_cells(GRID), adapter.token_map(GRID)[3])
    assert spread.reshape(GRID).nonzero().tolist() == [[0, 6], [0, 7], [1, 6], [1, 7]]


def test_raw_attention_image_is_the_lm_row_times_the_token_map_times_the_last_vision_map():
    model = qwen2_5_vl()
    batch = family_prompts("qwen2_5_vl", batch=1)
    explanation = RawAttention(model).explain(batch, continuation=[[5]])
    vision = _hand_maps(qwen_vision_inputs(model, batch, (1,)), 1)[0].mean(0)  # the last block's map, window order
    output = qwen_eager_output(model, batch, 5)
    with torch.no_grad():  # the image reaches the logits (no zero-initialised projection hides it)
        other = model(**dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]))).logits
    assert not torch.allclose(other[0, -1], output.logits[0, -2])
    language = output.attentions[-1][0].mean(0)[-2]  # the LM's last layer, the row predicting the token
    cells, token_of_position = _cells_and_tokens_seen_in_the_model(model, batch)
    per_position = (language[2:18][token_of_position] / 4) @ vision
    expected = torch.zeros(64).index_copy(0, cells, per_position)
    torch.testing.assert_close(explanation.image[0, 0].flatten(), expected)


def test_lrp_conserves_relevance_at_every_layer_in_float64():
    """The token's 1 reaches every LM layer's input whole; what reaches the merger's input passes each vision
    block whole (windowed and full attention), as it passes the merger (its RMSNorm, its MLP: alpha-beta, bias left out)."""
    model = qwen2_5_vl().double()
    for parameter in model.model.visual.merger.parameters():  # RMSNorm's ones and the default biases, drawn afresh
        torch.nn.init.normal_(parameter, std=0.2)
    batch = family_prompts("qwen2_5_vl", batch=2)
    batch["pixel_values"] = batch["pixel_values"].double()
    visual, language = model.model.visual, model.model.language_model
    cuts = {f"lm {k}": (layer, "input") for k, layer in enumerate(language.layers)}
    cuts.update({"merger": (visual.merger, "input"), "merger mlp": (visual.merger.mlp, "input"),
                 "image tokens": (visual.merger, "output")})
    cuts.update({f"block {k}": (block, "input") for k, block in enumerate(visual.blocks)})
    relevance = generation_relevance(model, batch, [[5], [6]], cuts)
    per_image = {name: values.reshape(2, -1).sum(1) for name, values in relevance.items() if not name.startswith("lm")}
    for k in range(len(language.layers)):
        torch.testing.assert_close(relevance[f"lm {k}"], torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (per_image["merger"].abs() > 1e-3).all()
    for name in ("merger mlp", "image tokens"):
        torch.testing.assert_close(per_image[name], per_image["merger"], atol=1e-6, rtol=0)
    for k in range(len(visual.blocks)):
        torch.testing.assert_close(per_image[f"block {k}"], per_image["merger"], atol=1e-6, rtol=0)


def test_attribute_explains_the_next_token_over_the_prompt_with_the_image_as_an_argument():
    # the flattened patches of all images are no per-sample input: attribute explains the prompt's tokens
    model = qwen2_5_vl()
    batch = family_prompts("qwen2_5_vl")

    def forward(ids, pixels, grid, types, mask):
        return model(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, mm_token_type_ids=types, attention_mask=mask).logits

    rest = tuple(batch[name] for name in ("pixel_values", "image_grid_thw", "mm_token_type_ids", "attention_mask"))
    with torch.no_grad():
        logits = model(**batch).logits[:, -1]
    next_tokens = logits.index_fill(-1, torch.tensor([IMAGE_TOKEN]), -torch.inf).argmax(-1)  # a token, not the image's
    text = GenericAttention(forward, model).attribute(batch["input_ids"], target=next_tokens, additional_forward_args=rest)
    torch.testing.assert_close(text, GenericAttention(model).explain(batch, continuation=next_tokens[:, None]).text[:, 0])


def _model_and_processor(tokenizer):
    """A tiny Qwen2.5-VL on the WordPiece vocabulary ([unused0] the image token) and a hand-made processor: the image
    resized to 32 x 32, cut into the processor's rows (2 x 2 blocks of 4 x 4 patches, each block row-major; the
    temporal patch doubled) after a [CLS], then the question."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    image_token = tokenizer.convert_tokens_to_ids("[unused0]")
    vision = dict(depth=2, hidden_size=32, out_hidden_size=16, intermediate_size=48, num_heads=4, patch_size=4,
                  spatial_merge_size=2, window_size=24, fullatt_block_indexes=[1])
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, pad_token_id=0, eos_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [1, 1, 2]})
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=image_token)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    question = tokenizer.encode("what color is the circle?", add_special_tokens=False)

    def processor(image):
        pixels = torch.tensor(np.asarray(image.resize((32, 32)), dtype=np.float32) / 255.0).permute(2, 0, 1)
        patches = pixels.reshape(3, 4, 2, 4, 4, 2, 4).permute(1, 4, 2, 5, 0, 3, 6)  # block row, column, dr, dc, channel, y, x
        patches = patches[..., None, :, :].expand(-1, -1, -1, -1, -1, 2, -1, -1).reshape(64, 3 * 2 * 4 * 4)
        ids = torch.tensor([[tokenizer.cls_token_id] + [image_token] * 16 + question])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": patches,
                "image_grid_thw": torch.tensor([[1, 8, 8]]), "mm_token_type_ids": (ids == image_token).long()}

    return model, processor


def test_captums_llm_api_sums_the_patch_relevance_each_image_segment_covers():
    assert assert_image_halves_sum_their_cells(_model_and_processor, 64, 64).shape == (2, 8, 8)  # [2 tokens, 8, 8]


def test_windows_are_joined_block_diagonally_into_maps_and_a_window_crossing_a_map_is_an_error():
    from captum_mm.capture.windows import join_windows

    first, second, third = torch.full((1, 1, 1, 1), 1.0), torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 3, 3), 3.0)
    joined = join_windows([first, second, third], tokens=3)  # two maps: [first | second], [third]
    assert joined.shape == (2, 1, 3, 3)
    assert joined[0, 0].tolist() == [[1, 0, 0], [0, 2, 2], [0, 2, 2]] and (joined[1] == 3).all()
    with pytest.raises(ValueError, match="An attention window of 2 tokens crosses the end of a map of 2 tokens"):
        join_windows([first, second], tokens=2)
    with pytest.raises(ValueError, match=r"The attention windows \(\[1, 2\] tokens\) do not fill maps of 4 tokens"):
        join_windows([first, second], tokens=4)
