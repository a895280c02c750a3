"""LLaVA and PaliGemma: generated tokens explained over the prompt's text, earlier generated tokens
and the image's patch grid, composed through the vision tower's own relevance (docs/METHOD.md)."""

import pytest
import torch
from helpers import (
    IMAGE_GRID,
    IMAGE_TOKEN,
    VLMS,
    assert_each_sample_as_alone,
    assert_same_state,
    blip2,
    family_prompts,
    generation_relevance,
    idefics3,
    in_dtype,
    llava,
    model_state,
    paligemma,
    qwen2_vl,
    vlm_prompts,
)
from methods_under_test import METHODS, padded_cases

from captum_mm.attr import GenericAttention, RawAttention
from captum_mm.attr.engine import forward_pass
from captum_mm.capture.settings import use_eager_attention
from captum_mm.generation import generation_forward
from captum_mm.models import adapter_for

CONTINUATION = [[5, 6], [7], [8, 9]]
#: Greedy, never the image token (a random-init LM may pick it; a trained VLM does not).
GREEDY = {"do_sample": False, "suppress_tokens": [IMAGE_TOKEN]}


def schedule_of(model, batch, continuation=CONTINUATION):
    forward, arguments, target = generation_forward(model, batch, continuation, False, None)
    with forward_pass(model, forward, arguments, target=target, needs=RawAttention.needs) as run:
        return run.schedule, run.record


@pytest.mark.parametrize("feature_layer, vision_events", [(-2, 2), (-1, 3), (1, 1)])
def test_schedule_runs_the_vision_layers_up_to_the_feature_layer_then_the_lm(feature_layer, vision_events):
    model = llava(vision_layers=3, feature_layer=feature_layer, layers=2)
    schedule, record = schedule_of(model, vlm_prompts())
    roles = [(event.query, event.key) for event in schedule.events]
    assert roles == [("vision", "vision")] * vision_events + [("sequence", "sequence")] * 2
    assert [record.calls[e.call].name for e in schedule.events[:vision_events]] == [
        f"model.vision_tower.encoder.layers.{k}.self_attn" for k in range(vision_events)
    ]
    image = schedule.outputs["image"]
    assert image.column_index.tolist()[0] == list(range(2, 18)) and image.grid == IMAGE_GRID
    assert image.through.pair == ("vision", "vision") and image.through.rows == slice(1, None)  # [CLS] dropped
    assert image.through.columns == slice(1, None) and schedule.sizes["vision"] == 17
    assert not schedule.outputs["text"].column_mask[:, 2:18].any()  # the text output leaves the image tokens out


def test_full_strategy_reads_the_class_token_feature_too():
    model = llava(strategy="full")
    batch = vlm_prompts(image_tokens=17)
    schedule, _ = schedule_of(model, batch)
    assert schedule.outputs["image"].through.rows == slice(0, None)
    assert schedule.outputs["image"].column_index.shape == (5, 17)  # 5 explained tokens


def test_raw_attention_image_is_the_lm_row_over_image_tokens_times_the_vision_map():
    # hand-composed from the model's own eager attention maps (head means): the LM's last layer read at
    # the row before the token, over the 16 image tokens, times the last used vision layer's map
    # between patches ([CLS] row and column dropped)
    model = llava(vision_layers=3, feature_layer=-2)
    batch = vlm_prompts(batch=1)
    explanation = RawAttention(model).explain(batch, continuation=[[5]])
    ids = torch.cat([batch["input_ids"], torch.tensor([[5]])], dim=1)
    for config in (model.config, model.config.text_config, model.config.vision_config):
        config._attn_implementation = "eager"
    try:
        output = model(input_ids=ids, pixel_values=batch["pixel_values"], output_attentions=True)
        vision = model.model.vision_tower(batch["pixel_values"], output_attentions=True).attentions[1][0].mean(0)
    finally:
        for config in (model.config, model.config.text_config, model.config.vision_config):
            config._attn_implementation = "sdpa"
    language = output.attentions[-1][0].mean(0)[ids.shape[1] - 2]  # the row predicting the token
    expected = language[2:18] @ vision[1:, 1:]
    torch.testing.assert_close(explanation.image[0, 0].flatten(), expected)
    text = language.clone()
    text[ids.shape[1] - 2] = 0.0  # the row token's own entry
    text[2:18] = 0.0  # image tokens are not text
    torch.testing.assert_close(explanation.text[0, 0], text[: batch["input_ids"].shape[1]])


