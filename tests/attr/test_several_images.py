"""Several images a prompt (docs/METHOD.md, "Several images a prompt"): a prompt's images are laid out one after the
other in the vision modality, each image's vision maps a diagonal block, and the image output gains an images axis,
``[B, K, images, h, w]``, zero at the images a prompt does not hold. Batched with different image counts == each
prompt alone."""

import pytest
import torch
from helpers import (
    ALONE_TOLERANCE,
    IMAGE_TOKEN,
    LM_VOCAB,
    QWEN_PATCH_VALUES,
    QWEN_PATCHES,
    VLMS,
    blip2,
    in_dtype,
)
from methods_under_test import METHODS

from captum_mm.attr import GenericAttention, RawAttention

#: The families whose HF class reads several images a prompt, and one image's image tokens.
SEVERAL = {"llava": 16, "paligemma": 16, "idefics3": 16, "smolvlm": 16, "qwen2_vl": 16, "qwen2_5_vl": 16, "qwen3_vl": 16,
           "gemma3_vl": 16, "internvl": 16}
QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
CONTINUATION = [[5, 6], [7]]
TEXT = 3


def prompts(family: str, counts=(2, 1), seed: int = 0):
    """Left-padded prompts ``[text, (image tokens, text) per image]``: prompt ``b`` holds ``counts[b]`` images."""
    generator = torch.Generator().manual_seed(seed)
    tokens = SEVERAL[family]
    length = TEXT + max(counts) * (tokens + 1)
    ids, mask = torch.zeros(len(counts), length, dtype=torch.long), torch.zeros(len(counts), length, dtype=torch.long)
    for b, count in enumerate(counts):
        own = [int(t) for t in torch.randint(4, LM_VOCAB - 2, (TEXT,), generator=generator)]
        for _ in range(count):
            own += [IMAGE_TOKEN] * tokens + [int(torch.randint(4, LM_VOCAB - 2, (1,), generator=generator))]
        ids[b, length - len(own):], mask[b, length - len(own):] = torch.tensor(own), 1
    batch = {"input_ids": ids, "attention_mask": mask}
    images = sum(counts)
    if family in QWEN:
        batch.update(pixel_values=torch.randn(images * QWEN_PATCHES, QWEN_PATCH_VALUES, generator=generator),
                     image_grid_thw=torch.tensor([[1, 8, 8]] * images), mm_token_type_ids=(ids == IMAGE_TOKEN).long())
    elif family in ("idefics3", "smolvlm"):  # per prompt, padded with all-zero images
        pixels = torch.zeros(len(counts), max(counts), 3, 32, 32)
        for b, count in enumerate(counts):
            pixels[b, :count] = torch.randn(count, 3, 32, 32, generator=generator)
        batch["pixel_values"] = pixels
    else:
        batch["pixel_values"] = torch.randn(images, 3, 32, 32, generator=generator)
    if family == "gemma3_vl":
        batch["token_type_ids"] = (ids == IMAGE_TOKEN).long()
    return batch


def alone(family: str, batch, counts, index: int):
    """Prompt ``index`` of ``batch`` alone, its padding removed."""
    real = batch["attention_mask"][index].bool()
    single = {name: value[index : index + 1, real] for name, value in batch.items() if name in ("input_ids", "attention_mask",
                                                                                             "mm_token_type_ids", "token_type_ids")}
    first, count = sum(counts[:index]), counts[index]
    if family in QWEN:
        single.update(pixel_values=batch["pixel_values"][first * QWEN_PATCHES : (first + count) * QWEN_PATCHES],
                      image_grid_thw=batch["image_grid_thw"][first : first + count])
    elif family in ("idefics3", "smolvlm"):
        single["pixel_values"] = batch["pixel_values"][index : index + 1, :count]
    else:
        single["pixel_values"] = batch["pixel_values"][first : first + count]
    return single


@pytest.mark.parametrize("family", sorted(SEVERAL))
def test_the_image_output_has_an_images_axis_and_each_image_changes_only_its_own_map(family):
    torch.manual_seed(0)
    model = VLMS[family]()
    batch = prompts(family)
    explanation = RawAttention(model).explain(batch, continuation=CONTINUATION)
    image = explanation.image
    assert image.shape[:3] == (2, 2, 2) and image.dim() == 5
    assert image[1, :, 1].abs().sum() == 0  # prompt 1 holds one image
    assert image[0, :, 0].abs().sum() > 0 and image[0, :, 1].abs().sum() > 0 and image[1, :, 0].abs().sum() > 0


