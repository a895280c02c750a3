"""Captum's infidelity and sensitivity_max on token-level multimodal relevance."""

import pytest
import torch
from captum.metrics import infidelity, sensitivity_max

from captum_mm.attr import GenericAttention
from captum_mm.metrics import LXMERT_IMAGE, LXMERT_TEXT
from captum_mm.metrics.captum_bridges import feature_noise, presence_inputs, token_removal
from captum_mm.metrics.study import KeywordModel, StudyResult
from captum_mm.visualization import plot_perturbation_curves, save_perturbation_study
from helpers import FEATURES, lxmert, text_batch


def lxmert_batch():
    ids, mask = text_batch(3)
    return {"input_ids": ids, "attention_mask": mask, "visual_feats": torch.randn(3, 5, FEATURES), "visual_pos": torch.rand(3, 5, 4)}


def test_infidelity_on_presence_inputs():
    model, batch = lxmert(), lxmert_batch()
    forward = KeywordModel(model, ())
    names = tuple(batch)
    explanation = GenericAttention(KeywordModel(model, names), model).explain(tuple(batch.values()))
    presence_forward, presences = presence_inputs(forward, batch, (LXMERT_TEXT, LXMERT_IMAGE))
    assert torch.allclose(presence_forward(*presences), forward(**batch))  # full presence is the unperturbed model
    target = explanation.target
    scores = infidelity(
        presence_forward, token_removal((LXMERT_TEXT, LXMERT_IMAGE), 0.3), presences,
        (explanation.text, explanation.image), target=target, n_perturb_samples=4,
    )
    assert scores.shape == (3,) and torch.isfinite(scores).all()


def test_token_removal_spares_cls_sep_and_padding():
    presence = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]]).repeat(50, 1)
    perturbations, (perturbed,) = token_removal((LXMERT_TEXT,), 0.5, seed=1)((presence,))
    assert (perturbed[:, [0, 3, 4]] == presence[:, [0, 3, 4]]).all()
    assert (perturbations[0][:, 1:3] > 0).any() and torch.equal(perturbed + perturbations[0], presence)
    with pytest.raises(ValueError, match="probability must be in"):
        token_removal((LXMERT_TEXT,), 1.0)


def test_sensitivity_with_noise_on_image_features_only():
    model, batch = lxmert(), lxmert_batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]

    def forward(visual_feats, visual_pos, input_ids, attention_mask):
        return model(input_ids=input_ids, visual_feats=visual_feats, visual_pos=visual_pos, attention_mask=attention_mask).question_answering_score

    explainer = GenericAttention(forward, model)
    seen = []
    noise = feature_noise(0, radius=0.05)

    def recording(inputs):
        perturbed = noise(inputs)
        seen.append((inputs, perturbed))
        return perturbed

    sensitivity = sensitivity_max(
        explainer.attribute, (batch["visual_feats"], batch["visual_pos"]), perturb_func=recording,
        n_perturb_samples=2, target=torch.tensor([0, 1, 2]), additional_forward_args=(ids, mask),
    )
    assert sensitivity.shape == (3,) and torch.isfinite(sensitivity).all()
    (feats, boxes), (noisy_feats, noisy_boxes) = seen[0]
    assert torch.equal(boxes, noisy_boxes) and 0 < (feats - noisy_feats).abs().max() <= 0.05


def test_curves_figure_has_a_panel_per_setting_and_a_line_per_method(tmp_path):
    result = StudyResult([0, 1], {"negative text": [0.0, 0.5, 1.0], "positive text": [0.0, 0.5, 1.0]})
    result.scores = {
        name: {setting: torch.rand(2, 3).round() for setting in result.steps} for name in ("ours", "rollout")
    }
    figure = plot_perturbation_curves(result, "toy")
    assert len(figure.axes) == 2 and all(len(axis.lines) == 2 for axis in figure.axes)
    save_perturbation_study(result, tmp_path / "study", "toy")
    assert (tmp_path / "study" / "curves.png").stat().st_size > 0 and (tmp_path / "study" / "results.json").exists()