def test_stopping_at_the_image_tokens():
    model = llava()
    batch = vlm_prompts(batch=1)
    explainer = RawAttention(model)
    explainer.adapter.compose_vision = False
    tokens = explainer.explain(batch, continuation=[[5]])
    full = RawAttention(model).explain(batch, continuation=[[5]])
    assert tokens.image.shape == full.image.shape == (1, 1, *IMAGE_GRID)
    explainer.adapter.compose_vision = True
    torch.testing.assert_close(explainer.explain(batch, continuation=[[5]]).image, full.image)
    # stopping at the tokens: the LM's row over the image tokens, unchanged by the vision tower
    language = GenericAttention(model)
    language.adapter.compose_vision = False
    relevance = language.explain(batch, continuation=[[5]])
    assert relevance.image.abs().sum() > 0 and not torch.equal(relevance.image, GenericAttention(model).explain(batch, continuation=[[5]]).image)


@pytest.mark.parametrize("family, method, dtype", padded_cases(sorted(VLMS), sorted(METHODS), "llava"))
def test_batched_with_left_padding_equals_each_sample_alone(family, method, dtype):
    model = VLMS[family]()
    batch = family_prompts(family)
    explanation = assert_each_sample_as_alone(lambda: METHODS[method](model), in_dtype(model, batch, dtype), CONTINUATION)
    grid = (8, 8) if family in ("idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3_vl", "internvl") else IMAGE_GRID  # the patch grid (4 x 4 patches)
    grid = (2, 4) if family in ("llava_next", "llava_onevision") else grid  # the image's region of the tiles' 4 x 4
    assert explanation.image.shape == (3, 2, *grid) and explanation.text.shape == (3, 2, batch["input_ids"].shape[1])


@pytest.mark.parametrize("family", sorted(VLMS))
def test_generate_then_explain_equals_the_same_tokens_given(family):
    model = VLMS[family]()
    batch = family_prompts(family)
    arguments = dict(GREEDY, max_new_tokens=3)
    generated = GenericAttention(model).explain(batch, generate=True, generation_args=arguments)
    with torch.no_grad():
        tokens = model.generate(**batch, **arguments)[:, batch["input_ids"].shape[1]:]
    given = GenericAttention(model).explain(batch, continuation=tokens)
    explained = generated.target >= 0
    assert torch.equal(generated.target[explained], tokens[explained])
    torch.testing.assert_close(generated.image[explained], given.image[explained])


def test_clear_errors_and_the_model_left_as_it_was():
    model = llava()
    batch = vlm_prompts()
    with torch.no_grad():
        model(**batch)  # HF installs its own output-capture hooks on a model's first forward, explained or not
    before = model_state(model)
    explainer = GenericAttention(model)
    missing = dict(batch, input_ids=batch["input_ids"].clone())
    missing["input_ids"][2, 5] = 7  # one image token fewer in sample 2
    with pytest.raises(ValueError, match=r"needs 16 image tokens \(id 3\).*samples \[2\] have \[15\]"):
        explainer.explain(missing, continuation=CONTINUATION)
    with pytest.raises(ValueError, match=r"image tokens make \[1, 1, 1\] images \(16 tokens an image\), 3 in all; the model is given 2"):
        explainer.explain(dict(batch, pixel_values=batch["pixel_values"][:2]), continuation=CONTINUATION)
    with pytest.raises(ValueError, match="needs pixel_values"):
        explainer.explain({"input_ids": batch["input_ids"]}, continuation=CONTINUATION)
    with pytest.raises(ValueError, match=r"samples \[0\] have \[17\] \(a continuation token with that id counts too"):
        explainer.explain(batch, continuation=[[IMAGE_TOKEN], [5], [5]])
    explainer.explain(batch, generate=True, generation_args=dict(GREEDY, max_new_tokens=2))
    assert_same_state(before, model_state(model))
    assert adapter_for(model).outputs == ("text", "generated", "image") and IMAGE_TOKEN == model.config.image_token_id


def test_lrp_reads_the_routed_vision_features_on_every_call():
    # LLaVA's projector reads the vision tower's hidden states through a forward hook that HF installs on the
    # first forward; the LRP output hooks run before it, so the second call equals the first
    model = llava()
    batch = vlm_prompts(batch=1)
    first, second = (METHODS["partial-lrp"](model).explain(batch, continuation=[[5]]).image for _ in range(2))
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_paligemma_reads_every_vision_layer_and_every_token_of_its_tower():
    model = paligemma(vision_layers=3)
    batch = vlm_prompts(batch=2)
    schedule, _ = schedule_of(model, batch, [[5], [6]])
    assert [(e.query, e.key) for e in schedule.events] == [("vision", "vision")] * 3 + [("sequence", "sequence")] * 2
    image = schedule.outputs["image"]
    assert image.through.rows == slice(0, None) and image.through.columns == slice(0, None) and schedule.sizes["vision"] == 16


