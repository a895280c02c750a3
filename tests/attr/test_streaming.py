"""Streaming row propagation (each self-attention map applied to the readout rows inside the backward pass, none kept)
against the stored maps, its oracle: the same relevance on every family and method that streams, streaming where it
applies by default, a hand-computed chunked update, and the order it relies on checked."""

import pytest
import torch
from helpers import CASES, LANGUAGE_MODELS, VLMS, in_dtype, language_model, prompt_batch
from test_lean import CLASSIFIERS, CONTINUATION, GENERATIVE, generative

from captum_mm.attr import AttentionGradCam, AttentionRollout, GenericAttention, RawAttention, TransformerAttribution
from captum_mm.attr import _memory, engine
from captum_mm.capture import chunks
from captum_mm.relevance import streaming
from captum_mm.relevance.schedule import AttentionEvent, Readout, Schedule
from captum_mm.relevance.streaming import RowRule, StreamedRows

STREAMED_METHODS = {
    "generic": GenericAttention,
    "generic-no-aggregation": lambda *models: GenericAttention(*models, normalize=False, aggregate=False),
    "transformer-attribution": TransformerAttribution,
    "grad-cam": AttentionGradCam,  # the last map's readout rows only
    "rollout": AttentionRollout,  # head means recomputed after the forward
    "raw-attention": RawAttention,
}
#: Families whose every schedule event is self-attention: their readout modality (text) is streamed, and a VLM's
#: vision tower continued from it through the token map.
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
                         + [(family, method) for family in ("llama", "gpt2", "llava", "qwen2_vl")
                            for method in ("generic-no-aggregation", "grad-cam", "rollout", "raw-attention")])
def test_streaming_equals_the_stored_maps_on_generated_tokens(family, method, streamed_updates):
    model, prompt = generative(family)
    make = lambda: STREAMED_METHODS[method](model)  # noqa: E731
    streamed, stored = streamed_and_stored(make, lambda e, on: e.explain(prompt, continuation=CONTINUATION, streaming=on))
    assert_same(streamed, stored)
    expected = set() if family not in SELF_ATTENTION_ONLY else {"sequence", "vision"} if family in VLMS or family == "qwen3_vl_moe" else {"sequence"}
    assert set(streamed_updates) == expected  # the default wherever it applies: a VLM's vision tower too


@pytest.mark.parametrize("method", ["generic", "transformer-attribution", "rollout"])
@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2_vl"])
def test_streaming_equals_the_stored_maps_in_float64(family, method):
    model, prompt = generative(family)
    prompt = in_dtype(model, prompt, torch.float64)
    make = lambda: STREAMED_METHODS[method](model)  # noqa: E731
    streamed, stored = streamed_and_stored(make, lambda e, on: e.explain(prompt, continuation=CONTINUATION, streaming=on))
    assert streamed.text.dtype == torch.float64
    assert_same(streamed, stored, torch.float64)


@pytest.mark.parametrize("method", ["generic", "transformer-attribution", "rollout", "raw-attention"])
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


@pytest.mark.parametrize("method", ["generic", "grad-cam", "rollout", "raw-attention"])
def test_streaming_in_chunks_of_one_row_equals_the_stored_maps(method, monkeypatch):
    """One row a chunk: Grad-CAM's second pass and raw attention's recomputation then compute only the readout rows'
    chunks, rollout's the rows its readout rows reach."""
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


@pytest.mark.parametrize("method", ["rollout", "raw-attention"])
def test_rollout_and_raw_attention_keep_no_map(method, monkeypatch):
    """Streamed, no lean call keeps its head mean (each is recomputed after the forward) and no map reaches the
    relevance; stored, every call keeps it."""
    model, prompt = generative("llava")
    seen = []
    without_backward = engine._maps_without_backward
    monkeypatch.setattr(engine, "_maps_without_backward", lambda schedule, events, calls, *rest: seen.append(
        [call.probs is None and call.recompute is not None for call in calls]) or without_backward(schedule, events, calls, *rest))
    kept = []
    method_class = STREAMED_METHODS[method]
    relevance = method_class.relevance_matrices
    monkeypatch.setattr(method_class, "relevance_matrices", lambda self, schedule, maps: kept.append(len(maps)) or relevance(self, schedule, maps))
    for streamed in (True, False):
        method_class(model).explain(prompt, continuation=CONTINUATION, streaming=streamed)
    assert all(seen[0]) and not any(seen[1]) and kept == [0, len(seen[1])]


