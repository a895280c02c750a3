"""Model states and inputs that cannot be explained: each gets a clear error (or a warning), never a wrong answer."""

import copy
import warnings
from dataclasses import dataclass

import pytest
import torch

from captum_mm.attr import AttentionRollout, GenericAttention, PartialLRP, RawAttention, TransformerAttribution, _base
from captum_mm.attr._checks import check_finite_map
from captum_mm.lrp import AlphaBeta, RuleSet
from helpers import CASES, VOCAB, detr_case, language_model, lxmert, lxmert_case
from methods_under_test import METHODS

BACKWARD_FREE = {"raw-attention", "rollout", "rollout-start-layer-1"}


def _dropout_warnings(caught):
    return [w for w in caught if issubclass(w.category, UserWarning) and "active dropout" in str(w.message)]


def test_training_mode_warns_once_per_call_and_leaves_the_mode():
    case = lxmert_case()
    model = case.model.train()
    active = sum(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    assert active > 0
    explainer = GenericAttention(model)
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            explainer.explain(case.inputs, None, case.additional)
        found = _dropout_warnings(caught)
        assert len(found) == 1
        assert f"with {active} active dropout modules" in str(found[0].message) and "model.eval()" in str(found[0].message)
    assert model.training


def test_eval_mode_and_zero_dropout_do_not_warn():
    case = lxmert_case()
    no_dropout = lxmert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GenericAttention(case.model).explain(case.inputs, None, case.additional)
        RawAttention(no_dropout).explain(case.inputs, None, case.additional)
    assert not _dropout_warnings(caught)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_inference_mode(method):
    case = lxmert_case()
    explainer = METHODS[method](case.forward, case.model)
    if method in BACKWARD_FREE:
        expected = explainer.explain(case.inputs, None, case.additional)
        with torch.inference_mode():
            found = explainer.explain(case.inputs, None, case.additional)
        assert torch.equal(found.text, expected.text) and torch.equal(found.image, expected.image)
        return
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"called under torch.inference_mode\(\).*torch.no_grad\(\) around the call is fine"):
        explainer.explain(case.inputs, None, case.additional)
    with torch.inference_mode():
        inputs = tuple(t.clone() for t in case.inputs)
    with pytest.raises(RuntimeError, match=r"an input was created under torch.inference_mode\(\).*x.clone\(\)"):
        explainer.explain(inputs, None, case.additional)


def test_no_grad_around_the_call_is_fine():
    case = lxmert_case()
    expected = GenericAttention(case.model).explain(case.inputs, None, case.additional)
    with torch.no_grad():
        found = GenericAttention(case.model).explain(case.inputs, None, case.additional)
    assert torch.equal(found.text, expected.text)


@pytest.mark.parametrize("method", ["generic", "partial-lrp", "transformer-attribution"])
def test_detr_inputs_made_under_inference_mode(method):
    """Nothing captum_mm needs depends on the frozen backbone, so it is not made to require grad."""
    case = detr_case()
    case.model.model.freeze_backbone()
    with torch.inference_mode():
        pixels = case.inputs[0].clone()
    explainer = METHODS[method](case.model)
    expected = explainer.explain(case.inputs, [[0, 3]] * 2)
    found = explainer.explain((pixels,), [[0, 3]] * 2)
    assert torch.equal(found.image, expected.image)
    assert not any(p.requires_grad for p in case.model.model.backbone.parameters())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_forward_func_that_detaches_its_output(method):
    case = lxmert_case()

    def detached(*args):
        return case.model(*args).question_answering_score.detach()

    explainer = METHODS[method](detached, case.model)
    if method in BACKWARD_FREE:
        explainer.explain(case.inputs, None, case.additional)  # needs no gradient
        return
    with pytest.raises(RuntimeError, match="must not detach its output"):
        explainer.explain(case.inputs, None, case.additional)


def _with_bad_sample(family: str, value: float):
    """A case whose sample 1 has a non-finite input (BERT: a non-finite embedding row only sample 1 uses)."""
    case = CASES[family]()
    inputs = list(case.inputs)
    floating = [i for i, t in enumerate(inputs) if t.is_floating_point()]
    if floating:
        inputs[floating[0]] = inputs[floating[0]].clone()
        inputs[floating[0]][1].view(-1)[0] = value
        return case, case.model, case.forward, tuple(inputs)
    model = copy.deepcopy(case.model)
    ids = inputs[0].clamp(max=VOCAB - 2)
    ids[1, 0] = VOCAB - 1
    with torch.no_grad():
        model.get_input_embeddings().weight[VOCAB - 1, 0] = value
    return case, model, model, (ids,)


@pytest.mark.parametrize("method", ["generic", "raw-attention", "partial-lrp", "transformer-attribution"])
@pytest.mark.parametrize("family", sorted(CASES))
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_names_the_sample(family, method, value):
    case, model, forward, inputs = _with_bad_sample(family, value)
    explainer = METHODS[method](forward, model)
    with pytest.raises(ValueError, match=r"NaN or infinite for samples \[1\]"):
        explainer.explain(inputs, None, case.additional)


def test_non_finite_attention_on_padding_is_ignored_elsewhere_named():
    probs = torch.rand(3, 2, 4, 4)
    valid = torch.ones(3, 4, 4, dtype=torch.bool)
    valid[1, 3] = False  # sample 1's last query is padding
    probs[1, :, 3] = float("nan")
    check_finite_map(probs, lambda: valid, torch.arange(3), "layer 0")
    probs[2, 1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"'layer 0' are NaN or infinite for samples \[2\]"):
        check_finite_map(probs, lambda: valid, torch.arange(3), "layer 0")
    # elements are mapped back to their samples (DETR: several queries of one image)
    with pytest.raises(ValueError, match=r"for samples \[2\]"):
        check_finite_map(probs, lambda: valid[[0, 2, 2]], torch.tensor([0, 2, 2]), "layer 0")


