"""Llama-3.2-Vision (Mllama): schedule and roles, raw attention by hand, gated cross-attention, the tiled image
readout, generation (the cross-attention mask extended as generate does), batching, lean capture, the model left as it
was, and every method."""

import pytest
import torch
from helpers import (
    MLLAMA_GRID,
    MLLAMA_IMAGE_TOKEN,
    assert_each_sample_as_alone,
    assert_same_state,
    generation_relevance,
    mllama,
    mllama_prompts,
    model_state,
)
from methods_under_test import METHODS, padded_cases

from captum_mm.attr import GenericAttention, RawAttention
from captum_mm.attr.catalog import PAPER_METHODS, REFERENCE_DETR
from captum_mm.attr.engine import forward_pass
from captum_mm.capture.record import use_eager_attention
from captum_mm.generation import generation_forward

CONTINUATION = [[5, 6], [7], [8, 9]]
GREEDY = {"do_sample": False, "max_new_tokens": 3}


def test_the_image_changes_the_logits_through_the_randomised_gates():
    model, batch = mllama(), mllama_prompts()
    other = dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]))
    with torch.no_grad():
        assert (model(**batch).logits - model(**other).logits).abs().max() > 1e-2
        closed = mllama(gates=False)  # HF's zero gates: the image is not read at all
        assert torch.equal(closed(**batch).logits, closed(**other).logits)


def test_schedule_runs_vision_local_then_global_layers_then_self_and_cross_attention():
    model = mllama(layers=3, vision_layers=2, global_layers=1)
    forward, arguments, target = generation_forward(model, mllama_prompts(), CONTINUATION, False, None)
    with forward_pass(model, forward, arguments, target=target, needs=RawAttention.needs) as run:
        schedule, record = run.schedule, run.record
    names = [record.calls[event.call].name for event in schedule.events]
    assert names == ["model.vision_model.transformer.layers.0.self_attn", "model.vision_model.transformer.layers.1.self_attn",
                     "model.vision_model.global_transformer.layers.0.self_attn", "model.language_model.layers.0.self_attn",
                     "model.language_model.layers.1.cross_attn", "model.language_model.layers.2.self_attn"]
    roles = [(event.query, event.key) for event in schedule.events]
    assert roles == [("vision", "vision")] * 3 + [("sequence", "sequence"), ("sequence", "features"), ("sequence", "sequence")]
    assert schedule.sizes == {"sequence": 8, "features": 2 * 5, "vision": 2 * 8}  # 1 + 4 patches a tile, padded to 8
    image = schedule.outputs["image"]
    assert image.pair == ("sequence", "features") and image.grid == MLLAMA_GRID
    assert image.through.rows.tolist() == [0, 1, 2, 3, 4, 8, 9, 10, 11, 12]
    assert image.through.columns.tolist() == [1, 2, 3, 4, 9, 10, 11, 12]  # no class token, no padding


def eager_maps(model, ids, batch):
    """The model's own eager maps (head means) of sample 0: the LM's layers, and the vision encoder's last layer."""
    inputs = dict(batch, input_ids=ids, attention_mask=torch.ones_like(ids),
                  cross_attention_mask=torch.cat([batch["cross_attention_mask"], batch["cross_attention_mask"][:, -1:]], 1))
    kept = {}
    layer = model.model.vision_model.global_transformer.layers[-1].self_attn
    handle = layer.register_forward_hook(lambda m, a, o: kept.__setitem__("vision", o[1]))
    restore = use_eager_attention(model)
    try:
        with torch.no_grad():
            output = model(**inputs, output_attentions=True)
    finally:
        restore.remove()
        handle.remove()
    return output.attentions, kept["vision"][0].mean(0)


