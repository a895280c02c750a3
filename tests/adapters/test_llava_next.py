"""LLaVA-NeXT and LLaVA-OneVision ("anyres"): the per-tile vision maps laid out block-diagonally, the token map against
the model's own packing (a tile's pixels change exactly the image tokens the map sends to it), raw attention composed
by hand from the model's eager maps onto the original image's region, LRP conserved in float64, and clear errors."""

import pytest
import torch
from helpers import ANYRES_SIZE, IMAGE_TOKEN, assert_image_halves_sum_their_cells, assert_same_state, family_prompts, generation_relevance, llava_next, model_state

from captum_mm.attr import GenericAttention, RawAttention
from captum_mm.attr.engine import Needs, forward_pass
from captum_mm.generation import generation_forward
from captum_mm.models import adapter_for

FAMILIES = ("llava_next", "llava_onevision")


def make(family, **kwargs):
    return llava_next(onevision=family == "llava_onevision", **kwargs)


def _image_embeddings(model, batch):
    """The LM's input embeddings at the image tokens, ``[B, image tokens, hidden]``, and the projector's output."""
    kept = {}
    language, projector = model.model.language_model, model.model.multi_modal_projector
    handles = [language.register_forward_pre_hook(lambda m, a, kw: kept.__setitem__("embeds", kw["inputs_embeds"]), with_kwargs=True),
               projector.register_forward_hook(lambda m, a, o: kept.__setitem__("projected", o))]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    image = batch["input_ids"] == IMAGE_TOKEN
    return kept["embeds"][image].reshape(image.shape[0], -1, kept["embeds"].shape[-1]), kept["projected"]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_token_map_is_the_models_packing(family):
    """``P`` times the projected features of every vision token (zero at the class token) is each image token's input,
    but for the newline tokens (zero rows), which hold the model's ``image_newline``."""
    model = make(family)
    batch = family_prompts(family, batch=1)
    embeds, projected = _image_embeddings(model, batch)
    adapter = adapter_for(model)
    token_map = adapter.tile_token_map(batch)
    skip = int(family == "llava_next")  # CLIP's class token, dropped by the "default" strategy; SigLIP has none
    features = torch.zeros(5, skip + 4, projected.shape[-1])
    features[:, skip:] = projected
    newline = token_map.sum(1) == 0
    expected = (token_map.float() @ features.flatten(0, 1))
    torch.testing.assert_close(embeds[0][~newline], expected[~newline])
    assert newline.sum() == {"llava_next": 2, "llava_onevision": 1}[family]  # one per row kept
    torch.testing.assert_close(embeds[0][newline], model.model.image_newline.expand(int(newline.sum()), -1))
    torch.testing.assert_close(token_map.sum(1)[~newline], torch.ones(int((~newline).sum()), dtype=torch.float64))


@pytest.mark.parametrize("family", FAMILIES)
def test_one_tiles_pixels_change_only_the_image_tokens_the_map_sends_to_it(family):
    model = make(family)
    batch = family_prompts(family, batch=1)
    before, _ = _image_embeddings(model, batch)
    token_map = adapter_for(model).tile_token_map(batch).reshape(-1, 5, 5 if family == "llava_next" else 4)
    for tile in range(5):
        changed = dict(batch, pixel_values=batch["pixel_values"].clone())
        changed["pixel_values"][:, tile] += 1.0
        after, _ = _image_embeddings(model, changed)
        moved = (after - before)[0].abs().sum(-1) > 0
        assert moved.any() and torch.equal(moved, token_map[:, tile].abs().sum(-1) > 0), tile


