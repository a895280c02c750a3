"""LXMERT "w/o aggregation" as the reference generator computes it (float64)."""

import pytest
import torch
from torch import Tensor

from helpers import FEATURES, VOCAB, Recording, lxmert, maps_of


def reference_without_aggregation(explainer: Recording, l_layers: int, r_layers: int, x_layers: int):
    """The reference's "w/o aggregation" loop (every update replaces, no normalisation) on the recorded maps,
    identities held explicitly: language and r-layers by Eq. 6-7; each x-layer but the last both directions of
    Eq. 10-11 from one state, then both self-attentions; the last x-layer text->image and language self-attention.
    Returns the ``[CLS]`` rows ``(text, image)``, ``R^{tt}[0, 0]`` set to 0."""
    sizes = explainer.schedule.sizes
    elements = explainer.schedule.num_elements
    r_tt, r_ii = (torch.eye(sizes[m], dtype=torch.float64).repeat(elements, 1, 1) for m in ("text", "image"))
    r_ti = torch.zeros(elements, sizes["text"], sizes["image"], dtype=torch.float64)
    r_it = r_ti.transpose(1, 2).clone()
    text_self, image_self = maps_of(explainer, "text", "text"), maps_of(explainer, "image", "image")
    text_image, image_text = maps_of(explainer, "text", "image"), maps_of(explainer, "image", "text")
    for a in text_self[:l_layers]:
        r_tt, r_ti = a @ r_tt, a @ r_ti
    for a in image_self[:r_layers]:
        r_ii, r_it = a @ r_ii, a @ r_it
    for j in range(x_layers - 1):
        a_ti, a_it = text_image[j], image_text[j]
        r_ti, r_tt, r_it, r_ii = r_tt.mT @ a_ti @ r_ii, a_ti @ r_it, r_ii.mT @ a_it @ r_tt, a_it @ r_ti
        r_tt, r_ti = text_self[l_layers + j] @ r_tt, text_self[l_layers + j] @ r_ti
        r_ii, r_it = image_self[r_layers + j] @ r_ii, image_self[r_layers + j] @ r_it
    r_ti, r_tt = r_tt.mT @ text_image[-1] @ r_ii, text_image[-1] @ r_it
    r_tt, r_ti = text_self[-1] @ r_tt, text_self[-1] @ r_ti
    text = r_tt[:, 0].clone()
    text[:, 0] = 0
    return text, r_ti[:, 0]


def explained(x_layers: int):
    torch.manual_seed(x_layers)
    model = lxmert(l_layers=2, r_layers=1, x_layers=x_layers).double()
    inputs = (torch.randint(1, VOCAB, (2, 5)), torch.randn(2, 4, FEATURES, dtype=torch.float64),
              torch.rand(2, 4, 4, dtype=torch.float64))
    explainer = Recording(model, normalize=False, aggregate=False)
    return explainer, explainer.explain(inputs, additional_forward_args=(torch.ones(2, 5, dtype=torch.long),))


def close(ours: Tensor, reference: Tensor) -> bool:
    return torch.allclose(ours, reference, rtol=1e-9, atol=0)


@pytest.mark.parametrize("x_layers", [1, 2, 3])
def test_lxmert_without_aggregation_is_the_reference_loop(x_layers):
    explainer, explanation = explained(x_layers)
    text, image = reference_without_aggregation(explainer, 2, 1, x_layers)
    assert close(explanation.text, text) and close(explanation.image, image)
    assert (text.abs().sum(-1) + image.abs().sum(-1)).gt(0).all()  # this ablation zeroes one or the other


def test_lxmert_one_x_layer_without_aggregation_leaves_no_text_relevance():
    """The x-layer's Eq. 11 (``A_ti . R^{it}``, and ``R^{it}`` is still 0) replaces ``R^{tt}``, as in the reference,
    though its image->text attention is not scheduled (it cannot reach the answer)."""
    explainer, explanation = explained(1)
    assert not any((e.query, e.key) == ("image", "text") for e in explainer.schedule.events)
    assert torch.equal(explanation.text, torch.zeros_like(explanation.text))
    assert explained(2)[1].text.abs().amax(-1).gt(0).all()
