"""Lean capture (inside transformers' attention function, no per-head map kept) against the eager path, its
oracle: the same relevance on every family whose attention function it computes, for every method that can
use it; the model left as it was."""

import pytest
import torch
from torch import nn
from transformers.masking_utils import eager_mask
from helpers import (
    CASES,
    ENCODER_DECODERS,
    LANGUAGE_MODELS,
    VLMS,
    assert_same_state,
    blip2,
    encoder_decoder_model,
    family_prompts,
    language_model,
    model_state,
    prompt_batch,
    qwen3_vl,
)
from methods_under_test import MAY_VANISH

from captum_mm.attr import AttentionGradCam, AttentionRollout, GenericAttention, RawAttention
from captum_mm.attr.engine import forward_pass
from captum_mm.capture import chunks
from captum_mm.capture.lean import LeanRequest, LeanSite, lean_attention, lean_backward, recording, stop_recording
from captum_mm.generation import generation_forward

LEAN_METHODS = {
    "generic": GenericAttention,
    "generic-no-aggregation": lambda *models: GenericAttention(*models, normalize=False, aggregate=False),
    "raw-attention": RawAttention,
    "rollout": AttentionRollout,
    "grad-cam": AttentionGradCam,
}
CONTINUATION = [[5, 6], [7], [8, 9]]
#: Families whose attention goes through transformers' AttentionInterface (LXMERT, VisualBERT, ViLT and BLIP write
#: theirs inline: eager path).
CLASSIFIERS = ["vit", "bert", "clip", "detr"]


def generative(family):
    """A generative model of the family and its prompt."""
    if family in LANGUAGE_MODELS:
        ids, mask = prompt_batch()
        return language_model(family), {"input_ids": ids, "attention_mask": mask}
    if family in ENCODER_DECODERS:
        ids, mask = prompt_batch()
        return encoder_decoder_model(family), {"input_ids": ids, "attention_mask": mask}
    if family.startswith("blip2"):
        return blip2(language=family.split("-")[1]), family_prompts("blip2")
    if family == "qwen3_vl_moe":
        return qwen3_vl(moe=True), family_prompts("qwen3_vl")
    return VLMS[family](), family_prompts(family)


GENERATIVE = sorted(LANGUAGE_MODELS) + sorted(ENCODER_DECODERS) + sorted(VLMS) + ["blip2-llama", "blip2-opt", "blip2-t5", "qwen3_vl_moe"]


def lean_calls(model, prompt, method):
    forward, arguments, target = generation_forward(model, prompt, CONTINUATION, False, None)
    with forward_pass(model, forward, arguments, target=target, needs=method.needs) as run:
        return [call.lean is not None for call in run.record.calls]


def explanations(make, explain):
    lean, eager = make(), make()
    eager.lean = False
    return explain(lean), explain(eager)


def assert_same(lean, eager, method):
    assert lean.relevance.keys() == eager.relevance.keys()
    for name in lean.relevance:
        torch.testing.assert_close(lean.relevance[name], eager.relevance[name], rtol=1e-5, atol=1e-6)
    assert method in MAY_VANISH or any(bool(values.abs().sum() > 0) for values in lean.relevance.values())


@pytest.mark.parametrize("method", sorted(LEAN_METHODS))
@pytest.mark.parametrize("family", GENERATIVE)
def test_lean_equals_eager_on_generated_tokens(family, method):
    model, prompt = generative(family)
    forward, arguments, _ = generation_forward(model, prompt, CONTINUATION, False, None)
    with torch.no_grad():
        forward(*arguments)  # HF installs its own output-capture hooks on a model's first forward
    before = model_state(model)
    make = lambda: LEAN_METHODS[method](model)  # noqa: E731
    lean, eager = explanations(make, lambda explainer: explainer.explain(prompt, continuation=CONTINUATION))
    assert_same(lean, eager, method)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("method", sorted(LEAN_METHODS))
@pytest.mark.parametrize("family", CLASSIFIERS)
def test_lean_equals_eager_on_classifiers(family, method):
    case = CASES[family]()
    make = lambda: LEAN_METHODS[method](case.forward, case.model)  # noqa: E731
    options = {"threshold": 0.0} if family == "detr" else {}  # every DETR query
    lean, eager = explanations(make, lambda e: e.explain(case.inputs, additional_forward_args=case.additional, **options))
    assert_same(lean, eager, method)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "bart", "t5", "llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "blip2-opt"])
