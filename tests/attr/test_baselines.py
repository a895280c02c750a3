"""Baselines against Captum's own Grad-CAM, and the no-backward guarantee of raw attention and rollout."""

import pytest
import torch
from captum.attr import LayerGradCam

from captum_mm.attr import AttentionGradCam, AttentionRollout, GenericAttention, RawAttention
from helpers import CASES, CLASSES, lxmert_case, visual_bert_case


def unpadded(case):
    """Captum's Grad-CAM averages gradients over the whole map: compare on unpadded inputs."""
    case.additional[0].fill_(1)
    return case


def test_grad_cam_matches_captums_layer_grad_cam_on_lxmert():
    case = unpadded(lxmert_case())
    model = case.model
    target = torch.randint(0, CLASSES, (3,))

    def forward(*args):
        return model(*args).question_answering_score

    layer = model.lxmert.encoder.x_layers[-1].lang_self_att.self.dropout  # its output is the attention map
    heads = model.config.num_attention_heads
    captum_map = LayerGradCam(forward, layer).attribute(
        case.inputs, target=target, additional_forward_args=case.additional, relu_attributions=True
    )[:, 0] / heads  # Captum sums the weighted heads; the reference averages them
    expected_text = captum_map[:, 0].clone()
    expected_text[:, 0] = 0  # the [CLS] row's own entry
    expected_text *= case.additional[0]  # padding
    ours = AttentionGradCam(model).explain(case.inputs, target, case.additional)
    assert torch.allclose(ours.text, expected_text, atol=1e-7)


def test_grad_cam_matches_captums_layer_grad_cam_on_visual_bert():
    case = unpadded(visual_bert_case())
    target = torch.randint(0, CLASSES, (3,))
    layer = case.model.visual_bert.encoder.layer[-1].attention.self.dropout
    captum_map = LayerGradCam(case.forward, layer).attribute(
        case.inputs, target=target, additional_forward_args=case.additional, relu_attributions=True
    )[:, 0] / case.model.config.num_attention_heads
    ours = AttentionGradCam(case.forward, case.model).explain(case.inputs, target, case.additional)
    mask = case.additional[0]
    for sample in range(3):
        row = int(mask[sample].sum()) - 2
        expected = captum_map[sample, row].clone()
        expected[row] = 0
        expected[:6] *= mask[sample]
        assert torch.allclose(ours.text[sample], expected[:6], atol=1e-7)
        assert torch.allclose(ours.image[sample], expected[6:], atol=1e-7)


@pytest.mark.parametrize("family", sorted(CASES))
@pytest.mark.parametrize("method", [RawAttention, AttentionRollout])
def test_gradient_free_methods_never_run_backward(method, family, monkeypatch):
    case = CASES[family]()

    def refuse(*args, **kwargs):
        raise AssertionError("a backward pass was run")

    monkeypatch.setattr(torch.autograd, "grad", refuse)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    with torch.no_grad():
        explanation = method(case.forward, case.model).explain(case.inputs, None, case.additional, threshold=0.0)
    for name in case.outputs:
        values = getattr(explanation, name)
        assert not values.requires_grad and values.abs().sum() > 0


def test_raw_attention_reads_the_last_layers_head_mean():
    case = lxmert_case()
    output = case.model(*case.inputs, *case.additional, output_attentions=True)
    explanation = RawAttention(case.model).explain(case.inputs, None, case.additional)
    image = output.cross_encoder_attentions[-1].mean(1)[:, 0]  # last x-layer text->image, [CLS] row
    assert torch.allclose(explanation.image, image, atol=1e-7)


def test_start_layer_beyond_every_self_attention_leaves_only_cross_attention():
    case = lxmert_case(l_layers=1, r_layers=1, x_layers=1)
    explainer = GenericAttention(case.model, start_layer=5)
    explanation = explainer.explain(case.inputs, None, case.additional)
    assert not explanation.text.any()  # R_tt stays the identity; the [CLS] entry is zeroed
    assert explanation.image.abs().sum() > 0
    with pytest.raises(ValueError, match="start_layer must be a non-negative int"):
        AttentionRollout(case.model, start_layer=-1)