def test_paligemma_continuation_joins_the_causal_suffix():
    # generate gives generated tokens token type 1 (the causal suffix); the explanation's forward does the same
    model = paligemma()
    batch = dict(vlm_prompts(batch=2), token_type_ids=torch.zeros(2, 22, dtype=torch.long))
    forward, arguments, target = generation_forward(model, batch, [[5, 6], [7]], False, None)
    types = dict(zip(list(batch) + ["position_ids"], arguments))["token_type_ids"]
    assert types.tolist() == [[0] * 22 + [1, 1]] * 2
    with pytest.raises(ValueError, match=r"\['token_type_ids'\] hold one entry per prompt token"):
        generation_forward(llava(), batch, [[5, 6], [7]], False, None)  # LLaVA does not extend them


def test_idefics3_token_map_is_its_own_pixel_shuffle():
    # a 4 x 4 patch grid shuffled 2 x 2: token (i, j) is made of patch rows 2i, 2i+1 and columns 2j, 2j+1
    token_map = adapter_for(idefics3()).token_map((4, 4))
    made_of = [torch.nonzero(row).flatten().tolist() for row in token_map]
    assert made_of == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert torch.all(token_map[token_map > 0] == 0.25)  # each token's relevance spread evenly over its patches


def test_idefics3_raw_attention_image_goes_through_the_pixel_shuffle():
    model = idefics3()
    batch = family_prompts("idefics3", batch=1)
    explanation = RawAttention(model).explain(batch, continuation=[[5]])
    restore = use_eager_attention(model, attention_functions=adapter_for(model).attention_functions)
    try:
        ids = torch.cat([batch["input_ids"], torch.tensor([[5]])], dim=1)
        language = model(input_ids=ids, pixel_values=batch["pixel_values"], output_attentions=True).attentions[-1][0].mean(0)
        vision = model.model.vision_model(batch["pixel_values"][:, 0], output_attentions=True).attentions[-1][0].mean(0)
    finally:
        restore.remove()
    token_map = adapter_for(model).token_map((8, 8)).float()
    expected = language[ids.shape[1] - 2, 2:18] @ token_map @ vision
    torch.testing.assert_close(explanation.image[0, 0].flatten(), expected)
    stopped = RawAttention(model)
    stopped.adapter.compose_vision = False
    assert stopped.explain(batch, continuation=[[5]]).image.shape == (1, 1, 4, 4)  # the 4 x 4 grid of image tokens


def test_idefics3_images_must_be_those_its_image_tokens_read():
    model = idefics3()
    batch = family_prompts("idefics3")
    batch["pixel_values"] = batch["pixel_values"].repeat(1, 2, 1, 1, 1)  # two images, one image's tokens each
    with pytest.raises(ValueError, match=r"image tokens make \[1, 1, 1\] images .* the model is given 6"):
        GenericAttention(model).explain(batch, continuation=CONTINUATION)


def test_qwen2_vl_vision_weights_are_recorded_inside_the_attention_function():
    # its vision attention discards the weights; the recorded ones are softmax(q k^T / sqrt(d)) of each image,
    # recomputed here from the block's fused projection and rotary embedding
    from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

    model = qwen2_vl()
    batch = family_prompts("qwen2_vl", batch=2)
    with torch.no_grad():
        model(**batch)  # HF installs its own output-capture hooks on a model's first forward
    before = model_state(model)
    attention, kept = model.model.visual.blocks[0].attn, {}
    handles = [attention.qkv.register_forward_hook(lambda m, a, o: kept.__setitem__("qkv", o)),
               attention.register_forward_pre_hook(lambda m, a, k: kept.__setitem__("rotary", k["position_embeddings"]),
                                                   with_kwargs=True)]
    try:
        schedule, record = schedule_of(model, batch, [[5], [6]])
    finally:
        for handle in handles:
            handle.remove()
    q, k, _ = kept["qkv"].reshape(-1, 3, 4, 8).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, *kept["rotary"])
    scores = torch.einsum("nhd,mhd->hnm", q, k) / 8 ** 0.5
    expected = torch.stack([scores[:, i * 64 : (i + 1) * 64, i * 64 : (i + 1) * 64].softmax(-1) for i in range(2)])
    torch.testing.assert_close(record.calls[0].probs, expected)
    assert record.calls[0].name == "model.visual.blocks.0.attn" and schedule.sizes["vision"] == 64
    assert_same_state(before, model_state(model))  # the vision attention setting restored


