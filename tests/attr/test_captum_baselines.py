"""Captum's LayerIntegratedGradients and FeatureAblation as captum_mm explainers: FeatureAblation's groups and their
relevance by hand, Integrated Gradients' completeness through the readout, batched == one by one (LXMERT, VisualBERT,
LLaVA's generated tokens)."""

import pytest
import torch
from captum.attr import FeatureAblation

from captum_mm.attr._replay import ReplayInputs, _blocks, group_masks, spread_over_groups
from captum_mm.attr.captum_baselines import CaptumFeatureAblation, CaptumIntegratedGradients
from helpers import llava, lxmert_case, visual_bert_case, vlm_prompts

BASELINES = {"lig": CaptumIntegratedGradients, "feature-ablation": CaptumFeatureAblation}


def test_feature_ablation_groups_and_spread_on_a_linear_model_by_hand():
    """f = id values summed + x . (1, 2, 3, 4): token 5 and 7 are one group each (the pad, equal to the baseline, in
    group 0), the four regions of a 2 x 2 grid one 2 x 2 block; the block's change 10 is shared, 2.5 a region."""
    ids, x = torch.tensor([[5, 7, 0]]), torch.ones(1, 4, 1)
    inputs = ReplayInputs("input_ids", ["x"], [], {"x": "image"}, baseline_token=0)
    baselines = inputs.baselines({"input_ids": ids, "x": x})
    assert baselines[0].tolist() == [[0, 0, 0]] and not baselines[1].any()
    masks = group_masks((ids, x), baselines, inputs, {"x": (2, 2)}, block=2)
    assert masks[0].tolist() == [[1, 2, 0]] and masks[1].flatten().tolist() == [3, 3, 3, 3]
    weights = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    forward = lambda i, v: i.double().sum(1) + (v * weights).sum((1, 2))  # noqa: E731
    attributions = FeatureAblation(forward).attribute((ids, x), baselines, feature_mask=masks)
    text, regions = spread_over_groups(attributions, masks)
    assert text.tolist() == [[5.0, 7.0, 0.0]] and regions.flatten().tolist() == [2.5] * 4


def test_blocks_of_pixels_and_of_regions():
    pixels = _blocks(torch.zeros(1, 1, 4, 4), (2, 2), 1)[0, 0]
    assert pixels.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert _blocks(torch.zeros(1, 16, 3), (4, 4), 2)[0, :, 0].tolist() == [0, 0, 1, 1] * 2 + [2, 2, 3, 3] * 2
    assert _blocks(torch.zeros(1, 6, 3), None, 1)[0, :, 0].tolist() == list(range(6))  # no grid: runs of block²


def test_integrated_gradients_sum_to_the_logit_change():
    """Completeness through the readout: every token's and region's relevance sums to f(input) - f(baseline). The
    random init zeroes the embedding rows of id 0, position 0 and type 0 and the region projections' biases, so an
    all-zero baseline reaches a layer norm as a zero vector, where it jumps (x / sqrt(eps)) and no path integral reaches
    that end point: the baseline token is 5 and the projections get non-zero biases.
    """
    case = lxmert_case(batch=2)
    ids, feats, boxes = case.inputs
    with torch.no_grad():
        for layer in (case.model.lxmert.encoder.visn_fc.visn_fc, case.model.lxmert.encoder.visn_fc.box_fc):
            layer.bias.normal_()
    explainer = CaptumIntegratedGradients(case.model, n_steps=64, baseline_token=5)
    explanation = explainer.explain(case.inputs, torch.tensor([1, 2]), case.additional)
    with torch.no_grad():
        logits = case.model(ids, feats, boxes, *case.additional).question_answering_score
        zero = case.model(torch.full_like(ids, 5), torch.zeros_like(feats), torch.zeros_like(boxes),
                          *case.additional).question_answering_score
    change = logits[[0, 1], [1, 2]] - zero[[0, 1], [1, 2]]
    torch.testing.assert_close(explanation.text.sum(1) + explanation.image.sum(1), change, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("method", sorted(BASELINES))
@pytest.mark.parametrize("make", [lxmert_case, visual_bert_case], ids=["lxmert", "visual_bert"])
def test_batched_equals_one_by_one(method, make):
    case = make(batch=2)
    explainer = BASELINES[method](case.forward, case.model)
    target = torch.tensor([1, 3])
    batched = explainer.explain(case.inputs, target, case.additional)
    for index in range(2):
        inputs, additional = case.alone(index)
        alone = explainer.explain(inputs, target[index:index + 1], additional)
        for name in case.outputs:
            single = getattr(alone, name)[0]
            together = getattr(batched, name)[index]
            torch.testing.assert_close(together[: single.shape[0]], single, rtol=1e-4, atol=1e-5)
            assert not together[single.shape[0]:].any() and single.abs().sum() > 0


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_generated_tokens_batched_equal_one_by_one(method):
    """LLaVA: each continuation token explained, the image read on its 4 x 4 patch grid; sample 1 is left-padded."""
    torch.manual_seed(0)
    model, prompts = llava(vision_layers=2), vlm_prompts(batch=2)
    continuation = torch.tensor([[5, 6], [7, 8]])
    explainer = BASELINES[method](model)
    batched = explainer.explain(prompts, continuation=continuation)
    assert batched.image.shape == (2, 2, 4, 4)
    for index in range(2):
        real = prompts["attention_mask"][index].bool()
        alone_prompt = {"input_ids": prompts["input_ids"][index:index + 1, real],
                        "attention_mask": prompts["attention_mask"][index:index + 1, real],
                        "pixel_values": prompts["pixel_values"][index:index + 1]}
        alone = explainer.explain(alone_prompt, continuation=continuation[index:index + 1])
        torch.testing.assert_close(batched.image[index], alone.image[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batched.text[index][:, -alone.text.shape[-1]:], alone.text[0], rtol=1e-4, atol=1e-5)
        assert alone.image.abs().sum() > 0