#: Every family with GenericAttention; every method on Qwen2.5-VL (windows inside each image, patches out of grid order);
#: AttnLRP on the families whose images are pooled per image (Idefics3: its real images).
CASES = [(family, "generic", torch.float64) for family in sorted(SEVERAL)] + [
    ("qwen2_5_vl", method, torch.float64) for method in sorted(METHODS) if method != "generic"] + [
    (family, "attnlrp", torch.float64) for family in ("llava", "paligemma", "internvl", "idefics3")]


@pytest.mark.parametrize("family, method, dtype", [pytest.param(*case, id=f"{case[0]}-{case[1]}") for case in CASES])
def test_batched_with_different_image_counts_equals_each_prompt_alone(family, method, dtype):
    torch.manual_seed(0)
    counts = (2, 1)
    model = VLMS[family]()
    batch = in_dtype(model, prompts(family, counts), dtype)
    explanation = METHODS[method](model).explain(batch, continuation=CONTINUATION)
    atol, rtol = ALONE_TOLERANCE[dtype]
    for index, tokens in enumerate(CONTINUATION):
        single = METHODS[method](model).explain(alone(family, batch, counts, index), continuation=[tokens])
        steps, real = len(tokens), batch["attention_mask"][index].bool()
        image = explanation.image[index, :steps]
        own = single.image[0] if counts[index] > 1 else single.image[0][:, None]
        torch.testing.assert_close(image[:, : counts[index]], own, atol=atol, rtol=rtol)
        assert image[:, counts[index]:].abs().sum() == 0
        torch.testing.assert_close(explanation.text[index, :steps, real], single.text[0], atol=atol, rtol=rtol)


def test_a_family_reading_one_image_a_prompt_says_so():
    model = blip2()
    batch = prompts("llava")
    with pytest.raises(ValueError, match=r"needs 16 image tokens \(id 3\), one per image feature; samples \[0\] have \[32\] .*; "
                       "Blip2ForConditionalGeneration reads one image per prompt"):
        GenericAttention(model).explain(batch, continuation=CONTINUATION)


def test_image_tokens_that_do_not_make_the_images_given_are_refused():
    model = VLMS["llava"]()
    batch = prompts("llava")
    batch["pixel_values"] = batch["pixel_values"][:2]
    with pytest.raises(ValueError, match=r"make \[2, 1\] images \(16 tokens an image\), 3 in all; the model is given 2"):
        GenericAttention(model).explain(batch, continuation=CONTINUATION)


def test_raw_attention_reads_each_image_through_its_own_vision_map():
    # hand-composed from the model's own eager maps (head means): the LM's last layer at the row predicting the token,
    # over image i's 16 tokens, times the last used vision layer's map of image i ([CLS] dropped)
    torch.manual_seed(0)
    model = VLMS["llava"](vision_layers=3, feature_layer=-2)
    batch = prompts("llava", counts=(2,))
    explanation = RawAttention(model).explain(batch, continuation=[[5]])
    ids = torch.cat([batch["input_ids"], torch.tensor([[5]])], dim=1)
    configs = (model.config, model.config.text_config, model.config.vision_config)
    for config in configs:
        config._attn_implementation = "eager"
    try:
        output = model(input_ids=ids, pixel_values=batch["pixel_values"], output_attentions=True)
        vision = model.model.vision_tower(batch["pixel_values"], output_attentions=True).attentions[1].mean(1)
    finally:
        for config in configs:
            config._attn_implementation = "sdpa"
    language = output.attentions[-1][0].mean(0)[ids.shape[1] - 2]
    columns = torch.nonzero(ids[0] == IMAGE_TOKEN)[:, 0].reshape(2, 16)
    for image in range(2):
        expected = language[columns[image]] @ vision[image, 1:, 1:]
        torch.testing.assert_close(explanation.image[0, 0, image].flatten(), expected)


