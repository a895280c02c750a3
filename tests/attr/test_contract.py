"""The contract every method keeps, on every supported family (written once, run over all methods)."""

import pytest
import torch
from captum.metrics import infidelity, sensitivity_max

from methods_under_test import MAY_VANISH, METHODS, SIGNED
from helpers import CASES, FEATURES, assert_same_state, detr_case, lxmert, model_state, text_batch

pytestmark = pytest.mark.parametrize("method", sorted(METHODS))
FAMILIES = pytest.mark.parametrize("family", sorted(CASES))


@FAMILIES
def test_shapes_finite_non_negative(method, family):
    case = CASES[family]()
    explainer = METHODS[method](case.forward, case.model)
    batch = case.inputs[0].shape[0]
    target = case.target(batch)
    explanation = explainer.explain(case.inputs, target, case.additional, threshold=0.0)  # DETR: all 6 queries
    assert set(explanation.outputs()) == set(case.shapes)
    for name, shape in case.shapes.items():
        values = getattr(explanation, name)
        assert values.shape == shape and torch.isfinite(values).all()
        if method not in SIGNED:
            assert (values >= 0).all()
        if method not in MAY_VANISH:
            assert values.abs().sum() > 0
    if family == "detr":
        assert explanation.queries.tolist() == [list(range(6))] * batch
    attributions = explainer.attribute(case.inputs, target, case.additional)
    assert isinstance(attributions, tuple) and len(attributions) == len(case.inputs)
    for attribution, tensor in zip(attributions, case.inputs):
        assert attribution.shape == tensor.shape and attribution.is_floating_point()


@FAMILIES
def test_batched_equals_one_by_one_and_padding_gets_zero(method, family):
    case = CASES[family]()
    batch = case.inputs[0].shape[0]
    explainer = METHODS[method](case.forward, case.model)
    target = [[0, 3]] * batch if family == "detr" else case.target(batch)
    batched = explainer.explain(case.inputs, target, case.additional)
    for index in range(batch):
        inputs, additional = case.alone(index)
        alone_target = target[index:index + 1] if target is not None else None
        alone = explainer.explain(inputs, alone_target, additional)
        for name in case.outputs:
            together, single = getattr(batched, name)[index], getattr(alone, name)[0]
            length = single.shape[0]
            assert torch.allclose(together[:length], single, atol=1e-5, rtol=1e-4), (name, index)
            assert not together[length:].any()


def test_detr_padded_images(method):
    case = detr_case()
    pixels = case.inputs[0].clone()
    mask = torch.ones(2, 64, 96, dtype=torch.long)
    mask[1, :, 64:] = 0  # the second image is 64 x 64, padded to 96 wide
    pixels[1, :, :, 64:] = 0
    explainer = METHODS[method](case.model)
    batched = explainer.explain(pixels, [[0, 3]] * 2, (mask,))
    alone = explainer.explain(pixels[1:], [[0, 3]], (mask[1:],))
    assert torch.allclose(batched.image[1], alone.image[0], atol=1e-5, rtol=1e-4)
    assert not batched.image[1, :, :, 2:].any()  # cells of the padding carry no relevance


@FAMILIES
def test_model_left_unchanged_also_after_errors(method, family):
    case = CASES[family]()  # built with the default (SDPA where supported) attention, switched to eager while explaining
    model = case.model
    case.forward(*case.inputs, *case.additional)  # transformers installs its own hooks on first use
    before = model_state(model)
    explainer = METHODS[method](case.forward, model)
    explainer.attribute(case.inputs, case.target(case.inputs[0].shape[0]), case.additional)
    assert_same_state(before, model_state(model))
    bad_target, message = {"detr": ([[99], [0]], "out of range"), "clip": (1, "pass target=None")}.get(family, (99, "out of range"))
    with pytest.raises(ValueError, match=message):
        explainer.explain(case.inputs, bad_target, case.additional)
    assert_same_state(before, model_state(model))

    def failing(*arguments):
        case.forward(*arguments)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        METHODS[method](failing, model).attribute(case.inputs, None, case.additional)
    assert_same_state(before, model_state(model))


def test_detr_returns_to_sdpa(method):
    case = detr_case()
    model = case.model
    assert model.config._attn_implementation == "sdpa"
    METHODS[method](model).attribute(case.inputs)
    assert model.config._attn_implementation == "sdpa"


def test_frozen_model_under_no_grad(method):
    case = CASES["lxmert"]()
    case.model.requires_grad_(False)
    before = model_state(case.model)
    with torch.no_grad():
        explanation = METHODS[method](case.model).explain(case.inputs, None, case.additional)
    assert explanation.text.abs().sum() > 0 or method in MAY_VANISH
    assert_same_state(before, model_state(case.model))


def test_captum_metrics_accept_the_attributions(method):
    model = lxmert()
    ids, mask = text_batch(2)
    feats, boxes = torch.randn(2, 5, FEATURES), torch.rand(2, 5, 4)

    def forward(visual_feats, visual_pos, input_ids, attention_mask):
        return model(input_ids=input_ids, visual_feats=visual_feats, visual_pos=visual_pos, attention_mask=attention_mask).question_answering_score

    explainer = METHODS[method](forward, model)
    target = torch.tensor([1, 2])
    kwargs = {"target": target, "additional_forward_args": (ids, mask)}
    attributions = explainer.attribute((feats, boxes), **kwargs)

    def perturb(inputs):
        visual_feats, visual_pos = inputs
        noise = 0.1 * torch.randn_like(visual_feats)
        return (noise, torch.zeros_like(visual_pos)), (visual_feats - noise, visual_pos)

    scores = infidelity(forward, perturb, (feats, boxes), attributions, n_perturb_samples=3, **kwargs)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    sensitivity = sensitivity_max(explainer.attribute, (feats, boxes), n_perturb_samples=2, **kwargs)
    assert sensitivity.shape == (2,) and torch.isfinite(sensitivity).all()


def test_vectorized_backward_equals_one_backward_per_query(method):
    case = detr_case()
    looped = METHODS[method](case.model)
    vectorized = METHODS[method](case.model)
    vectorized.vectorized_backward = True
    expected = looped.explain(case.inputs, threshold=0.0).image
    assert torch.allclose(vectorized.explain(case.inputs, threshold=0.0).image, expected, atol=1e-6, rtol=1e-5)


@FAMILIES
def test_float32_agrees_with_float64(method, family):
    """Relevance is a stable function of the model, not rounding noise."""
    case = CASES[family]()
    target = case.target(case.inputs[0].shape[0])
    explain = lambda: METHODS[method](case.forward, case.model).explain(case.inputs, target, case.additional, threshold=0.0)  # noqa: E731
    single = explain()
    case.model.double()
    case.inputs = tuple(t.double() if t.is_floating_point() else t for t in case.inputs)
    double = explain()
    for name in case.outputs:
        expected = getattr(double, name)
        scale = expected.abs().max().clamp(min=1e-12)
        assert ((getattr(single, name).double() - expected).abs().max() / scale) < 1e-3, name
