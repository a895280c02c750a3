"""Whisper (speech to text): generated tokens explained over the encoder's frames (decoder->encoder cross-attention,
Eq. 10), over the input features' time steps (the convolutional stem's token map) and the earlier tokens; every
method, batched == alone, causality, lean == eager, LRP conservation in float64, generate's decoder start token."""

from functools import lru_cache

import pytest
import torch
from helpers import assert_last_layer_rows, assert_same_state, model_state, whisper, whisper_features
from methods_under_test import MAY_VANISH, METHODS

from captum_mm.adapters.whisper import frames_to_time
from captum_mm.attr import GenericAttention, RawAttention
from captum_mm.attr.catalog import PAPER_METHODS, REFERENCE_DETR
from captum_mm.attr.engine import forward_pass
from captum_mm.generation import generation_forward

CONTINUATION = [[5, 6, 7], [8, 9], [10]]


@lru_cache(maxsize=None)
def float64_model(layers: int = 1):
    torch.manual_seed(0)
    return whisper(layers).double()


def features(batch=3, dtype=torch.float64):
    return {"input_features": whisper_features(batch)["input_features"].to(dtype)}


def test_token_map_and_schedule():
    assert frames_to_time(2).tolist() == [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
    model = whisper(layers=2)
    forward, arguments, target = generation_forward(model, features(dtype=torch.float32), CONTINUATION, False, None)
    with forward_pass(model, forward, arguments, target=target, needs=RawAttention.needs) as run:
        schedule = run.schedule
    assert [(e.query, e.key) for e in schedule.events] == [("source", "source")] * 2 + [("target", "target"), ("target", "source")] * 2
    assert schedule.sizes == {"source": 16, "target": 4} and schedule.masks["source"].all()
    assert schedule.outputs["frames"].pair == ("target", "source") and schedule.outputs["generated"].pair == ("target", "target")
    assert schedule.outputs["frames"].rows.tolist() == [0, 1, 2, 0, 1, 0]


def test_raw_attention_reads_the_models_own_eager_maps_and_audio_is_frames_over_time():
    model = whisper(layers=2)
    batch = features(batch=1, dtype=torch.float32)
    explanation = RawAttention(model).explain(batch, continuation=[[5, 6, 7]])
    assert_last_layer_rows(model, batch, torch.tensor([[1, 5, 6, 7]]), explanation.frames[0], explanation.generated[0])
    assert explanation.audio.shape == (1, 3, 1, 32)
    torch.testing.assert_close(explanation.audio[:, :, 0], explanation.frames.repeat_interleave(2, dim=-1) / 2)


def test_the_audio_changes_the_logits_and_the_cross_attention():
    model, batch = whisper(layers=1), features(batch=2, dtype=torch.float32)
    decoder = torch.tensor([[1, 5, 6]] * 2)
    with torch.no_grad():
        logits = model(**batch, decoder_input_ids=decoder).logits
    assert (logits[0] - logits[1]).abs().max() > 1e-2
    frames = RawAttention(model).explain(batch, continuation=[[5, 6]] * 2).frames
    assert (frames - 1 / 16).abs().max() > 1e-2  # not the uniform map of an unseen audio


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_batched_equals_each_sample_alone(method):
    """Different audio per sample; batching pads only the continuation (Whisper has no encoder padding)."""
    model, batch = float64_model(), features()
    explanation = METHODS[method](model).explain(batch, continuation=CONTINUATION)
    assert explanation.frames.shape == (3, 3, 16) and explanation.audio.shape == (3, 3, 1, 32)
    assert method in MAY_VANISH or explanation.frames.abs().sum() > 0
    for index, tokens in enumerate(CONTINUATION):
        alone = METHODS[method](model).explain({"input_features": batch["input_features"][index : index + 1]}, continuation=[tokens])
        steps = len(tokens)
        for name in ("frames", "audio", "generated"):
            batched = explanation.outputs()[name][index, :steps]
            batched = batched[..., :steps] if name == "generated" else batched
            torch.testing.assert_close(batched, alone.outputs()[name][0], atol=1e-12, rtol=1e-9)
        assert explanation.frames[index, steps:].abs().sum() == 0


@pytest.mark.parametrize("method", list({**PAPER_METHODS, **REFERENCE_DETR}))
def test_a_generated_tokens_relevance_ignores_later_tokens(method):
    model, batch = float64_model(), features(batch=1)
    short, longer = (METHODS_BY_NAME[method](model).explain(batch, continuation=[t]) for t in ([5, 6, 7], [5, 6, 9, 10, 11]))
    for k in (0, 1):
        for name in ("frames", "audio"):
            reference = short.outputs()[name][0, k]
            scale = float(reference.abs().max()) or 1.0
            torch.testing.assert_close(longer.outputs()[name][0, k], reference, atol=1e-10 * scale, rtol=0.0)
        torch.testing.assert_close(longer.generated[0, k, :k], short.generated[0, k, :k], atol=1e-10, rtol=0.0)
        assert short.generated[0, k, k:].abs().sum() == 0


METHODS_BY_NAME = {**PAPER_METHODS, **REFERENCE_DETR}


@pytest.mark.parametrize("method", ["generic", "raw-attention", "rollout", "grad-cam"])
def test_lean_equals_eager(method):
    model, batch = whisper(layers=1), features(dtype=torch.float32)
    forward, arguments, target = generation_forward(model, batch, CONTINUATION, False, None)
    with forward_pass(model, forward, arguments, target=target, needs=METHODS[method](model).needs) as run:
        assert all(call.lean is not None for call in run.record.calls) and run.record.calls
    lean, eager = METHODS[method](model), METHODS[method](model)
    eager.lean = False
    lean, eager = lean.explain(batch, continuation=CONTINUATION), eager.explain(batch, continuation=CONTINUATION)
    for name in ("frames", "audio", "generated"):
        torch.testing.assert_close(lean.outputs()[name], eager.outputs()[name], rtol=1e-5, atol=1e-6)


def test_lrp_conserves_relevance_at_every_layer():
    """What reaches the decoder's first layer and the encoder's output sum to the token's 1; every encoder layer passes
    on what reaches the encoder's output (the relevance over time then comes from the token map, not the convolutions)."""
    from helpers import generation_relevance

    torch.manual_seed(0)
    model = whisper(layers=3).double()
    encoder, decoder = model.model.encoder, model.model.decoder
    cuts = {f"encoder layer {k}": (layer, "input") for k, layer in enumerate(encoder.layers)}
    cuts.update({f"decoder layer {k}": (layer, "input") for k, layer in enumerate(decoder.layers)})
    cuts.update({"encoder output": (encoder.layer_norm, "output"), "final norm": (decoder.layer_norm, "input")})
    relevance = generation_relevance(model, features(batch=2), [[5, 6], [7, 8]], cuts)
    one, source = torch.ones(2, dtype=torch.float64), relevance["encoder output"]
    assert torch.allclose(relevance["final norm"], one, atol=1e-8)
    assert (source.abs() > 1e-3).all()
    for k in range(3):
        assert torch.allclose(relevance[f"encoder layer {k}"], source, atol=1e-8), k
    assert torch.allclose(relevance["decoder layer 0"] + source, one, atol=1e-8)


def test_generate_explains_every_new_token_after_the_start_token():
    """Whisper's generate leaves its decoder start token out of its plain output (and in its dictionary output): the
    explained tokens are all the new ones, predicted after the start token."""
    model, batch = whisper(layers=1), features(dtype=torch.float32)
    arguments = {"max_new_tokens": 3, "do_sample": False}
    with torch.no_grad():
        plain = model.generate(**batch, **arguments)
        result = model.generate(**batch, **arguments, output_logits=True, return_dict_in_generate=True)
    assert plain.shape == (3, 3) and torch.equal(result.sequences[:, 1:], plain)  # the plain tensor lacks the start token
    generated = GenericAttention(model).explain(batch, generate=True, generation_args=arguments)
    assert torch.equal(generated.target, plain)
    probabilities = torch.stack([step.softmax(-1) for step in result.logits], 1).gather(-1, plain[..., None])[..., 0]
    torch.testing.assert_close(generated.scores, probabilities, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(generated.frames, GenericAttention(model).explain(batch, continuation=plain).frames)


def test_model_left_as_it_was_clear_errors_and_attribute():
    model, batch = whisper(layers=1), features(batch=2, dtype=torch.float32)
    with torch.no_grad():
        model(**batch, decoder_input_ids=torch.tensor([[1], [1]]))
    before = model_state(model)
    GenericAttention(model).explain(batch, continuation=[[5], [6]])
    with pytest.raises(ValueError, match="exactly 32 time steps"):
        GenericAttention(model).explain({"input_features": batch["input_features"][..., :30]}, continuation=[[5], [6]])
    with pytest.raises(ValueError, match="needs the prompt's input_features"):  # a text prompt (Captum's LLM inputs)
        GenericAttention(model).explain({"input_ids": torch.tensor([[5, 6]])}, continuation=[[5]])
    with pytest.warns(UserWarning, match="attention_mask is ignored"):
        GenericAttention(model).explain(dict(batch, attention_mask=torch.ones(2, 32, dtype=torch.long)), continuation=[[5], [6]])
    decoder = torch.tensor([[1, 5], [1, 6]])
    spread = GenericAttention(model).attribute(batch["input_features"], additional_forward_args=(None, decoder))
    explanation = GenericAttention(model).explain(batch["input_features"], additional_forward_args=(None, decoder))
    assert spread.shape == batch["input_features"].shape
    torch.testing.assert_close(spread, explanation.audio.expand(-1, 8, -1))
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("method", ["generic", "partial-lrp", "transformer-attribution", "generic-lrp", "attnlrp"])
def test_half_precision(method):
    """float16 and bfloat16 models: finite float32 relevance; LRP runs on the half weights in float32, exactly."""
    from helpers import in_dtype
    from methods_under_test import LRP_BASED

    model, batch = whisper(layers=1), features(batch=2, dtype=torch.float32)
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    for dtype in (torch.float16, torch.bfloat16):
        model.float().load_state_dict(weights)
        half = METHODS[method](model).explain(in_dtype(model, batch, dtype), continuation=[[5, 6], [7]])
        assert next(model.parameters()).dtype == dtype and half.scores.dtype == torch.float32
        assert all(value.dtype == torch.float32 and torch.isfinite(value).all() for value in half.outputs().values())
        assert half.frames.abs().sum() > 0
        if method in LRP_BASED:
            rounded = in_dtype(model, batch, dtype)
            single = METHODS[method](model).explain(in_dtype(model, rounded, torch.float32), continuation=[[5, 6], [7]])
            for name, value in single.outputs().items():
                torch.testing.assert_close(half.outputs()[name], value, atol=0.0, rtol=0.0)