def test_schedule_lays_the_tiles_maps_out_block_diagonally_and_the_model_is_left_as_it_was():
    model = make("llava_next")
    batch = family_prompts("llava_next", batch=2)
    with torch.no_grad():
        model(**batch)  # HF installs its own output-capture hooks on a model's first forward, explained or not
    before = model_state(model)
    forward, arguments, target = generation_forward(model, batch, [[5], [6]], False, None)
    with forward_pass(model, forward, arguments, target=target, needs=RawAttention.needs) as run:
        schedule, record = run.schedule, run.record
    assert_same_state(before, model_state(model))
    vision = [call for call in record.calls if call.roles == ("vision", "vision")]
    # the feature layer -2 of 2: layer 1 feeds nothing and is left out of the schedule
    assert [call.name for call in vision] == ["model.vision_tower.encoder.layers.0.self_attn",
                                              "model.vision_tower.encoder.layers.1.self_attn"]
    assert schedule.sizes["vision"] == 25 and [(e.query, e.key) for e in schedule.events] == [("vision", "vision")] + [
        ("sequence", "sequence")] * 2
    probs = vision[0].probs
    assert probs.shape == (2, 4, 25, 25)
    for tile in range(5):
        block = probs[:, :, tile * 5:(tile + 1) * 5]
        torch.testing.assert_close(block.sum(-1), torch.ones(2, 4, 5))  # each row stays inside its tile
        assert block[..., tile * 5:(tile + 1) * 5].sum() == block.sum()


