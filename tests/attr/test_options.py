"""Options are arguments: ``max_memory`` and ``lean`` of ``explain``/``attribute`` (None: the explainer's attribute,
which they override for one call only), DETR's ``threshold``; bad values are refused."""

import math
import warnings
from contextlib import contextmanager

import pytest
import torch

from captum_mm.attr import GenericAttention, _base, _memory
from captum_mm.models import TargetOptions
from helpers import detr_case, language_model, prompt_batch, vit_case

CONTINUATION = [[5, 6, 7], [7, 9], [8]]


def prompt():
    torch.manual_seed(0)
    ids, mask = prompt_batch()
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture
def runs(monkeypatch):
    """Per explanation: the slot groups it was explained in, and whether each attention call was captured lean."""
    groups, lean = [], []
    forward_pass = _base.forward_pass

    def slot_groups(*args):
        result = _memory.slot_groups(*args)
        groups.append([group.tolist() for group in result])
        return result

    @contextmanager
    def recording(*args, **kwargs):
        with forward_pass(*args, **kwargs) as run:
            lean.append([call.lean is not None for call in run.record.calls])
            yield run

    monkeypatch.setattr(_base, "slot_groups", slot_groups)
    monkeypatch.setattr(_base, "forward_pass", recording)
    return groups, lean


def assert_same(explanation, reference):
    assert explanation.relevance.keys() == reference.relevance.keys()
    for name in reference.relevance:
        torch.testing.assert_close(explanation.relevance[name], reference.relevance[name], rtol=0, atol=0)


def test_max_memory_argument_equals_the_attribute_and_overrides_it_for_one_call(runs):
    groups, _ = runs
    model = language_model("llama")
    by_attribute = GenericAttention(model)
    by_attribute.max_memory = 1  # less than any element needs: one backward (one generated position) at a time
    with pytest.warns(UserWarning, match="max_memory=1 bytes is less than"):
        expected = by_attribute.explain(prompt(), continuation=CONTINUATION)
    explainer = GenericAttention(model)
    with pytest.warns(UserWarning, match="max_memory=1 bytes is less than"):
        assert_same(explainer.explain(prompt(), continuation=CONTINUATION, max_memory=1), expected)
    assert explainer.max_memory == "auto"  # the argument leaves the attribute as it was
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unlimited = by_attribute.explain(prompt(), continuation=CONTINUATION, max_memory=math.inf)
    assert_same(unlimited, expected)
    assert groups == [[[0], [1], [2]], [[0], [1], [2]], [[0, 1, 2]]]


def test_lean_argument_chooses_the_path_and_overrides_the_attribute(runs):
    _, lean = runs
    model = language_model("llama")
    explainer = GenericAttention(model)
    eager = explainer.explain(prompt(), continuation=CONTINUATION, lean=False)
    default = explainer.explain(prompt(), continuation=CONTINUATION)
    explainer.lean = False
    by_attribute = explainer.explain(prompt(), continuation=CONTINUATION)
    overridden = explainer.explain(prompt(), continuation=CONTINUATION, lean=True)
    assert [set(calls) for calls in lean] == [{False}, {True}, {False}, {True}]
    assert_same(by_attribute, eager)
    for name in eager.relevance:
        torch.testing.assert_close(default.relevance[name], eager.relevance[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(overridden.relevance[name], default.relevance[name], rtol=0, atol=0)


def test_attribute_takes_max_memory_and_lean(runs):
    groups, lean = runs
    case = vit_case()
    explainer = GenericAttention(case.model)
    eager = explainer.attribute(case.inputs[0], lean=False, max_memory=math.inf)
    lean_attribution = explainer.attribute(case.inputs[0])
    assert [set(calls) for calls in lean] == [{False}, {True}]
    assert groups[0] == [[0]]  # a classifier's one backward slot
    torch.testing.assert_close(lean_attribution, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("wrong", ["half", 0, -5, 0.5, True, math.nan])
def test_bad_max_memory_is_refused(wrong):
    case = vit_case()
    explainer = GenericAttention(case.model)
    with pytest.raises(ValueError, match='max_memory must be a number of bytes \\(at least 1\\), "auto" or None'):
        explainer.explain(case.inputs, max_memory=wrong)
    with pytest.raises(ValueError, match="max_memory must be a number of bytes"):
        explainer.attribute(case.inputs[0], max_memory=wrong)
    explainer.max_memory = wrong  # the attribute is checked as well
    with pytest.raises(ValueError, match="max_memory must be a number of bytes"):
        explainer.explain(case.inputs)


@pytest.mark.parametrize("wrong", ["no", 0, 1])
def test_bad_lean_is_refused(wrong):
    case = vit_case()
    explainer = GenericAttention(case.model)
    with pytest.raises(ValueError, match=r"lean must be True or False \(None as an argument: the explainer's lean\)"):
        explainer.explain(case.inputs, lean=wrong)
    with pytest.raises(ValueError, match="lean must be True or False"):
        explainer.attribute(case.inputs[0], lean=wrong)


def test_detr_threshold_keeps_the_queries_above_it():
    case = detr_case()
    with torch.no_grad():
        scores = case.model(*case.inputs).logits.softmax(-1)[..., :-1].max(-1).values
    threshold = float(scores.flatten().sort().values[5])  # some queries above it, some not
    explanation = GenericAttention(case.model).explain(case.inputs, threshold=threshold)
    kept = [sorted(row.nonzero().flatten().tolist()) for row in scores > threshold]
    explained = [sorted(q for q in row.tolist() if q >= 0) for row in explanation.queries]
    assert explained == kept and 0 < sum(map(len, kept)) < scores.numel()


@pytest.mark.parametrize("options", [{"threshold": True}, {"threshold": "0.5"}, {"threshold": math.nan}, {"threshold": 1.0},
                                     {"threshold": -0.1}, {"single": "yes"}])
def test_bad_target_options_are_refused(options):
    with pytest.raises(ValueError, match="threshold must be in \\[0, 1\\)|single must be a bool"):
        TargetOptions(**options)
