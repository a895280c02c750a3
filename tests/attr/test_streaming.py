"""Streaming row propagation (each self-attention map applied to the readout rows inside the backward pass, none kept)
against the stored maps, its oracle: the same relevance on every family and method that streams, streaming where it
applies by default, a hand-computed chunked update, and the order it relies on checked."""

import pytest
import torch
from helpers import CASES, LANGUAGE_MODELS, VLMS, in_dtype, language_model, prompt_batch
from test_lean import CLASSIFIERS, CONTINUATION, GENERATIVE, generative

from captum_mm.attr import AttentionGradCam, GenericAttention, TransformerAttribution
from captum_mm.attr import _memory
from captum_mm.capture import chunks
from captum_mm.relevance import streaming
from captum_mm.relevance.schedule import AttentionEvent, Readout, Schedule
from captum_mm.relevance.streaming import RowRule, StreamedRows

STREAMED_METHODS = {
    "generic": GenericAttention,
    "generic-no-aggregation": lambda *models: GenericAttention(*models, normalize=False, aggregate=False),
    "transformer-attribution": TransformerAttribution,
    "grad-cam": AttentionGradCam,  # the last map's readout rows only
}
#: Families whose every schedule event is self-attention: their readout modality (text) is streamed.
SELF_ATTENTION_ONLY = set(LANGUAGE_MODELS) | set(VLMS) | {"qwen3_vl_moe"}
TOLERANCE = {torch.float32: (1e-6, 1e-5), torch.float64: (1e-12, 1e-10)}


@pytest.fixture
def streamed_updates(monkeypatch):
    """The modality of every streamed event update, in order."""
    updates = []
    close = streaming.RowUpdate.close
    monkeypatch.setattr(streaming.RowUpdate, "close", lambda self: updates.append(self.modality) or close(self))
    return updates


def assert_same(streamed, stored, dtype=torch.float32):
    atol, rtol = TOLERANCE[dtype]
    assert streamed.relevance.keys() == stored.relevance.keys()
    for name in streamed.relevance:
        torch.testing.assert_close(streamed.relevance[name], stored.relevance[name], atol=atol, rtol=rtol)


def streamed_and_stored(make, explain):
    return explain(make(), True), explain(make(), False)


@pytest.mark.parametrize(("family", "method"), [(family, method) for family in GENERATIVE for method in ("generic", "transformer-attribution")
                                                if family in SELF_ATTENTION_ONLY or method == "generic"]
                         + [(family, method) for family in ("llama", "gpt2", "llava", "qwen2_vl") for method in ("generic-no-aggregation", "grad-cam")])
def test_streaming_equals_the_stored_maps_on_generated_tokens(family, method, streamed_updates):
    model, prompt = generative(family)
    make = lambda: STREAMED_METHODS[method](model)  # noqa: E731
    streamed, stored = streamed_and_stored(make, lambda e, on: e.explain(prompt, continuation=CONTINUATION, streaming=on))
    assert_same(streamed, stored)
    assert bool(streamed_updates) == (family in SELF_ATTENTION_ONLY)  # the default wherever it applies


@pytest.mark.parametrize("method", ["generic", "transformer-attribution"])
@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2_vl"])
def test_streaming_equals_the_stored_maps_in_float64(family, method):
    model, prompt = generative(family)
    prompt = in_dtype(model, prompt, torch.float64)
    make = lambda: STREAMED_METHODS[method](model)  # noqa: E731
    streamed, stored = streamed_and_stored(make, lambda e, on: e.explain(prompt, continuation=CONTINUATION, streaming=on))
    assert streamed.text.dtype == torch.float64
    assert_same(streamed, stored, torch.float64)


@pytest.mark.parametrize("method", ["generic", "transformer-attribution"])
@pytest.mark.parametrize("family", CLASSIFIERS + ["swin"])
def test_streaming_equals_the_stored_maps_on_classifiers(family, method, streamed_updates):
    """ViT, BERT, CLIP (both towers read from their own rows) and Swin (its last stage, the earlier one through it) stream, lean or eager; DETR
    (cross-attention) keeps its maps."""
    case = CASES[family]()
    options = {"threshold": 0.0} if family == "detr" else {}
    make = lambda: STREAMED_METHODS[method](case.forward, case.model)  # noqa: E731
    explain = lambda e, on: e.explain(case.inputs, additional_forward_args=case.additional, streaming=on, **options)  # noqa: E731
    streamed, stored = streamed_and_stored(make, explain)
    assert_same(streamed, stored)
    assert len(set(streamed_updates)) == {"clip": 2, "swin": 2, "detr": 0}.get(family, 1)  # Swin: both stages