def test_raw_attention_image_is_the_lm_row_through_the_map_and_the_tiles_eager_maps_on_the_image():
    model = make("llava_next")
    batch = family_prompts("llava_next", batch=1)
    explanation = RawAttention(model).explain(batch, continuation=[[5]])
    ids = torch.cat([batch["input_ids"], torch.tensor([[5]])], dim=1)
    first_layer = model.model.vision_tower.encoder.layers[0].self_attn
    kept = []
    model.set_attn_implementation("eager")
    handle = first_layer.register_forward_hook(lambda m, a, o: kept.append(o[1]))  # eager: (output, weights)
    try:
        with torch.no_grad():
            output = model(input_ids=ids, pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"],
                           output_attentions=True)
    finally:
        handle.remove()
        model.set_attn_implementation("sdpa")
    with torch.no_grad():  # the image reaches the logits
        other = model(**dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]))).logits
    assert not torch.allclose(other[0, -1], output.logits[0, -2])
    language = output.attentions[-1][0].mean(0)[ids.shape[1] - 2][2:16]  # the row predicting the token, image tokens
    vision = kept[0].mean(1)  # [tiles, 5, 5]: layer 0, the one the features come from
    # by hand: base tokens 0-3 (tile 0's patches), then the region's rows 1 and 2 of the 4 x 4 grid, 4 cells and a newline
    tile_columns = torch.zeros(5, 4)
    for k in range(4):
        tile_columns[0] += language[k] * vision[0, 1 + k, 1:]
    for row in range(2):
        for column in range(4):
            cell_row = row + 1
            tile, patch = 1 + (cell_row // 2) * 2 + column // 2, (cell_row % 2) * 2 + column % 2
            tile_columns[tile] += language[4 + row * 5 + column] * vision[tile, 1 + patch, 1:]
    expected = torch.zeros(4, 4)
    for tile in range(1, 5):
        expected[(tile - 1) // 2 * 2:(tile - 1) // 2 * 2 + 2, (tile - 1) % 2 * 2:(tile - 1) % 2 * 2 + 2] += tile_columns[tile].reshape(2, 2)
    expected = expected[1:3]  # the 16 x 32 image covers rows 1 and 2
    expected += tile_columns[0].reshape(2, 2).repeat_interleave(2, dim=1) / 2  # a base patch: 1 x 2 cells of the region
    torch.testing.assert_close(explanation.image[0, 0], expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_lrp_conserves_relevance_at_every_layer_in_float64(family):
    """The token's 1 reaches every LM layer's input whole; what reaches the projector's input passes the projector
    and every vision layer the features come from whole."""
    model = make(family).double()
    for parameter in model.model.multi_modal_projector.parameters():  # biases drawn afresh (the rules leave them out)
        torch.nn.init.normal_(parameter, std=0.2)
    batch = family_prompts(family, batch=2)
    batch["pixel_values"] = batch["pixel_values"].double()
    language, tower = model.model.language_model, model.model.vision_tower
    cuts = {f"lm {k}": (layer, "input") for k, layer in enumerate(language.layers)}
    cuts.update({"projector": (model.model.multi_modal_projector, "input"), "projected": (model.model.multi_modal_projector, "output")})
    used = 1 if family == "llava_next" else 2  # LLaVA-NeXT reads layer -2's output, OneVision the last
    cuts.update({f"vision {k}": (layer, "input") for k, layer in enumerate(tower.encoder.layers[:used])})
    relevance = generation_relevance(model, batch, [[5], [6]], cuts)
    per_image = {name: values.reshape(2, -1).sum(1) for name, values in relevance.items() if not name.startswith("lm")}
    for k in range(len(language.layers)):
        torch.testing.assert_close(relevance[f"lm {k}"], torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (per_image["projector"].abs() > 1e-3).all()
    names = ["projected"] + [f"vision {k}" for k in range(used)]
    for name in names:
        torch.testing.assert_close(per_image[name], per_image["projector"], atol=1e-6, rtol=0)


def test_attribute_explains_the_prompts_tokens_with_the_tiles_as_arguments():
    model = make("llava_next")
    batch = family_prompts("llava_next")

    def forward(ids, pixels, sizes, mask):
        return model(input_ids=ids, pixel_values=pixels, image_sizes=sizes, attention_mask=mask).logits

    rest = tuple(batch[name] for name in ("pixel_values", "image_sizes", "attention_mask"))
    with torch.no_grad():
        logits = model(**batch).logits[:, -1]
    next_tokens = logits.index_fill(-1, torch.tensor([IMAGE_TOKEN]), -torch.inf).argmax(-1)
    text = GenericAttention(forward, model).attribute(batch["input_ids"], target=next_tokens, additional_forward_args=rest)
    torch.testing.assert_close(text, GenericAttention(model).explain(batch, continuation=next_tokens[:, None]).text[:, 0])


def test_patches_past_the_images_are_ignored_as_the_model_ignores_them():
    # a processor pads pixel_values to the batch's most patches; the model reads the first ones image_sizes asks for
    model = make("llava_next")
    batch = family_prompts("llava_next", batch=2)
    padded = dict(batch, pixel_values=torch.cat([batch["pixel_values"], torch.randn(2, 2, 3, 16, 16)], 1))
    explainer = GenericAttention(model)
    torch.testing.assert_close(explainer.explain(padded, continuation=[[5], [6]]).image,
                               explainer.explain(batch, continuation=[[5], [6]]).image)


def test_clear_errors():
    model = make("llava_onevision")
    batch = family_prompts("llava_onevision", batch=2)
    explainer = GenericAttention(model)
    with pytest.raises(ValueError, match=r"Images of one size .* got \[\[16, 32\], \[32, 16\]\]"):
        explainer.explain(dict(batch, image_sizes=torch.tensor([ANYRES_SIZE, ANYRES_SIZE[::-1]])), continuation=[[5], [6]])
    with pytest.raises(ValueError, match="needs 5 patches .* pixel_values has 3"):
        explainer.explain(dict(batch, pixel_values=batch["pixel_values"][:, :3]), continuation=[[5], [6]])
    with pytest.raises(ValueError, match=r"needs 7 image tokens \(id 3\)"):
        explainer.explain(dict(batch, input_ids=batch["input_ids"].masked_fill(batch["input_ids"] == IMAGE_TOKEN, 7)),
                          continuation=[[5], [6]])
    with pytest.raises(ValueError, match=r"separate batches: batch_num_images \[2, 1\]"):
        explainer.explain(dict(batch, batch_num_images=torch.tensor([2, 1])), continuation=[[5], [6]])
    with pytest.raises(ValueError, match="videos"):
        explainer.explain(dict(batch, pixel_values_videos=torch.randn(2, 1, 3, 16, 16)), continuation=[[5], [6]])


@pytest.mark.parametrize("family", FAMILIES)
def test_lrp_relevance_of_the_image_tokens_is_what_reached_the_projectors_output(family):
    """Packing (unpadding, OneVision's bilinear shrinking) conserves: the image tokens' relevance at the LM's input,
    newlines left out (they hold ``image_newline``, a constant), is the projector output's."""
    model = make(family).double()
    for parameter in model.model.multi_modal_projector.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    batch = family_prompts(family, batch=1)
    batch["pixel_values"] = batch["pixel_values"].double()
    kept = {}
    language, projector = model.model.language_model, model.model.multi_modal_projector
    handles = [language.register_forward_pre_hook(lambda m, a, kw: kept.__setitem__("embeds", kw["inputs_embeds"]), with_kwargs=True),
               projector.register_forward_hook(lambda m, a, o: kept.__setitem__("projected", o))]
    forward, arguments, target = generation_forward(model, batch, [[5]], False, None)
    try:
        with forward_pass(model, forward, arguments, target=target, needs=Needs(gradients=True, relevance=True)) as run:
            starts, seeds = run.adapter.lrp_start(run.lrp, run.logits, run.selection.grad_outputs[:1])
            with run.lrp.relevance_mode():
                gradients = torch.autograd.grad(starts, [kept["embeds"], kept["projected"]], [s[0] for s in seeds])
    finally:
        for handle in handles:
            handle.remove()
    per_token = (kept["embeds"] * gradients[0]).sum(-1)[0, :batch["input_ids"].shape[1]]
    newline = run.adapter.tile_token_map(batch).sum(1) == 0
    image = per_token[batch["input_ids"][0] == IMAGE_TOKEN][~newline].sum()
    projected = (kept["projected"] * gradients[1]).sum()
    assert projected.abs() > 1e-3
    torch.testing.assert_close(image, projected, atol=1e-9, rtol=0)


def _model_and_processor(tokenizer):
    """A tiny LLaVA-NeXT on the WordPiece vocabulary ([unused0] the image token) and a hand-made processor for a 32 x 64
    (height x width) image: the base image resized to 16 x 16; the image resized to 16 x 32, padded to the pinpoint
    32 x 32 (8 rows above and below) and cut into 2 x 2 tiles; 4 + 10 image tokens after a [CLS], then the question."""
    import numpy as np
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    image_token = tokenizer.convert_tokens_to_ids("[unused0]")
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, image_size=16, patch_size=8)
    text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, eos_token_id=tokenizer.sep_token_id)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=image_token, image_grid_pinpoints=[[32, 32]])
    model = LlavaNextForConditionalGeneration(config).eval()
    question = tokenizer.encode("what color is the circle?", add_special_tokens=False)

    def as_tensor(image):
        return torch.tensor(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)

    def processor(image):
        padded = torch.zeros(3, 32, 32)
        padded[:, 8:24] = as_tensor(image.resize((32, 16)))
        tiles = padded.reshape(3, 2, 16, 2, 16).permute(1, 3, 0, 2, 4).reshape(4, 3, 16, 16)
        pixels = torch.cat([as_tensor(image.resize((16, 16)))[None], tiles])[None]
        ids = torch.tensor([[tokenizer.cls_token_id] + [image_token] * 14 + question])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels, "image_sizes": torch.tensor([[32, 64]])}

    return model, processor


def test_captums_llm_api_sums_the_relevance_each_segment_of_the_original_image_covers():
    # the image's cells only: the padding above and below is no part of the map, which covers the whole image
    assert assert_image_halves_sum_their_cells(_model_and_processor, 32, 64).shape == (2, 2, 4)