def test_raw_attention_is_the_last_cross_attention_row_times_the_last_vision_map():
    model, batch = mllama(), mllama_prompts(batch=1)
    explanation = RawAttention(model).explain(batch, continuation=[[5]])
    ids = torch.cat([batch["input_ids"], torch.tensor([[5]])], dim=1)
    attentions, vision = eager_maps(model, ids, batch)
    row = ids.shape[1] - 2  # the row predicting the token
    cross = attentions[1][0].mean(0)[row]  # layer 1 is the cross-attention layer: [features]
    features = torch.tensor([0, 1, 2, 3, 4, 8, 9, 10, 11, 12])
    patches = torch.tensor([1, 2, 3, 4, 9, 10, 11, 12])
    expected = cross @ vision[features][:, patches]
    torch.testing.assert_close(explanation.image[0, 0].flatten(), expected)
    text = attentions[-1][0].mean(0)[row, : batch["input_ids"].shape[1]].clone()
    text[row] = 0.0  # the row token's own entry
    torch.testing.assert_close(explanation.text[0, 0], text)


@pytest.mark.parametrize("family, method, dtype", padded_cases(["mllama"], sorted(METHODS), "mllama"))
def test_batched_with_left_padding_equals_each_sample_alone(family, method, dtype):
    model = mllama().to(dtype)
    batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in mllama_prompts().items()}
    explanation = assert_each_sample_as_alone(lambda: METHODS[method](model), batch, CONTINUATION)
    assert explanation.image.shape == (3, 2, *MLLAMA_GRID) and explanation.text.shape == (3, 2, 6)
    if method in ("generic", "raw", "rollout"):
        assert explanation.image.abs().sum() > 0


TOLERANCE = 1e-6  # float64; the rules ignore biases (tests/lrp/test_lrp_on_models.py)


def test_lrp_conserves_relevance_at_every_layer_through_the_gates():
    """The generated token's 1 reaches the LM's layers whole, split at the cross-attention layer between its input and
    the features (keys and values); the features' share reaches the projector's input, which reads the last global
    layer and the first local layer's output (an intermediate feature); every vision layer passes on what reaches its
    output, but the first local layer, whose padding rows are zeros (a LayerNorm passes nothing to a zero input), and
    the tile position embedding between local and global layers (a constant added, absorbing relevance as a bias)."""
    model = mllama().double()
    batch = mllama_prompts(batch=2)
    batch["pixel_values"] = batch["pixel_values"].double()
    language, vision = model.model.language_model, model.model.vision_model
    cuts = {f"lm{k}": (layer, "input") for k, layer in enumerate(language.layers)}
    cuts.update({"norm": (language.norm, "input"), "features": (model.model.multi_modal_projector, "output"),
                 "projector": (model.model.multi_modal_projector, "input"), "global out": (vision.global_transformer.layers[-1], "output"),
                 "global in": (vision.global_transformer.layers[0].input_layernorm, "input"),
                 "local out": (vision.layernorm_post, "input")})
    cuts.update({f"local{k}": (layer.input_layernorm, "input") for k, layer in enumerate(vision.transformer.layers)})
    relevance = generation_relevance(model, batch, [[5, 6], [7, 8]], cuts)
    close = lambda a, b: torch.allclose(a, b, atol=TOLERANCE)  # noqa: E731
    one = torch.ones(2, dtype=torch.float64)
    assert close(relevance["norm"], one) and close(relevance["lm2"], one)
    assert close(relevance["lm1"] + relevance["features"], one) and close(relevance["lm0"], relevance["lm1"])
    assert (relevance["features"] > 1e-2).all()  # the image is read
    assert close(relevance["projector"], relevance["features"]) and close(relevance["global in"], relevance["global out"])
    intermediate = relevance["projector"] - relevance["global out"]
    assert close(relevance["local1"], relevance["local out"] + intermediate)
    assert (relevance["local0"] <= relevance["local1"] + TOLERANCE).all() and (relevance["local0"] > 0.5 * relevance["local1"]).all()