def test_every_attention_interface_call_is_captured_lean(family):
    """The LMs', the vision towers' and BLIP-2's Q-Former's calls are lean; Qwen2-VL's vision tower (its weights
    recorded inside its own eager function) stays on the eager path, as Qwen2.5-VL's."""
    model, prompt = generative(family)
    calls = lean_calls(model, prompt, GenericAttention(model))
    eager_calls = {"qwen2_vl": 2, "qwen2_5_vl": 2, "qwen3_vl": 2, "qwen3_vl_moe": 2}.get(family, 0)
    assert calls.count(False) == eager_calls and calls.count(True) == len(calls) - eager_calls > 0
    lrp = GenericAttention(model, head_weighting="lrp")  # the LRP rules need the probabilities: eager
    assert not any(lean_calls(model, prompt, lrp))


def test_grad_cam_weights_use_only_real_entries_also_lean():
    """Grad-CAM's head weights average the gradient over the entries between real tokens; the lean backward gets
    each explained sample's masks: a left-padded sample gets what it gets alone."""
    model = language_model("llama")
    ids, mask = prompt_batch()
    batched = AttentionGradCam(model).explain({"input_ids": ids, "attention_mask": mask}, continuation=CONTINUATION)
    alone = AttentionGradCam(model).explain({"input_ids": ids[1:2, 2:]}, continuation=[CONTINUATION[1]])
    torch.testing.assert_close(batched.text[1, :1, 2:], alone.text[0, :1], rtol=1e-5, atol=1e-6)


def test_lean_backward_chunks_rows_as_one(monkeypatch):
    """Chunks of query rows (forced to one row each) give the same maps as one chunk."""
    model = language_model("llama")
    ids, mask = prompt_batch()
    whole = GenericAttention(model).explain({"input_ids": ids, "attention_mask": mask}, continuation=CONTINUATION)
    monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", 1)
    rows = GenericAttention(model).explain({"input_ids": ids, "attention_mask": mask}, continuation=CONTINUATION)
    torch.testing.assert_close(rows.text, whole.text)
    torch.testing.assert_close(rows.generated, whole.generated)


def lean_call(query, key, value, mask, bias, forward_fusion, grad):
    """One lean call, forward and backward: its output, ``dQ, dK, dV, dbias``, head mean and Eq. 5's map."""
    layer, calls = nn.Module(), []
    tokens = recording({id(layer): LeanSite(lambda mean, maps, again: calls.append((mean, maps)), forward_fusion, None, True)})
    try:
        output, _ = lean_attention(layer, query, key, value, mask, scaling=0.3, position_bias=bias)
        real = torch.ones(query.shape[0], query.shape[2], dtype=torch.bool)
        request = LeanRequest(calls[0][1], "gradient_weighted", real, real)
        grads, (fused,) = lean_backward([request], lambda: torch.autograd.grad(output, (query, key, value, bias), grad))
    finally:
        stop_recording(tokens)
    return output, grads, calls[0][0], fused


