"""AttnLRP on VLMs whose images come as flattened patches (Qwen2/2.5/3-VL), tiles (LLaVA-NeXT/OneVision, Mllama) or
several images a prompt (Idefics3/SmolVLM; LLaVA's ``[images, C, H, W]``): CP-LRP conserves the logit in float64 over text, image and generated
tokens, and the relevance at ``pixel_values`` is pooled onto the image output as worked out by hand."""

import pytest
import torch

from captum_mm.attr import AttnLRP
from captum_mm.attr._inputs import _placed
from captum_mm.attr.engine import forward_pass
from captum_mm.generation import generation_forward
from helpers import IMAGE_TOKEN, MLLAMA_IMAGE_TOKEN, VLMS, family_prompts, mllama, mllama_prompts, vlm_prompts

#: What absorbs relevance in these models, zeroed for conservation: biases, position and tile embeddings, class tokens
#: (InternViT's ``cls_token``: dropped from the image tokens, but attended to) and LLaVA-NeXT's newline token
#: (parameters entering the sequence, not inputs).
ABSORBING = ("bias", "pos_embed", "position_embedding", "positional_embedding.embedding", "tile_embedding",
             "class_embedding", "cls_token", "image_newline")
#: LLaVA-NeXT/OneVision on a 32 x 32 image: all of the 4 x 4 high-resolution cells kept (nothing cropped by
#: ``unpad_image`` carries relevance out of the output), base image 4 tokens; NeXT's rows of 4 tokens and a newline
#: (20), OneVision's shrunk to 2 x 2 (6).
UNCROPPED_TOKENS = {"llava_next": 24, "llava_onevision": 10}
#: Gemma 3's post-norms take the branches' outputs (median |x| 5e-4 after the MLP at HF's init), where the identity
#: rule's 1e-9 stabiliser is ~2e-6 of each element's relevance: 1.0e-6 measured (1e-12 with a 1e-15 stabiliser).
RTOL = {"gemma3_vl": 1e-5}


def _prompts(family):
    if family == "mllama":
        return mllama_prompts(batch=2)
    if family == "llava":  # two images a prompt
        return dict(vlm_prompts(batch=2, image_tokens=32), pixel_values=torch.randn(4, 3, 32, 32))
    if family in UNCROPPED_TOKENS:
        return dict(vlm_prompts(batch=2, image_tokens=UNCROPPED_TOKENS[family]), pixel_values=torch.randn(2, 5, 3, 16, 16),
                    image_sizes=torch.tensor([[32, 32]] * 2))
    return family_prompts(family, batch=2)


def _with_continuation(batch, tokens):
    """The prompts followed by ``tokens``: ids, mask and token types extended; Mllama's last cross-attention row
    repeated (as its generate does)."""
    extended = dict(batch, input_ids=torch.cat([batch["input_ids"], tokens], 1),
                    attention_mask=torch.cat([batch["attention_mask"], torch.ones_like(tokens)], 1))
    if "mm_token_type_ids" in batch:
        extended["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(tokens)], 1)
    if "image_grid_thw" not in batch:  # positions as generation numbers them past left padding (Qwen: its own 3-D ones)
        positions = extended["attention_mask"].cumsum(-1) - 1
        extended["position_ids"] = positions.masked_fill(extended["attention_mask"] == 0, 1)
    if "cross_attention_mask" in batch:
        mask = batch["cross_attention_mask"]
        extended["cross_attention_mask"] = torch.cat([mask, mask[:, -1:].expand(-1, tokens.shape[1], -1, -1)], 1)
    return extended


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_next", "llava_onevision", "idefics3", "mllama",
                                    "llava", "paligemma", "smolvlm", "internvl", "gemma3_vl"])
def test_cp_lrp_conserves_the_logit_over_text_image_and_generated_tokens(family):
    """Nothing absorbing relevance: each generated token's logit is the sum of its text, image and earlier generated
    tokens' relevance (the image read at ``pixel_values``, through the vision tower and its merger or tiles)."""
    torch.manual_seed(0)
    model = mllama() if family == "mllama" else VLMS[family]()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part in name for part in ABSORBING):
                parameter.zero_()
    model = model.double()
    batch = {name: value.double() if value.is_floating_point() else value for name, value in _prompts(family).items()}
    image_token = MLLAMA_IMAGE_TOKEN if family == "mllama" else IMAGE_TOKEN
    explanation = AttnLRP(model, constant_attention=True).explain(
        batch, generate=True, generation_args={"max_new_tokens": 2, "do_sample": False, "suppress_tokens": [image_token]})
    tokens, start = explanation.generated_ids, batch["input_ids"].shape[1] - 1
    with torch.no_grad():
        logits = model(**_with_continuation(batch, tokens)).logits[:, start:start + 2].gather(-1, tokens[..., None])[..., 0]
    image = explanation.image.flatten(2).sum(-1)
    assert image.abs().min() > 0 and explanation.text.abs().sum() > 0
    total = explanation.text.sum(-1) + image + explanation.generated.sum(-1)
    torch.testing.assert_close(total, logits, rtol=RTOL.get(family, 1e-6), atol=0)


