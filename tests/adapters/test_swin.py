"""Swin: the schedule by stage, windows' maps laid out on token positions (shift and padding undone), patch
merging as a token map, raw attention by hand from the model's own eager maps, the pooled readout."""

import torch
from transformers import SwinConfig, SwinModel

from captum_mm.adapters.swin import merge_map
from captum_mm.attr import AttentionRollout, GenericAttention, RawAttention
from captum_mm.attr.engine import forward_pass
from helpers import swin, swin_case


def schedule_of(model, pixels):
    with forward_pass(model, model, (pixels,)) as forward:
        return forward.schedule, forward.record


def test_schedule_is_eq6_per_layer_per_stage_read_from_the_pooled_row_through_the_merging():
    case = swin_case(layers=4)
    schedule, record = schedule_of(case.model, case.inputs[0])
    assert [tuple((e.query, e.key) for e in step) for step in schedule.steps] == [(("stage0", "stage0"),)] * 2 + [
        (("stage1", "stage1"),)] * 2
    assert schedule.sizes == {"stage0": 16, "stage1": 4}
    readout = schedule.outputs["image"]
    assert readout.pair == ("stage1", "stage1") and readout.grid == (4, 4)
    assert torch.equal(readout.row_weights, torch.full((3, 4), 0.25, dtype=torch.float64))
    assert [stage.pair for stage in readout.through.chain()] == [("stage0", "stage0")]
    assert readout.through.token_map.shape == (4, 16)
    assert all(call.probs.shape == (3, heads, size, size) for call, heads, size in
               zip(record.calls, (2, 2, 4, 4), (16, 16, 4, 4)))


def test_merging_spreads_each_merged_token_evenly_over_its_real_cells():
    token_map = merge_map((5, 5))  # padded to 6 x 6, merged to 3 x 3
    assert token_map.shape == (9, 25)
    assert torch.equal(token_map[0].nonzero()[:, 0], torch.tensor([0, 1, 5, 6])) and bool((token_map[0, [0, 1, 5, 6]] == 0.25).all())
    assert torch.equal(token_map[2].nonzero()[:, 0], torch.tensor([4, 9])) and bool((token_map[2, [4, 9]] == 0.5).all())
    assert torch.equal(token_map[8].nonzero()[:, 0], torch.tensor([24])) and float(token_map[8, 24]) == 1.0


def by_hand(windows, grid, window, shift):
    """A layer's windows' maps ``[B * windows, H, w^2, w^2]`` on the ``grid``'s tokens, entry by entry: window
    ``(a, b)``'s position ``(p, q)`` is padded-grid cell ``(a w + p, b w + q)`` rolled back by ``shift``."""
    padded = [-(-side // window) * window for side in grid]
    per_row = padded[1] // window
    batch = windows.shape[0] // (padded[0] // window * per_row)
    size = grid[0] * grid[1]
    full = windows.new_zeros(batch, windows.shape[1], size, size)

    def token(index, position):
        row = ((index // per_row) * window + position // window + shift) % padded[0]
        column = ((index % per_row) * window + position % window + shift) % padded[1]
        return row * grid[1] + column if row < grid[0] and column < grid[1] else None

    count = windows.shape[0] // batch
    for index in range(count):
        for i in range(window * window):
            for j in range(window * window):
                query, key = token(index, i), token(index, j)
                if query is not None and key is not None:
                    full[:, :, query, key] = windows[index::count][:, :, i, j]
    return full


def test_window_maps_and_raw_attention_by_hand_from_the_models_eager_maps():
    """28 x 36 px: a 7 x 9 grid in windows of 4 (padded to 8 x 12, the second layer shifted by 2), merged (padded)
    to 4 x 5, in windows of 4 (padded to 4 x 8) unshifted (Swin clamps the shift). HF returns each stage's last
    layer's windows' maps."""
    model, pixels = swin(image_size=28, window=4).double(), torch.randn(2, 3, 28, 36, dtype=torch.float64)
    model.set_attn_implementation("eager")
    own = model(pixels, output_attentions=True).attentions
    _, record = schedule_of(model, pixels)
    stage0, stage1 = by_hand(own[0], (7, 9), 4, 2), by_hand(own[1], (4, 5), 4, 0)
    assert torch.allclose(record.calls[1].probs, stage0) and torch.allclose(record.calls[3].probs, stage1)
    assert torch.allclose(stage0.sum(-1)[:, :, 0], torch.ones(2, 2, dtype=torch.float64))  # window 0: no padding
    pooled = stage1.mean(1).mean(1)  # the mean row of the head-mean map
    expected = torch.einsum("bn,bnm->bm", pooled @ merge_map((7, 9)), stage0.mean(1)).reshape(2, 7, 9)
    assert torch.allclose(RawAttention(model).explain((pixels,)).image, expected)


def test_raw_attention_and_rollout_by_hand_through_two_mergings():
    """Three stages of one layer (8 x 8, 4 x 4, 2 x 2 tokens): the readout continues through both mergings."""
    model, pixels = swin((1, 1, 1), image_size=32).double(), torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model.set_attn_implementation("eager")
    maps = [by_hand(own, (side, side), 2, 0).mean(1) for own, side in zip(model(pixels, output_attentions=True).attentions, (8, 4, 2))]
    merges = [merge_map((8, 8)), merge_map((4, 4))]
    rolled = [(m + torch.eye(m.shape[-1], dtype=m.dtype)) / 2 for m in maps]  # rows of A sum to 1: no padding

    def composed(stages):
        values = torch.full((2, 4), 0.25, dtype=torch.float64)[:, None] @ stages[2]
        return ((values @ merges[1] @ stages[1]) @ merges[0] @ stages[0])[:, 0].reshape(2, 8, 8)

    assert torch.allclose(RawAttention(model).explain((pixels,)).image, composed(maps))
    assert torch.allclose(AttentionRollout(model).explain((pixels,)).image, composed(rolled))


def test_relative_position_tables_are_random_and_matter_and_the_image_changes_the_logits():
    model, pixels = swin(), torch.randn(2, 3, 16, 16)
    tables = [p for name, p in model.named_parameters() if name.endswith("relative_position_bias_table")]
    assert tables and all(bool(table.abs().min() > 0) for table in tables)
    logits = model(pixels).logits
    assert not torch.allclose(logits[0], logits[1])
    with torch.no_grad():
        for table in tables:
            table.zero_()
    assert not torch.allclose(model(pixels).logits, logits)


def test_a_swin_model_of_ones_own_explains_its_pooled_output():
    config = SwinConfig(image_size=16, patch_size=4, embed_dim=16, depths=[2, 1], num_heads=[2, 4], window_size=2)
    model = SwinModel(config).eval()
    explanation = GenericAttention(model).explain((torch.randn(2, 3, 16, 16),), target=3)
    assert explanation.image.shape == (2, 4, 4) and bool(torch.isfinite(explanation.image).all())