@pytest.mark.parametrize("elements", [None, 40])
@pytest.mark.parametrize("forward_fusion", [None, "head_mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_lean_call_equals_eager_attention_under_autograd(dtype, forward_fusion, elements, monkeypatch):
    """4 query heads on 2 key/value heads, a causal mask with left padding (fully masked rows included) and an
    additive bias, in one chunk or chunks of a few rows: the output (SDPA's kernel, or by hand for the head mean),
    ``dQ, dK, dV``, the bias's gradient, the head mean and Eq. 5's map equal eager attention's under autograd."""
    if elements is not None:
        monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", elements)
    torch.manual_seed(0)
    query = torch.randn(2, 4, 9, 8, dtype=dtype, requires_grad=True)
    key, value = (torch.randn(2, 2, 9, 8, dtype=dtype, requires_grad=True) for _ in range(2))
    bias = torch.randn(1, 4, 9, 9, dtype=dtype, requires_grad=True)
    real = torch.ones(2, 9, dtype=torch.bool)
    real[1, :3] = False
    mask, grad = eager_mask(2, 9, 9, attention_mask=real, dtype=dtype), torch.randn(2, 9, 4, 8, dtype=dtype)
    output, grads, mean, fused = lean_call(query, key, value, mask, bias, forward_fusion, grad)
    scores = query @ key.repeat_interleave(2, 1).transpose(-1, -2) * 0.3 + bias + mask
    probs = torch.softmax(scores, dim=-1)
    expected = (probs @ value.repeat_interleave(2, 1)).transpose(1, 2)
    *expected_grads, grad_probs = torch.autograd.grad(expected, (query, key, value, bias, probs), grad)
    torch.testing.assert_close(output, expected)
    for found, wanted in zip(grads, expected_grads):
        torch.testing.assert_close(found, wanted)
    torch.testing.assert_close(fused, (grad_probs * probs).clamp(min=0).mean(1))
    assert (mean is None) == (forward_fusion is None)
    if mean is not None:
        torch.testing.assert_close(mean, probs.detach().mean(1))


def test_a_backward_computes_only_the_requested_lean_maps_and_leaves_none_behind():
    """Only the lean calls a backward is asked for compute a map (the later layers it passes through compute none), and
    the captured calls keep neither request nor map afterwards."""
    model = language_model("llama")
    ids, mask = prompt_batch()
    forward, arguments, target = generation_forward(model, {"input_ids": ids, "attention_mask": mask}, CONTINUATION, False, None)
    with forward_pass(model, forward, arguments, target=target, needs=GenericAttention(model).needs) as run:
        lean = [call.lean for call in run.record.calls if call.lean is not None]
        first, (batch, _, queries, keys) = lean[0], lean[0].shape
        request = LeanRequest(first, "gradient_weighted", torch.ones(batch, queries, dtype=torch.bool), torch.ones(batch, keys, dtype=torch.bool))

        def backward():
            torch.autograd.grad(run.logits, [first.probe], run.selection.grad_outputs[0], retain_graph=True)
            return [maps._exchange.fused for maps in lean]

        during, (fused,) = lean_backward([request], backward)
    assert len(lean) > 1 and during[0] is fused and fused.abs().sum() > 0
    assert all(other is None for other in during[1:])
    assert all(maps._exchange.request is None and maps._exchange.fused is None for maps in lean)


def test_training_mode_falls_back_to_the_eager_path():
    model = language_model("llama")
    ids, mask = prompt_batch()
    model.train()
    try:
        assert not any(lean_calls(model, {"input_ids": ids, "attention_mask": mask}, GenericAttention(model)))
    finally:
        model.eval()


def test_an_sdpa_model_is_switched_to_lean_and_back():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**language_model("llama").config.to_dict(), "attn_implementation": "sdpa"})
    model = LlamaForCausalLM(config).eval()
    ids, mask = prompt_batch()
    before = model_state(model)
    assert model.config._attn_implementation == "sdpa"
    explanation = GenericAttention(model).explain({"input_ids": ids, "attention_mask": mask}, continuation=CONTINUATION)
    assert explanation.text.abs().sum() > 0 and model.config._attn_implementation == "sdpa"
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("method", ["generic", "grad-cam", "transformer-attribution"])
@pytest.mark.parametrize("family", ["llama", "llava", "bart"])
def test_a_memory_budget_explains_in_groups_with_the_same_results(family, method, monkeypatch):
    from methods_under_test import METHODS

    from captum_mm.attr import _memory

    model, prompt = generative(family)
    whole = METHODS[method](model).explain(prompt, continuation=CONTINUATION)
    groups = []
    slot_groups = _memory.slot_groups
    monkeypatch.setattr("captum_mm.attr._base.slot_groups", lambda *a: groups.extend(slot_groups(*a)) or groups)
    budgeted = METHODS[method](model)
    budgeted.max_memory = 1  # less than any element needs: one backward (one generated position) at a time
    with pytest.warns(UserWarning, match="max_memory=1 bytes is less than one backward's explained elements need"):
        grouped = budgeted.explain(prompt, continuation=CONTINUATION)
    assert len(groups) == 2  # the two continuation positions
    for name in whole.relevance:
        torch.testing.assert_close(grouped.relevance[name], whole.relevance[name])
