"""Bad input gets a clear error that says what was wrong and what is accepted."""

import pytest
import torch
from torch import nn

from captum_mm.attr import GenericAttention
from helpers import FEATURES, bert, clip_case, detr_case, lxmert, lxmert_case, text_batch, vilt_case, vit


def test_a_module_that_is_no_huggingface_model_points_to_model_and_register_adapter():
    with pytest.raises(TypeError, match=r"cannot explain a Linear: it is not a HuggingFace model.*as model=.*"
                                        r"captum_mm\.models\.register_adapter \(tutorial 04_bring_your_own_model\.ipynb\)"):
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


def test_inputs_carry_the_outputs_their_adapter_declares():
    """No shape guessing: with as many regions as text tokens each input still gets its own output."""
    case = lxmert_case(regions=6)
    explainer = GenericAttention(case.model)
    explanation = explainer.explain(case.inputs, None, case.additional)
    ids, feats, boxes = explainer.attribute(case.inputs, explanation.target, case.additional)
    assert torch.equal(ids, explanation.text) and torch.equal(feats[..., 0], explanation.image)
    assert torch.equal(boxes[..., 0], explanation.image)


def test_input_not_passed_unchanged_needs_input_modalities():
    case = lxmert_case()

    def scaled(ids, feats, boxes, mask):
        return case.model(ids, feats * 2, boxes, mask).question_answering_score

    explainer = GenericAttention(scaled, case.model)
    with pytest.raises(ValueError, match=r"Input 1 \(shape \(3, 5, 12\)\) was not passed unchanged.*pass input_modalities"):
        explainer.attribute(case.inputs, None, case.additional)
    attributions = explainer.attribute(case.inputs, None, case.additional, input_modalities=("text", "image", "image"))
    assert attributions[1].shape == case.inputs[1].shape and attributions[1].abs().sum() > 0


def test_vit_and_bert_inputs_are_checked():
    model = vit()
    with pytest.raises(ValueError, match=r"pixel_values must be a 4-D tensor \[batch, channels, height, width\], got shape \(3, 32, 32\)"):
        GenericAttention(model).explain(torch.randn(3, 32, 32))
    ids, mask = text_batch(3)
    with pytest.raises(ValueError, match="Batch sizes disagree: input_ids has 3, attention_mask has 1"):
        GenericAttention(bert()).explain(ids, None, (mask[:1],))
    with pytest.raises(ValueError, match="input_ids has zero tokens"):
        GenericAttention(bert()).explain(ids[:, :0], None, (mask[:, :0],))


def test_clip_explains_each_image_with_its_own_text():
    case = clip_case()
    with pytest.raises(ValueError, match="CLIP explains the similarity of each image with its own text.*pass target=None, got 1"):
        GenericAttention(case.forward, case.model).explain(case.inputs, 1, case.additional)

    def image_only(pixel_values):
        return case.model.get_image_features(pixel_values=pixel_values).pooler_output

    with pytest.raises(ValueError, match="forward_func never called CLIPModel.forward: it must run the model itself"):
        GenericAttention(image_only, case.model).explain(case.inputs[1], None)

    def image_with_text_embeddings(pixel_values, attention_mask):
        return case.model(pixel_values=pixel_values, inputs_embeds=None, attention_mask=attention_mask).logits_per_image

    with pytest.raises(ValueError, match="CLIP is explained on image-text pairs: it needs input_ids"):
        GenericAttention(image_with_text_embeddings, case.model).explain(case.inputs[1], None, case.additional)


def test_vilt_needs_pixels_for_the_patch_grid():
    case = vilt_case()
    ids, pixels = case.inputs
    embeds = case.model.vilt.embeddings.patch_embeddings(pixels).flatten(2).transpose(1, 2)

    def from_embeddings(input_ids, image_embeds, attention_mask):
        return case.model(input_ids=input_ids, image_embeds=image_embeds, attention_mask=attention_mask).logits

    with pytest.raises(ValueError, match=r"ViLT is explained from pixel_values .* \(not image_embeds\)"):
        GenericAttention(from_embeddings, case.model).explain((ids, embeds), None, case.additional)
    with pytest.raises(ValueError, match=r"pixel_values must be a 4-D tensor"):
        GenericAttention(case.forward, case.model).explain((ids, pixels[0]), None, case.additional)