def test_a_hand_computed_rollout_update():
    """Rollout's ``v <- v norm(A + I)`` streamed as ``v' + v' A`` with ``v' = v / s``, ``s`` a row's sum plus 1 over
    real keys: ``v = e_1`` (token 2 padding) through ``A2[1] = [0.5, 0.5, 7]`` (``s = 2``): ``v' = [0, 0.5, 0]``,
    ``v = [0.25, 0.75, 0]``; then ``A1 = [[1, 0, 0], [0.25, 0.75, 0], [9, 9, 9]]`` (``s = 2, 2``):
    ``v' = [0.125, 0.375, 0]``, ``v' A1 = [0.21875, 0.28125, 0]``, ``v = [0.34375, 0.65625, 0]``."""
    events = [AttentionEvent(0, "text", "text"), AttentionEvent(1, "text", "text")]
    schedule = Schedule({"text": 3}, {"text": torch.tensor([[True, True, False]])}, [(e,) for e in events],
                        {"text": Readout("text", torch.tensor([1]), "text")}, torch.tensor([0]))
    first = torch.tensor([[[1.0, 0, 0], [0.25, 0.75, 0], [9, 9, 9]]])
    second = torch.tensor([[[0.0, 0, 0], [0.5, 0.5, 7], [9, 9, 9]]])
    rule = RowRule(normalize=True)
    rows = StreamedRows(schedule, rule, frozenset({"text"}), torch.zeros(()))
    one_pass = rows.backward(torch.tensor([True]))
    for event, values in ((events[1], second), (events[0], first)):
        update = one_pass.update(event)
        update.add(slice(0, 2), slice(0, 3), values[:, :2])
        update.add(slice(2, 3), slice(0, 3), values[:, 2:])
        update.close()
    one_pass.finish()
    expected = torch.tensor([[0.34375, 0.65625, 0]])
    torch.testing.assert_close(rows.rows("text", torch.tensor([[0.0, 1, 0]]), rule), expected)
    masked = [values * torch.tensor([1.0, 1, 0])[:, None] * torch.tensor([1.0, 1, 0]) for values in (first, second)]
    stored = rule(rule(torch.tensor([[[0.0, 1, 0]]]), masked[1]), masked[0])  # the stored path's norm(A + I)
    torch.testing.assert_close(stored[:, 0], expected)


def test_a_memory_budget_prices_a_vlms_streamed_vision_rows(monkeypatch):
    """LLaVA: with the vision tower streamed an element costs its rows, not the tower's maps -- a budget of two slots'
    rows explains both slots at once (the same values), where stored maps need a backward a slot."""
    model, prompt = generative("llava")
    priced, groups = [], []
    element_bytes, slot_groups = _memory.element_bytes, _memory.slot_groups
    monkeypatch.setattr(_memory, "element_bytes", lambda *a: priced.append((a[-1], element_bytes(*a))) or priced[-1][1])
    monkeypatch.setattr("captum_mm.attr._base.slot_groups", lambda *a: groups.append(slot_groups(*a)) or groups[-1])
    GenericAttention(model).explain(prompt, continuation=CONTINUATION, max_memory=1 << 30)
    (streamed, rows), = priced
    assert streamed == {"sequence", "vision"}
    budget = 2 * 3 * rows  # two slots of three elements' rows
    explained = GenericAttention(model).explain(prompt, continuation=CONTINUATION, max_memory=budget)
    with pytest.warns(UserWarning, match="is less than one backward"):  # one slot's maps alone exceed it
        stored = GenericAttention(model).explain(prompt, continuation=CONTINUATION, max_memory=budget, streaming=False)
    assert [len(group) for group in groups[1:]] == [1, 2] and priced[2] == (frozenset(), priced[2][1]) and priced[2][1] > budget // 2
    assert_same(explained, stored)


@pytest.mark.parametrize("method", ["generic", "rollout", "grad-cam"])
@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_several_images_a_prompt_stream_their_units_placed(family, method, streamed_updates):
    """A prompt's images: the vision tower's lean maps, one per image, laid out block-diagonally after the forward,
    are streamed unit by unit at their tokens' positions (== the stored maps)."""
    from test_several_images import CONTINUATION as TWO_PROMPTS, prompts

    model, batch = VLMS[family](), prompts(family)
    make = lambda: STREAMED_METHODS[method](model)  # noqa: E731
    streamed, stored = streamed_and_stored(make, lambda e, on: e.explain(batch, continuation=TWO_PROMPTS, streaming=on))
    assert_same(streamed, stored)
    assert set(streamed_updates) == {"sequence", "vision"}


def test_a_hand_computed_unit_placement():
    """Two prompts holding 2 and 1 images of 2 tokens, laid out per prompt: image 0 at prompt 0's tokens 0-1, image 1
    at its tokens 2-3, image 2 at prompt 1's tokens 0-1 (its tokens 2-3 a missing image's zero block)."""
    from functools import partial

    from captum_mm.attr._placement import unit_placement
    from captum_mm.capture.lean import LeanMaps
    from captum_mm.capture.record import AttentionCall
    from captum_mm.capture.windows import images_on_diagonal

    call = AttentionCall(None, 0, None, lean=LeanMaps(torch.zeros(1), (3, 4, 2, 2)))  # type: ignore[arg-type]
    call.lay_out(partial(images_on_diagonal, counts=[2, 1]))
    owner, positions = unit_placement(call)
    assert owner.tolist() == [0, 0, 1] and positions.tolist() == [[0, 1], [2, 3], [0, 1]]
    call.lay_out(lambda maps: maps.transpose(-1, -2).flip(-1))  # entries moved off the diagonal: not a placement
    assert unit_placement(call) is None