@pytest.mark.parametrize("method", ["generic", "grad-cam"])
def test_streaming_in_chunks_of_one_row_equals_the_stored_maps(method, monkeypatch):
    """One row a chunk: Grad-CAM's second pass then computes only the readout rows' chunks."""
    model = language_model("llama")
    ids, mask = prompt_batch()
    prompt = {"input_ids": ids, "attention_mask": mask}
    stored = STREAMED_METHODS[method](model).explain(prompt, continuation=CONTINUATION, streaming=False)
    monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", 1)
    rows = STREAMED_METHODS[method](model).explain(prompt, continuation=CONTINUATION)
    torch.testing.assert_close(rows.text, stored.text, atol=1e-7, rtol=1e-6)


def test_streaming_keeps_no_map_and_a_memory_budget_counts_rows_only(monkeypatch):
    """The streamed group's maps dict is empty (the LM's), and ``max_memory`` prices an element by its rows: a budget
    too small for the stored maps explains everything at once when streamed."""
    model = language_model("llama")
    ids, mask = prompt_batch()
    prompt = {"input_ids": ids, "attention_mask": mask}
    kept, groups = [], []
    relevance = GenericAttention.relevance_matrices
    monkeypatch.setattr(GenericAttention, "relevance_matrices", lambda self, schedule, maps: kept.append(len(maps)) or relevance(self, schedule, maps))
    slot_groups = _memory.slot_groups
    monkeypatch.setattr("captum_mm.attr._base.slot_groups", lambda *a: groups.append(len(slot_groups(*a))) or slot_groups(*a))
    budget = 4000  # bytes: below one element's stored maps (2 layers x 8 x 8 floats and its blocks), above its rows
    GenericAttention(model).explain(prompt, continuation=CONTINUATION, max_memory=budget)
    with pytest.warns(UserWarning, match="max_memory=4000 bytes is less than"):
        GenericAttention(model).explain(prompt, continuation=CONTINUATION, max_memory=budget, streaming=False)
    assert kept == [0, 2, 2] and groups == [1, 2]


def test_a_hand_computed_streamed_update():
    """Rows ``v = e_1`` of 3 tokens (token 2 padding) through two events, last first, each map handed over in two
    chunks of rows: ``v1 = v + v A2 = [0.5, 1.5, 0]`` (``A2[1] = [0.5, 0.5, 7]``, the padding column dropped), then
    ``v0 = v1 + v1 A1`` with ``A1 = [[1, 0, 0], [0.25, 0.75, 0], [9, 9, 9]]``: ``v1 A1 = [0.875, 1.125, 0]``, so
    ``v0 = [1.375, 2.625, 0]`` (row 2 is padding: its 9s never count)."""
    events = [AttentionEvent(0, "text", "text"), AttentionEvent(1, "text", "text")]
    schedule = Schedule({"text": 3}, {"text": torch.tensor([[True, True, False]])}, [(e,) for e in events],
                        {"text": Readout("text", torch.tensor([1]), "text")}, torch.tensor([0]))
    first = torch.tensor([[[1.0, 0, 0], [0.25, 0.75, 0], [9, 9, 9]]])
    second = torch.tensor([[[0.0, 0, 0], [0.5, 0.5, 7], [9, 9, 9]]])
    rows = StreamedRows(schedule, RowRule(), frozenset({"text"}), torch.zeros(()))
    one_pass = rows.backward(torch.tensor([True]))
    for event, values in ((events[1], second), (events[0], first)):
        update = one_pass.update(event)
        update.add(slice(0, 2), slice(0, 3), values[:, :2])
        update.add(slice(2, 3), slice(0, 2), values[:, 2:, :2])
        update.close()
    one_pass.finish()
    torch.testing.assert_close(rows.rows("text", torch.tensor([[0.0, 1, 0]]), RowRule()), torch.tensor([[1.375, 2.625, 0]]))
    with pytest.raises(RuntimeError, match="streamed with"):
        rows.rows("text", torch.tensor([[0.0, 1, 0]]), RowRule(aggregate=False))
    out_of_order = rows.backward(torch.tensor([True]))
    with pytest.raises(RuntimeError, match="out of the reverse layer order"):
        out_of_order.update(events[0])
    with pytest.raises(RuntimeError, match="did not reach every attention"):
        out_of_order.finish()