def _pixel_output(model, batch, relevance):
    """The image output AttnLRP reads from ``relevance`` at ``pixel_values`` (one prompt, one explained token)."""
    forward, arguments, target = generation_forward(model, batch, [[5]], False, None)
    with forward_pass(model, forward, arguments, target=target, needs=AttnLRP.needs) as run:
        pooled = run.adapter.pixel_pooling(run.record.arguments)(relevance)
        return _placed(pooled["image"], run.schedule.outputs["image"])[0]


def _per_patch(values, patch):
    """Pixel relevance whose ``patch x patch`` cells (over 3 channels) sum to ``values`` ``[..., h, w]``."""
    spread = values.repeat_interleave(patch, -2).repeat_interleave(patch, -1) / (3 * patch * patch)
    return spread.unsqueeze(-3).expand(*values.shape[:-2], 3, *spread.shape[-2:])


#: The processor's rows of an 8 x 8 grid: 2 x 2 blocks row by row, each block's patches row by row; the cells of rows
#: 0 ... 7 (blocks 0 and 1) and 16 ... 19 (block 4).
BLOCK_ORDER_CORNER = torch.tensor([[0.0, 1, 4, 5], [2, 3, 6, 7], [16, 17, 20, 21], [18, 19, 22, 23]])


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_flattened_patches_are_summed_and_placed_on_their_grid_cells(family):
    """Row ``r`` of ``pixel_values`` gets relevance ``r`` (over its 96 values): the grid shows the processor's block
    order, whatever order the tower (Qwen2.5-VL's windows) reads the patches in."""
    batch = family_prompts(family, batch=1)
    relevance = torch.arange(64.0)[:, None].expand(64, 96) / 96
    image = _pixel_output(VLMS[family](), batch, relevance)
    assert torch.equal(image[:4, :4], BLOCK_ORDER_CORNER)
    assert torch.equal(image, torch.arange(64.0).reshape(4, 4, 2, 2).permute(0, 2, 1, 3).reshape(8, 8))


def test_tiles_are_summed_per_patch_and_spread_over_the_original_image():
    """A 16 x 32 image: a 4 x 4 high-resolution grid of 2 x 2 tiles (2 x 2 patches each), rows 1 and 2 the image's.
    Tile ``t``'s patch ``p`` gets ``10 t + p``; the base image's top-left patch 100, spread over the two cells it
    covers (50 each)."""
    batch = family_prompts("llava_next", batch=1)
    patches = torch.zeros(5, 2, 2)
    patches[1:] = 10 * torch.arange(1.0, 5)[:, None, None] + torch.arange(4.0).reshape(2, 2)
    patches[0, 0, 0] = 100
    image = _pixel_output(VLMS["llava_next"](), batch, _per_patch(patches, 8)[None])
    torch.testing.assert_close(image, torch.tensor([[62.0, 63, 22, 23], [30, 31, 40, 41]]), rtol=1e-6, atol=1e-5)


def test_several_images_a_prompt_each_on_its_own_grid():
    """LLaVA, two images in one prompt (4 x 4 grids of 8 x 8 patches): each image's patch sums on its own grid."""
    batch = dict(vlm_prompts(batch=1, image_tokens=32), pixel_values=torch.randn(2, 3, 32, 32))
    cells = torch.arange(16.0).reshape(4, 4)
    image = _pixel_output(VLMS["llava"](), batch, _per_patch(torch.stack([cells, cells + 100]), 8))
    torch.testing.assert_close(image, torch.stack([cells, cells + 100]))


def test_padding_images_are_left_out_and_tiles_masked():
    """Idefics3: an all-zero (padding) image before the prompt's image is skipped, as the model skips it. Mllama: the
    processor's padding tile reads 0 even with relevance given."""
    batch = family_prompts("idefics3", batch=1)
    pixels = torch.zeros(1, 2, 3, 32, 32)
    pixels[0, 1] = batch["pixel_values"][0, 0]
    cells = torch.arange(64.0).reshape(8, 8)
    relevance = torch.stack([_per_patch(cells + 100, 4), _per_patch(cells, 4)])[None]
    torch.testing.assert_close(_pixel_output(VLMS["idefics3"](), dict(batch, pixel_values=pixels), relevance), cells)
    batch = {name: value[:1] for name, value in mllama_prompts(batch=1).items()}
    batch["aspect_ratio_mask"] = torch.tensor([[[1, 0]]])
    tiles = torch.tensor([[[[0.0, 1], [2, 3]], [[10, 11], [12, 13]]]])  # [images, tiles, 2, 2]
    image = _pixel_output(mllama(), batch, _per_patch(tiles, 8)[None])
    torch.testing.assert_close(image, torch.tensor([[[0.0, 1], [2, 3]], [[0, 0], [0, 0]]]))
