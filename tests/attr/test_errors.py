"""Bad input gets a clear error that says what was wrong and what is accepted."""

import pytest
import torch
from torch import nn

from captum_mm.attr import GenericAttention
from helpers import FEATURES, detr_case, lxmert, lxmert_case, text_batch


def test_unsupported_model_lists_the_supported_classes():
    with pytest.raises(TypeError, match="cannot explain a Linear.*LxmertForQuestionAnswering.*DetrForObjectDetection|cannot explain a Linear.*Detr"):
        GenericAttention(nn.Linear(2, 2))


def test_wrapper_without_model():
    with pytest.raises(TypeError, match="pass the HuggingFace model it runs as model="):
        GenericAttention(lambda x: x)


def test_unknown_head_weighting():
    with pytest.raises(ValueError, match="head_weighting must be one of"):
        GenericAttention(lxmert(), head_weighting="magic")


def test_target_out_of_range():
    case = lxmert_case()
    with pytest.raises(ValueError, match=r"target \[9, 9, 9\] out of range: the model has 7 classes"):
        GenericAttention(case.model).explain(case.inputs, 9, case.additional)


def test_target_of_the_wrong_form():
    case = lxmert_case()
    with pytest.raises(ValueError, match="one class per sample"):
        GenericAttention(case.model).explain(case.inputs, [1, 2], case.additional)


def test_batch_sizes_disagree():
    model = lxmert()
    ids, mask = text_batch(3)
    with pytest.raises(ValueError, match="Batch sizes of inputs disagree"):
        GenericAttention(model).explain((ids, torch.randn(2, 5, FEATURES), torch.rand(2, 5, 4)), None, (mask,))
    with pytest.raises(ValueError, match="attention_mask has 2"):
        GenericAttention(model).explain((ids, torch.randn(3, 5, FEATURES), torch.rand(3, 5, 4)), None, (mask[:2],))


@pytest.mark.parametrize("what", ["regions", "tokens"])
def test_empty_modality(what):
    model = lxmert()
    ids, mask = text_batch(2)
    regions = 0 if what == "regions" else 5
    if what == "tokens":
        ids, mask = ids[:, :0], mask[:, :0]
    inputs = (ids, torch.randn(2, regions, FEATURES), torch.rand(2, regions, 4))
    with pytest.raises(ValueError, match="zero tokens"):
        GenericAttention(model).explain(inputs, None, (mask,))


def test_wrong_rank():
    model = lxmert()
    ids, mask = text_batch(5)
    with pytest.raises(ValueError, match=r"visual_feats must be a 3-D tensor \[batch, regions, features\], got shape \(5, 12\)"):
        GenericAttention(model).explain((ids, torch.randn(5, FEATURES), torch.rand(5, 5, 4)), None, (mask,))


def test_detr_threshold_keeping_no_query_gives_an_empty_result():
    case = detr_case()
    explanation = GenericAttention(case.model).explain(case.inputs, threshold=0.99)
    assert explanation.image.shape == (2, 0, 2, 3)
    assert explanation.queries.shape == explanation.target.shape == (2, 0)


def test_detr_bad_threshold_and_query():
    case = detr_case()
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        GenericAttention(case.model).explain(case.inputs, threshold=1.5)
    with pytest.raises(ValueError, match="query index 6 out of range: the model has 6 queries"):
        GenericAttention(case.model).explain(case.inputs, target=[[6], [0]])


def test_input_modalities_are_checked():
    case = lxmert_case()
    explainer = GenericAttention(case.model)
    with pytest.raises(ValueError, match="Unknown modality 'audio'"):
        explainer.attribute(case.inputs, None, case.additional, input_modalities=("text", "audio", None))
    with pytest.raises(ValueError, match="input_modalities has 1 entries for 3 inputs"):
        explainer.attribute(case.inputs, None, case.additional, input_modalities=("text",))


def test_ambiguous_input_needs_input_modalities():
    case = lxmert_case(regions=6)  # as many regions as text tokens
    explainer = GenericAttention(case.model)
    with pytest.raises(ValueError, match="text or image.*pass input_modalities"):
        explainer.attribute(case.inputs, None, case.additional)
    attributions = explainer.attribute(case.inputs, None, case.additional, input_modalities=("text", "image", "image"))
    assert attributions[1].shape == case.inputs[1].shape