def test_generated_tokens_get_the_probabilities_hf_generate_gave_them():
    """The forward over prompt + continuation extends cross_attention_mask as generate does (its last row repeated):
    each explained token's probability is the one generate's own scores give it."""
    model, batch = mllama(), mllama_prompts()
    explanation = GenericAttention(model).explain(batch, generate=True, generation_args=GREEDY)
    with torch.no_grad():
        output = model.generate(**batch, **GREEDY, output_scores=True, return_dict_in_generate=True)
    tokens = output.sequences[:, batch["input_ids"].shape[1]:]
    probabilities = torch.stack(output.scores, 1).softmax(-1).gather(-1, tokens[..., None])[..., 0]
    explained = explanation.target >= 0
    assert torch.equal(explanation.target[explained], tokens[explained]) and explained[:, 0].all()
    torch.testing.assert_close(explanation.scores[explained], probabilities[explained])
    assert explanation.image[explained].abs().sum() > 0


def test_attribute_spreads_each_tiles_relevance_over_its_pixels():
    model, batch = mllama(), mllama_prompts(batch=1)
    rest = {name: batch[name] for name in ("aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")}
    forward = lambda ids, pixels: model(input_ids=ids, pixel_values=pixels, **rest).logits  # noqa: E731
    text, pixels = GenericAttention(forward, model).attribute((batch["input_ids"], batch["pixel_values"]))
    assert pixels.shape == batch["pixel_values"].shape
    with torch.no_grad():
        next_token = model(**batch).logits[:, -1].argmax(-1)
    explained = GenericAttention(model).explain(batch, continuation=next_token[:, None])
    torch.testing.assert_close(text, explained.text[:, 0])
    assert explained.image.shape == (1, 1, *MLLAMA_GRID) and explained.image.abs().sum() > 0
    for tile in range(2):  # every pixel of a patch holds its relevance, every channel alike
        torch.testing.assert_close(pixels[0, 0, tile, :, ::8, ::8], explained.image[0, 0, tile].expand(3, 2, 2))
        torch.testing.assert_close(pixels[0, 0, tile, :, 7::8, 7::8], explained.image[0, 0, tile].expand(3, 2, 2))


@pytest.mark.parametrize("method", sorted({**PAPER_METHODS, **REFERENCE_DETR}))
def test_a_generated_tokens_relevance_ignores_later_tokens(method):
    """Tokens 0 and 1 after ``[5, 6, 7]`` as after ``[5, 6, 9, 10]`` (float64; tests/attr/test_causality.py)."""
    model, batch = mllama().double(), mllama_prompts(batch=1)
    batch["pixel_values"] = batch["pixel_values"].double()
    short, longer = ({**PAPER_METHODS, **REFERENCE_DETR}[method](model).explain(batch, continuation=[tokens])
                     for tokens in ([5, 6, 7], [5, 6, 9, 10]))
    for k in (0, 1):
        for name, value in short.outputs().items():
            earlier, later = value[0, k], longer.outputs()[name][0, k]
            if name == "generated":
                assert earlier[k:].abs().sum() == 0 and later[k:].abs().sum() == 0
                earlier, later = earlier[:k], later[:k]
            scale = float(earlier.abs().max()) if earlier.numel() and earlier.any() else 1.0
            torch.testing.assert_close(later, earlier, rtol=0.0, atol=1e-10 * scale)


def lean_calls(model, prompt, method):
    forward, arguments, target = generation_forward(model, prompt, CONTINUATION, False, None)
    with forward_pass(model, forward, arguments, target=target, needs=method.needs) as run:
        return [call.lean is not None for call in run.record.calls]


def test_lean_capture_equals_the_eager_path():
    model, batch = mllama(), mllama_prompts()
    assert all(lean_calls(model, batch, GenericAttention(model)))  # every attention module served lean
    explainer = GenericAttention(model)
    lean = explainer.explain(batch, continuation=CONTINUATION)
    explainer.lean = False
    eager = explainer.explain(batch, continuation=CONTINUATION)
    for name in ("text", "generated", "image"):
        torch.testing.assert_close(getattr(lean, name), getattr(eager, name))