@dataclass(frozen=True)
class BreaksDownForSample(AlphaBeta):
    """The reference's linear rule, except NaN at the input of every linear layer for one sample."""

    sample: int = 1

    def input_gradient(self, module, x, out, g_out):
        gradient = super().input_gradient(module, x, out, g_out)
        hit = (torch.arange(gradient.shape[0]) == self.sample).reshape(-1, *[1] * (gradient.dim() - 1))
        return gradient.masked_fill(hit, float("nan"))


@pytest.mark.parametrize("make", [
    lambda model, rules: GenericAttention(model, head_weighting="lrp", rules=rules),
    lambda model, rules: PartialLRP(model, rules=rules),
    lambda model, rules: TransformerAttribution(model, rules=rules),
])
def test_non_finite_relevance_names_the_method_and_sample(make):
    """Outputs and maps finite, an LRP rule breaking down for sample 1: an error, through explain and attribute."""
    case = CASES["bert"]()
    explainer = make(case.model, RuleSet(linear=BreaksDownForSample()))
    expected = rf"{type(explainer).__name__} computed NaN or infinite relevance \(text\) for samples \[1\]"
    with pytest.raises(ValueError, match=expected):
        explainer.explain(case.inputs, None, case.additional)
    with pytest.raises(ValueError, match=expected):
        explainer.attribute(case.inputs, None, case.additional)
    assert torch.isfinite(make(case.model, RuleSet(linear=BreaksDownForSample(sample=7))).explain(
        case.inputs, None, case.additional).text).all()  # no sample 7: finite


@pytest.mark.parametrize("method", ["generic", "generic-lrp", "raw-attention", "rollout", "grad-cam", "partial-lrp",
                                    "transformer-attribution"])
def test_non_finite_relevance_of_a_generated_token_names_its_sample(method, monkeypatch):
    """Element 2 (sample 1's first generated token) made NaN where every method's outputs are read out."""
    original = _base.read_out

    def breaking(schedule, matrices):
        outputs = original(schedule, matrices)
        outputs["generated"][2] = float("nan")
        return outputs

    monkeypatch.setattr(_base, "read_out", breaking)
    explainer = METHODS[method](language_model("llama"))
    prompt = {"input_ids": torch.tensor([[4, 5, 6], [7, 8, 9]])}
    with pytest.raises(ValueError, match=rf"{type(explainer).__name__} computed NaN or infinite relevance \(generated\) "
                                         r"for samples \[1\]"):
        explainer.explain(prompt, continuation=[[5, 6], [7, 8]])


@pytest.mark.parametrize("method", ["generic", "partial-lrp"])
def test_compiled_models_are_explained_as_eager(method):
    """Compiled (aot_eager: the captured maps left the autograd graph, relevance was all zero) == eager."""
    case = CASES["bert"]()
    expected = METHODS[method](case.model).explain(case.inputs, None, case.additional).text
    assert expected.abs().sum() > 0
    compiled = torch.compile(case.model, backend="aot_eager")
    found = [
        METHODS[method](compiled).explain(case.inputs, None, case.additional).text,
        METHODS[method](lambda *args: compiled(*args).logits, case.model).explain(case.inputs, None, case.additional).text,
    ]
    case.model.compile(backend="aot_eager")
    try:
        found.append(METHODS[method](case.model).explain(case.inputs, None, case.additional).text)
    finally:
        del case.model._compiled_call_impl
    for text in found:
        assert torch.equal(text, expected)
    torch._dynamo.reset()


def test_maps_the_output_does_not_depend_on_are_an_error():
    """A gradient autograd cannot find is never filled with zeros."""
    case = lxmert_case()

    def second_run(*args):  # explains maps of the first run with the output of a second one
        case.model(*args)
        with torch.no_grad():
            frozen = case.model(*args).question_answering_score
        return frozen + 0 * case.model.answer_head.logit_fc[0].weight.sum()

    with pytest.raises(RuntimeError, match="does not depend on the attention maps"):
        GenericAttention(second_run, case.model).explain(case.inputs, None, case.additional)


def test_rollout_still_explains_a_detached_output():
    case = lxmert_case()
    expected = AttentionRollout(case.model).explain(case.inputs, None, case.additional)
    found = AttentionRollout(lambda *a: case.model(*a).question_answering_score.detach(), case.model).explain(
        case.inputs, None, case.additional
    )
    assert torch.equal(found.text, expected.text)


def test_float_targets():
    case = lxmert_case()
    explainer = GenericAttention(case.model)
    with pytest.raises(ValueError, match=r"target \[1.5, 0.5, 2.5\] has non-integral values"):
        explainer.explain(case.inputs, torch.tensor([1.5, 0.5, 2.5]), case.additional)
    integral = explainer.explain(case.inputs, torch.tensor([1.0, 0.0, 2.0]), case.additional)
    assert integral.target.tolist() == [1, 0, 2]
    assert torch.equal(integral.text, explainer.explain(case.inputs, [1, 0, 2], case.additional).text)


def test_detr_attribute_with_several_queries_per_image_points_to_explain():
    case = detr_case()
    explainer = GenericAttention(case.model)
    with pytest.raises(ValueError, match=r"one query per image; for several queries per image call explain\(\)"):
        explainer.attribute(case.inputs, [[0, 3], [1, 2]])
    (single,) = explainer.attribute(case.inputs, [[3], [2]])
    assert single.shape == case.inputs[0].shape
