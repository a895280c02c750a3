"""DETR as the reference generator computes it: "w/o aggregation" and its unguarded Eq. 8-9."""

from typing import List, Optional

import pytest
import torch
from torch import Tensor

from captum_mm.attr import GenericAttention
from captum_mm.attr.catalog import select_methods, with_reference_detr
from helpers import Recording, detr, maps_of


def double_detr(**kwargs):
    """A tiny DETR in float64 with random biases in its transformer: HF initialises them to zero,
    which makes the first decoder self-attention's values (hence its gradient map) all zero."""
    model = detr(**kwargs).double()
    with torch.no_grad():
        for name, parameter in model.model.named_parameters():
            if name.endswith("bias") and not name.startswith("backbone"):
                parameter.normal_(0.0, 0.02)
    return model, torch.randn(2, 3, 64, 96, dtype=torch.float64)


def product(maps: List[Tensor]) -> Tensor:
    """``A_L ... A_2 A_1`` (later maps on the left)."""
    joint = maps[0]
    for later in maps[1:]:
        joint = later @ joint
    return joint


def test_detr_without_aggregation_is_the_product_of_maps():
    model, pixels = double_detr(encoder_layers=2, decoder_layers=3)
    explainer = Recording(model, normalize=False, aggregate=False)
    explanation = explainer.explain(pixels, target=[[0, 3], [5]])
    encoder = product(maps_of(explainer, "image", "image"))
    decoder = product(maps_of(explainer, "query", "query"))
    cross_last = maps_of(explainer, "query", "image")[-1]
    expected = decoder.transpose(1, 2) @ cross_last @ encoder  # (prod_dec A_self)^T A_cross,last prod_enc A
    rows = expected[torch.arange(3), explainer.schedule.outputs["image"].rows]
    assert torch.allclose(explanation.image[explanation.queries >= 0].flatten(1), rows, rtol=1e-12, atol=0)
    assert (rows.abs().sum(-1) > 0).all()


def reference_detr_relevance(explainer: Recording) -> Tensor:
    """The reference generator's DETR loop on the recorded maps, in float64: identities held explicitly,
    Eq. 8-9 unguarded, and NaN set to 0 after each Eq. 10 update. ``[E, N_query, N_image]``."""
    images, queries = (explainer.schedule.sizes[m] for m in ("image", "query"))
    eye_i, eye_q = torch.eye(images, dtype=torch.float64), torch.eye(queries, dtype=torch.float64)
    r_ii = eye_i.repeat(explainer.schedule.num_elements, 1, 1)
    for attention in maps_of(explainer, "image", "image"):
        r_ii = r_ii + attention @ r_ii
    r_qq = eye_q.repeat(explainer.schedule.num_elements, 1, 1)
    r_qi = torch.zeros(explainer.schedule.num_elements, queries, images, dtype=torch.float64)
    for self_map, cross_map in zip(maps_of(explainer, "query", "query"), maps_of(explainer, "query", "image")):
        r_qq, r_qi = r_qq + self_map @ r_qq, r_qi + self_map @ r_qi

        def normalized(r, eye):
            return (r - eye) / (r - eye).sum(-1, keepdim=True) + eye

        update = normalized(r_qq, eye_q).transpose(1, 2) @ cross_map @ normalized(r_ii, eye_i)
        r_qi = r_qi + torch.nan_to_num(update, nan=0.0)
    return r_qi


def zero_row_detr(query: int, explained: Optional[int] = None):
    """A float64 DETR whose first decoder self-attention gives ``query`` an all-zero fused row and the
    next query a non-zero one. The decoder starts from zero inputs, so every value row of that
    attention is the value bias ``b`` and ``grad A[h, r, :] = g[h, r] . b[h]``, ``g`` the gradient at the
    attention output: ``b[h]`` is chosen with ``g[h, query] . b[h] = -1`` and ``g[h, query + 1] . b[h] = 1``
    (``g`` taken at ``b = 0``; ``b`` then set at a scale small enough not to change those signs), ``g`` the
    gradient of ``explained``'s logit (default: ``query``'s)."""
    model, pixels = double_detr(encoder_layers=2, decoder_layers=2)
    pixels = pixels[:1]
    attention = model.model.decoder.layers[0].self_attn
    head_dim = attention.head_dim
    heads = attention.q_proj.out_features // head_dim
    with torch.no_grad():
        attention.v_proj.bias.zero_()
    inputs: List[Tensor] = []
    handle = attention.o_proj.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    try:
        logits = model(pixels).logits
        target = query if explained is None else explained
        gradient = torch.autograd.grad(logits[0, target, :-1].max(), inputs[0])[0][0].reshape(-1, heads, head_dim)
    finally:
        handle.remove()
    bias = []
    for head in range(heads):
        u, w = gradient[query, head], gradient[query + 1, head]
        orthogonal = w - (w @ u) / (u @ u) * u
        bias.append(-u / (u @ u) + (1 + (w @ u) / (u @ u)) / (orthogonal @ orthogonal) * orthogonal)
    with torch.no_grad():
        attention.v_proj.bias.copy_(1e-4 * torch.cat(bias) / torch.cat(bias).abs().max())
    return model, pixels