def test_stopping_at_the_image_tokens_gives_each_images_tokens_on_its_grid():
    # raw attention over the LM's image tokens: the model's own last-layer row (head mean) at image i's tokens
    torch.manual_seed(0)
    model = VLMS["qwen2_vl"]()
    batch = prompts("qwen2_vl", counts=(2,))
    explainer = RawAttention(model)
    explainer.adapter.compose_vision = False
    image = explainer.explain(batch, continuation=[[5]]).image
    assert image.shape == (1, 1, 2, 4, 4)
    ids = torch.cat([batch["input_ids"], torch.tensor([[5]])], dim=1)
    full = dict(batch, input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == IMAGE_TOKEN).long())
    configs = (model.config, model.config.text_config)
    for config in configs:
        config._attn_implementation = "eager"
    try:
        language = model(**full, output_attentions=True).attentions[-1][0].mean(0)[ids.shape[1] - 2]
    finally:
        for config in configs:
            config._attn_implementation = "sdpa"
    columns = torch.nonzero(ids[0] == IMAGE_TOKEN)[:, 0].reshape(2, 16)
    for index in range(2):
        torch.testing.assert_close(image[0, 0, index].flatten(), language[columns[index]])


def test_partial_lrp_scales_each_images_block_alone():
    # min-max scaling per segment, worked by hand: segment 0's block [[-1, 1], [3, 0]] -> [[0, .5], [1, .25]];
    # segment 1's [[2]] -> a constant block reads 0; the entries between segments are 0 (no attention there)
    from captum_mm.relevance.scaling import min_max_scaled

    matrix = torch.tensor([[[-1.0, 1.0, 9.0], [3.0, 0.0, 9.0], [9.0, 9.0, 2.0]]])
    real = torch.ones(1, 3, dtype=torch.bool)
    scaled = min_max_scaled(matrix, real, real, segments=torch.tensor([[0, 0, 1]]))
    assert scaled.tolist() == [[[0.0, 0.5, 0.0], [1.0, 0.25, 0.0], [0.0, 0.0, 0.0]]]


def onevision_prompts(counts=(3, 2)):
    """LLaVA-OneVision prompts of several images each (``batch_num_images``): each image's 4 base tokens and a newline."""
    per_image = 5
    length = TEXT + max(counts) * (per_image + 1)
    ids, mask = torch.zeros(len(counts), length, dtype=torch.long), torch.zeros(len(counts), length, dtype=torch.long)
    for b, count in enumerate(counts):
        own = [7, 8, 9] + ([IMAGE_TOKEN] * per_image + [10]) * count
        ids[b, length - len(own):], mask[b, length - len(own):] = torch.tensor(own), 1
    images = sum(counts)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(images, 5, 3, 16, 16),
            "image_sizes": torch.tensor([[16, 32]] * images), "batch_num_images": torch.tensor(counts)}


@pytest.mark.parametrize("method", ["generic", "raw-attention", "transformer-attribution", "attnlrp"])
def test_onevision_several_images_each_on_its_base_grid_batched_equals_alone(method):
    torch.manual_seed(0)
    model = VLMS["llava_onevision"]().double()
    batch = in_dtype(model, onevision_prompts(), torch.float64)
    explanation = METHODS[method](model).explain(batch, continuation=CONTINUATION)
    assert explanation.image.shape == (2, 2, 3, 2, 2) and explanation.image[1, :, 2].abs().sum() == 0
    for index, (first, count) in enumerate([(0, 3), (3, 2)]):
        real = batch["attention_mask"][index].bool()
        single = {"input_ids": batch["input_ids"][index : index + 1, real], "attention_mask": batch["attention_mask"][index : index + 1, real],
                  "pixel_values": batch["pixel_values"][first : first + count], "image_sizes": batch["image_sizes"][first : first + count],
                  "batch_num_images": torch.tensor([count])}
        alone = METHODS[method](model).explain(single, continuation=[CONTINUATION[index]])
        steps = len(CONTINUATION[index])
        torch.testing.assert_close(explanation.image[index, :steps, :count], alone.image[0], atol=1e-12, rtol=1e-9)


def test_onevision_one_image_and_several_in_one_batch_are_refused():
    batch = onevision_prompts()
    batch["batch_num_images"] = torch.tensor([3, 1])
    with pytest.raises(ValueError, match=r"one image \(tiled whole\) and several .* separate batches: batch_num_images \[3, 1\]"):
        GenericAttention(VLMS["llava_onevision"]()).explain(batch, continuation=CONTINUATION)