def test_qwen2_vl_refuses_what_it_cannot_explain():
    model = qwen2_vl()
    batch = family_prompts("qwen2_vl")
    mixed = dict(batch, image_grid_thw=torch.tensor([[1, 8, 8], [1, 8, 8], [1, 4, 16]]))
    with pytest.raises(ValueError, match="Images of one size"):
        GenericAttention(model).explain(mixed, continuation=CONTINUATION)


def test_qwen2_vl_lrp_conserves_relevance_through_the_vision_blocks():
    """The token's 1 reaches the LM's first layer whole; what reaches the merger's input passes every vision block
    whole (its fused, rotated projection crossed by its transposes, image by image)."""
    model = qwen2_vl().double()
    batch = family_prompts("qwen2_vl", batch=2)
    batch["pixel_values"] = batch["pixel_values"].double()
    visual = model.model.visual
    cuts = {"lm": (model.model.language_model.layers[0], "input"), "merger": (visual.merger, "input")}
    cuts.update({f"block {k}": (block, "input") for k, block in enumerate(visual.blocks)})
    relevance = generation_relevance(model, batch, [[5], [6]], cuts)
    per_image = {name: values.reshape(2, -1).sum(1) for name, values in relevance.items() if name != "lm"}  # patches -> images
    torch.testing.assert_close(relevance["lm"], torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (per_image["merger"] > 0).all()
    for k in range(2):
        torch.testing.assert_close(per_image[f"block {k}"], per_image["merger"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["llava", "idefics3", "internvl"])
def test_attribute_explains_the_next_token_over_the_prompt_and_the_image(family):
    # Captum's contract: one attribution per input, shaped like it; the image's patch-grid relevance spread over
    # each patch's pixels, the prompt's over its tokens (as explain gives them for the next token)
    model = VLMS[family]()
    batch = family_prompts(family)
    forward = lambda ids, pixels, mask: model(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits  # noqa: E731
    ids, pixels = batch["input_ids"], batch["pixel_values"]
    text, image = GenericAttention(forward, model).attribute((ids, pixels), additional_forward_args=(batch["attention_mask"],))
    assert text.shape == ids.shape and image.shape == pixels.shape
    with torch.no_grad():
        next_tokens = model(**batch).logits[:, -1].argmax(-1)
    explained = GenericAttention(model).explain(batch, continuation=next_tokens[:, None])
    torch.testing.assert_close(text, explained.text[:, 0])
    patch = 32 // explained.image.shape[-1]  # pixels per patch side
    torch.testing.assert_close(image[:, ..., 0, ::patch, ::patch].reshape(explained.image[:, 0].shape), explained.image[:, 0])


@pytest.mark.parametrize("family", ["llava", "paligemma", "blip2"])
def test_images_of_another_size_than_the_vision_tower_takes_are_refused_before_the_model_runs(family):
    """The towers' position embeddings fix the image size; a 64x64 image on a 32x32 tower would otherwise be told
    the image-token count of 64x64 (LLaVA) or fail inside HF."""
    model = {"llava": llava, "paligemma": paligemma, "blip2": blip2}[family]()
    batch = dict(vlm_prompts(), pixel_values=torch.randn(3, 3, 64, 64))
    with pytest.raises(ValueError, match=rf"{type(model).__name__}'s vision tower takes 32x32 images "
                                         r"\(vision_config.image_size\); pixel_values are 64x64\. Resize the images to 32x32"):
        GenericAttention(model).explain(batch, continuation=CONTINUATION)


def test_a_tower_taking_any_size_or_interpolated_positions_is_not_held_to_one_size():
    batch = dict(vlm_prompts(image_tokens=2), pixel_values=torch.randn(3, 3, 16, 16))
    adapter_for(blip2(queries=2)).check_arguments(dict(batch, interpolate_pos_encoding=True))
    smaller = family_prompts("idefics3", image_tokens=4)  # 4 tokens: a 16x16 image's 4x4 patches shuffled
    smaller["pixel_values"] = smaller["pixel_values"][..., :16, :16]
    adapter_for(idefics3()).check_arguments(smaller)