def test_detr_drop_on_zero_row_reproduces_the_reference_loop():
    model, pixels = zero_row_detr(query=2)
    dropping = Recording(model, zero_row_update="drop")
    dropped = dropping.explain(pixels, target=2).image.flatten()
    first_rows = maps_of(dropping, "query", "query")[0][0].sum(-1)
    assert first_rows[2] == 0 and first_rows[3] > 0  # the constructed case: a zero row of R_hat^qq
    reference = reference_detr_relevance(dropping)[0, 2]
    assert torch.allclose(dropped, reference, rtol=1e-9, atol=0) and dropped.abs().sum() > 0
    kept = GenericAttention(model).explain(pixels, target=2).image.flatten()
    assert not torch.allclose(kept, dropped, rtol=1e-3, atol=0)


@pytest.mark.parametrize("head_weighting", ["gradient", "lrp"])
def test_detr_drop_on_every_decoder_layer_leaves_the_query_no_relevance(head_weighting: str):
    """Query 2's row of ``R_hat^{qq}`` is zero after both decoder layers (its first self-attention row constructed
    zero; in the last layer only the explained query 3's row has a gradient and, under LRP, a relevance), so the
    reference drops both Eq. 10 updates and leaves query 3 no image relevance, for Ours and Ours w/ LRP (checked
    against its code on identical weights, float64)."""
    model, pixels = zero_row_detr(query=2, explained=3)
    dropping = Recording(model, zero_row_update="drop", head_weighting=head_weighting)
    dropped = dropping.explain(pixels, target=3).image.flatten()
    assert [m[0, 2].sum().item() for m in maps_of(dropping, "query", "query")] == [0.0, 0.0]
    assert maps_of(dropping, "query", "query")[0][0, 3].sum() > 0
    assert torch.equal(dropped, torch.zeros_like(dropped))
    assert torch.equal(reference_detr_relevance(dropping)[0, 3], dropped)
    kept = GenericAttention(model, head_weighting=head_weighting).explain(pixels, target=3).image
    assert kept.abs().sum() > 0  # "keep" applies the rest


def test_detr_lrp_relevance_reaches_earlier_decoder_layers_through_later_ones():
    """Under LRP only the explained query's row of the last decoder layer's maps carries relevance; an earlier layer
    receives what the later one passes back through its keys and values, so other queries' rows are non-zero there
    (the reference's DETR as built, ``return_intermediate_dec=True``; not reseeded at every layer's output)."""
    model, pixels = double_detr(encoder_layers=1, decoder_layers=2)
    explainer = Recording(model, head_weighting="lrp")
    explainer.explain(pixels[:1], target=3)
    for kind in ("query", "image"):
        first, last = (m[0].abs().sum(-1) for m in maps_of(explainer, "query", kind))
        others = torch.arange(len(last)) != 3
        assert last[3] > 0 and torch.equal(last[others], torch.zeros_like(last[others]))
        assert (first[others] > 0).sum() >= 2


def test_zero_row_update_is_checked():
    with pytest.raises(ValueError, match=r"zero_row_update must be one of \('keep', 'drop'\), got 'nan'"):
        GenericAttention(detr(), zero_row_update="nan")


def test_the_catalog_reports_the_reference_variant_beside_ours():
    methods = select_methods(["rollout", "ours", "w/o norm."])
    assert list(with_reference_detr(methods)) == ["rollout", "ours", "ours (reference Eq. 8-9)", "w/o norm."]
    assert list(with_reference_detr(select_methods(["rollout"]))) == ["rollout"]
    assert "ours (reference Eq. 8-9)" not in select_methods()  # not run on the VQA models by default
    explainer = select_methods(["ours (reference Eq. 8-9)"])["ours (reference Eq. 8-9)"](detr())
    assert explainer.zero_row_update == "drop"