def test_model_left_as_it_was_and_clear_errors():
    model, batch = mllama(), mllama_prompts()
    with torch.no_grad():
        model(**batch)
    before = model_state(model)
    explainer = GenericAttention(model)
    explainer.explain(batch, continuation=CONTINUATION)
    assert_same_state(before, model_state(model))
    two_images = dict(batch, pixel_values=batch["pixel_values"].repeat(1, 2, 1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"aspect_ratio_ids \[batch, images\] and aspect_ratio_mask \[batch, images, tiles\] "
                       r"must match pixel_values' \(3, 2, 2\)"):
        explainer.explain(two_images, continuation=CONTINUATION)
    with pytest.raises(ValueError, match="aspect_ratio_ids"):
        explainer.explain({k: v for k, v in batch.items() if k != "aspect_ratio_ids"}, continuation=CONTINUATION)
    with pytest.raises(ValueError, match=r"cross_attention_mask .* must match"):
        explainer.explain(dict(batch, cross_attention_mask=batch["cross_attention_mask"][..., :1]), continuation=CONTINUATION)
    assert MLLAMA_IMAGE_TOKEN not in CONTINUATION[0]
    assert_same_state(before, model_state(model))


def two_image_prompts():
    """Prompt 0 ``[token, <|image|>, text, <|image|>, text]`` reading two two-tile images (each text token the latest
    image, as the processor masks); prompt 1, left-padded, ``[<|image|>, text]`` reading one image and the padding image
    the processor adds (all zero, masked). A text token before every image (prompt 0's first) attends uniformly to all
    the features, as HF's model does when a row's cross-attention mask is all zero."""
    batch = mllama_prompts(batch=2, text=7)
    batch["input_ids"][0, 4], batch["input_ids"][1, 2:4] = MLLAMA_IMAGE_TOKEN, torch.tensor([MLLAMA_IMAGE_TOKEN, 9])
    cross = torch.zeros(2, 7, 2, 2, dtype=torch.long)
    cross[0, 1:4, 0], cross[0, 4:, 1], cross[1, 2:, 0] = 1, 1, 1
    pixels = torch.randn(2, 2, 2, 3, 16, 16)
    pixels[1, 1] = 0
    ratio_ids, ratio_mask = torch.tensor([[2, 2], [2, 0]]), torch.tensor([[[1, 1], [1, 1]], [[1, 1], [0, 0]]])
    return dict(batch, pixel_values=pixels, aspect_ratio_ids=ratio_ids, aspect_ratio_mask=ratio_mask, cross_attention_mask=cross)


@pytest.mark.parametrize("method", ["generic", "raw-attention", "partial-lrp", "attnlrp"])
def test_several_images_a_prompt_each_on_its_tiles_and_batched_equals_alone(method):
    torch.manual_seed(0)
    model = mllama().double()
    batch = {name: value.double() if value.is_floating_point() else value for name, value in two_image_prompts().items()}
    continuation = [[5, 6], [7]]
    explanation = METHODS[method](model).explain(batch, continuation=continuation)
    assert explanation.image.shape == (2, 2, 2, *MLLAMA_GRID)
    assert explanation.image[0, :, 1].abs().sum() > 0 and explanation.image[1, :, 1].abs().sum() == 0  # the padding image
    real = batch["attention_mask"][1].bool()
    alone = {name: value[1:, real] if name in ("input_ids", "attention_mask") else value[1:, :1] for name, value in batch.items()}
    alone["cross_attention_mask"] = batch["cross_attention_mask"][1:, real, :1]
    single = METHODS[method](model).explain(alone, continuation=[[7]])
    torch.testing.assert_close(explanation.image[1, :1, 0], single.image[0], atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(explanation.text[1, :1, real], single.text[0], atol=1e-12, rtol=1e-9)
    first = {name: value[:1] for name, value in batch.items()}
    torch.testing.assert_close(explanation.image[0], METHODS[method](model).explain(first, continuation=continuation[:1]).image[0],
                               atol=1e-12, rtol=1e-9)
