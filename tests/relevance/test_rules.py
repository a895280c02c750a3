"""Every rule against a hand-computed example (the expected numbers were worked out by hand)."""

import pytest
import torch

from captum_mm.relevance.heads import grad_cam, gradient_weighted, head_mean
from captum_mm.relevance.rules import (
    apply_deltas,
    bimodal_deltas,
    initial_relevance,
    normalize_self_relevance,
    read_rows,
    rollout,
    Relevance,
    self_attention_deltas,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


PROBS = t([[[[0.5, 0.5], [0.2, 0.8]], [[1.0, 0.0], [0.6, 0.4]]]])  # [1 element, 2 heads, 2, 2]
GRADS = t([[[[1.0, -1.0], [2.0, 0.5]], [[-2.0, 3.0], [1.0, -1.0]]]])
A_BAR = t([[[0.25, 0.0], [0.5, 0.2]]])


def test_eq5_positive_part_per_head_then_head_mean():
    # head 0: grad*A = [[.5,-.5],[.4,.4]] -> [[.5,0],[.4,.4]]; head 1: [[-2,0],[.6,-.4]] -> [[0,0],[.6,0]]
    assert torch.allclose(gradient_weighted(PROBS, GRADS), A_BAR)


def test_head_mean():
    assert torch.allclose(head_mean(PROBS), t([[[0.75, 0.25], [0.4, 0.6]]]))


def test_grad_cam_weights_heads_by_mean_gradient_and_clamps_after_the_mean():
    grads = t([[[[1.0, -1.0], [2.0, 0.5]], [[-2.0, -3.0], [1.0, -1.0]]]])
    # weights 0.625 and -1.25; mean_h(w_h A_h) = [[-.46875, .15625], [-.3125, 0]]
    assert torch.allclose(grad_cam(PROBS, grads), t([[[0.0, 0.15625], [0.0, 0.0]]]))


def test_grad_cam_weights_average_real_entries_only():
    valid = torch.tensor([[[True, False], [True, True]]])  # the entry (0, 1) pairs a padded token
    # weights: head 0 (1 + 2 + .5) / 3 = 7/6, head 1 (-2 + 1 - 1) / 3 = -2/3
    assert torch.allclose(grad_cam(PROBS, GRADS, valid), t([[[0.0, 7 / 24], [0.0, 1 / 3]]]))


def test_initial_relevance_is_identity_and_zero_cross_blocks():
    relevance = initial_relevance({"text": 2, "image": 3}, 4, torch.zeros(1))
    assert torch.equal(relevance.full(("text", "text")), torch.eye(2).expand(4, 2, 2))
    assert torch.equal(relevance.full(("image", "image")), torch.eye(3).expand(4, 3, 3))
    assert not relevance.residual("text").any()  # the identity is held implicitly
    assert relevance[("text", "image")].shape == (4, 2, 3) and not relevance[("text", "image")].any()
    assert relevance[("image", "text")].shape == (4, 3, 2) and not relevance[("image", "text")].any()


def test_eq6_eq7_self_attention():
    relevance = Relevance({
        ("text", "text"): t([[[1.0, 0.0], [0.0, 1.0]]]),
        ("text", "image"): t([[[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]]),
        ("image", "image"): torch.eye(3, dtype=torch.float64)[None],
    })
    updated = apply_deltas(relevance, [self_attention_deltas(relevance, "text", A_BAR)])
    assert torch.allclose(updated[("text", "text")], t([[[1.25, 0.0], [0.5, 1.2]]]))
    assert torch.allclose(updated[("text", "image")], t([[[1.25, 0.0, 2.5], [0.5, 1.2, 1.0]]]))
    assert torch.equal(updated[("image", "image")], relevance[("image", "image")])


@pytest.mark.parametrize(
    "self_relevance, expected",
    [
        ([[2.0, 1.0], [0.5, 1.5]], [[1.5, 0.5], [0.5, 1.5]]),
        ([[3.0, 1.0], [0.0, 1.0]], [[5 / 3, 1 / 3], [0.0, 1.0]]),  # second row of R_hat sums to 0
        ([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]),
    ],
)
def test_eq8_eq9_normalisation(self_relevance, expected):
    original = Relevance({("text", "text"): t([self_relevance])})
    normalized = normalize_self_relevance(original.residual("text"))
    assert torch.allclose(normalized, t([expected]))
    assert not torch.isnan(normalized).any()
    assert torch.equal(original["text", "text"], t([self_relevance]))  # the stored relevance is never normalised


def test_identity_held_implicitly_keeps_relevance_far_below_it():
    """Eq. 6 then Eq. 8-9 on increments of 1e-9: exact in float32, where 1 + 1e-9 would round to 1."""
    relevance = initial_relevance({"text": 2}, 1, torch.zeros(1))
    relevance = apply_deltas(relevance, [self_attention_deltas(relevance, "text", torch.tensor([[[1e-9, 3e-9], [2e-9, 2e-9]]]))])
    assert torch.allclose(normalize_self_relevance(relevance.residual("text")), torch.tensor([[[1.25, 0.75], [0.5, 1.5]]]))
    full = Relevance({("text", "text"): relevance.full(("text", "text"))})  # the same relevance, identity explicit
    assert not full.residual("text").diagonal(dim1=1, dim2=2).any()  # the diagonal increments are gone


def bimodal_state():
    return Relevance({
        ("text", "text"): t([[[3.0, 1.0], [0.0, 1.0]]]),
        ("image", "image"): torch.eye(3, dtype=torch.float64)[None],
        ("text", "image"): torch.zeros(1, 2, 3, dtype=torch.float64),
        ("image", "text"): t([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]]),
    })


CROSS = t([[[0.3, 0.0, 0.6], [0.0, 0.9, 0.0]]])


@pytest.mark.parametrize(
    "options, aggregate, text_image, text_text",
    [
        # Eq. 10 with the transpose: R_bar_tt^T A_bar R_bar_ii, R_bar_tt = [[5/3, 1/3], [0, 1]], R_bar_ii = I
        ({}, True, [[0.5, 0.0, 1.0], [0.1, 0.9, 0.2]], [[3.9, 1.6], [0.0, 2.8]]),
        # w/o norm.: R_tt^T A_bar R_ii with R_tt = [[3, 1], [0, 1]]
        ({"normalize": False}, True, [[0.9, 0.0, 1.8], [0.3, 0.9, 0.6]], [[3.9, 1.6], [0.0, 2.8]]),
        # Eq. 10 w/o self-att.: dR_ti = A_bar
        ({"self_in_bimodal": False}, True, [[0.3, 0.0, 0.6], [0.0, 0.9, 0.0]], [[3.9, 1.6], [0.0, 2.8]]),
        # w/o aggregation (normalisation off): R <- dR; Eq. 11 dR_tt = A_bar R_it = [[.9, .6], [0, 1.8]]
        ({"normalize": False}, False, [[0.9, 0.0, 1.8], [0.3, 0.9, 0.6]], [[0.9, 0.6], [0.0, 1.8]]),
    ],
)
def test_eq10_eq11_and_ablations(options, aggregate, text_image, text_text):
    state = bimodal_state()
    updated = apply_deltas(state, [bimodal_deltas(state, "text", "image", CROSS, **options)], aggregate)
    assert torch.allclose(updated[("text", "image")], t([text_image]))
    assert torch.allclose(updated[("text", "text")], t([text_text]))
    assert torch.equal(updated[("image", "text")], state[("image", "text")])


def test_without_aggregation_eq11_replaces_even_when_zero():
    state = bimodal_state()
    state[("image", "text")] = torch.zeros(1, 3, 2, dtype=torch.float64)
    updated = apply_deltas(state, [bimodal_deltas(state, "text", "image", CROSS, normalize=False)], aggregate=False)
    assert not updated[("text", "text")].any()  # R_tt <- A_bar . R_it = 0
    kept = apply_deltas(state, [bimodal_deltas(state, "text", "image", CROSS, normalize=False)])
    assert torch.equal(kept[("text", "text")], state[("text", "text")])


def test_structurally_void_eq11_is_not_applied():
    """No image token ever attends to text (DETR's image -> query): Eq. 11 is left out, so without
    aggregation R_tt keeps its value instead of being replaced by A_bar . R_it = 0."""
    state = bimodal_state()
    state[("image", "text")] = torch.zeros(1, 3, 2, dtype=torch.float64)
    deltas = bimodal_deltas(state, "text", "image", CROSS, normalize=False, key_attends_query=False)
    assert set(deltas) == {("text", "image")}
    updated = apply_deltas(state, [deltas], aggregate=False)
    assert torch.equal(updated[("text", "text")], state[("text", "text")])
    assert torch.allclose(updated[("text", "image")], t([[0.9, 0.0, 1.8], [0.3, 0.9, 0.6]]))


def zero_row_state():
    """Two elements; element 0's R_hat_tt = [[2, 1], [0, 0]] has a zero row, element 1's has none."""
    return Relevance({
        ("text", "text"): t([[[3.0, 1.0], [0.0, 1.0]], [[3.0, 1.0], [1.0, 1.0]]]),
        ("image", "image"): t([[[1.5, 0.5], [0.25, 1.75]]] * 2),  # R_hat_ii rows sum to 1: R_bar_ii = R_ii
        ("text", "image"): t([[[0.1, 0.2], [0.3, 0.4]]] * 2),
        ("image", "text"): torch.zeros(2, 2, 2, dtype=torch.float64),
    })


ZERO_ROW_CROSS = t([[[0.4, 0.0], [0.0, 0.8]]] * 2)
# A_bar R_bar_ii = [[.6, .2], [.2, 1.4]]. Element 0: R_bar_tt = [[5/3, 1/3], [0, 1]] (the zero row stays
# zero), dR_ti = R_bar_tt^T [[.6, .2], [.2, 1.4]] = [[1, 1/3], [.4, 22/15]]. Element 1: R_bar_tt =
# [[5/3, 1/3], [1, 1]], dR_ti = [[1 + .2, 1/3 + 1.4], [.2 + .2, 1/15 + 1.4]] = [[1.2, 26/15], [.4, 22/15]].
KEPT = t([[[1.1, 0.2 + 1 / 3], [0.7, 0.4 + 22 / 15]], [[1.3, 0.2 + 26 / 15], [0.7, 0.4 + 22 / 15]]])


@pytest.mark.parametrize(
    "options, real_text, expected_first",
    [
        ({}, None, KEPT[0]),  # the default: the zero row is normalised to zero, the rest applies
        ({"drop_on_zero_row": True}, None, t([[0.1, 0.2], [0.3, 0.4]])),  # the reference DETR: update dropped
        ({"drop_on_zero_row": True}, [[True, False], [True, True]], KEPT[0]),  # the zero row is padding
        # w/o norm. (no division): R_tt^T A_bar R_ii = [[3, 0], [1, 1]] [[.6, .2], [.2, 1.4]] = [[1.8, .6], [.8, 1.6]]
        ({"drop_on_zero_row": True, "normalize": False}, None, t([[1.9, 0.8], [1.1, 2.0]])),
        ({"drop_on_zero_row": True, "self_in_bimodal": False}, None, t([[0.5, 0.2], [0.3, 1.2]])),
    ],
)
def test_eq10_zero_row_of_r_hat(options, real_text, expected_first):
    state = zero_row_state()
    real = None if real_text is None else {"text": torch.tensor(real_text), "image": torch.ones(2, 2, dtype=torch.bool)}
    updated = apply_deltas(state, [bimodal_deltas(state, "text", "image", ZERO_ROW_CROSS, real=real, **options)])
    assert torch.allclose(updated[("text", "image")][0], expected_first)
    if options.get("normalize", True) and options.get("self_in_bimodal", True):
        assert torch.allclose(updated[("text", "image")][1], KEPT[1])  # element 1 has no zero row: never dropped


def test_eq10_zero_row_on_the_key_side_drops_too():
    state = zero_row_state()
    state[("image", "image")] = t([[[1.5, 0.5], [0.0, 1.0]]] * 2)  # R_hat_ii's second row is zero
    updated = apply_deltas(state, [bimodal_deltas(state, "text", "image", ZERO_ROW_CROSS, drop_on_zero_row=True)])
    assert torch.equal(updated[("text", "image")], state[("text", "image")])


def test_without_aggregation_self_attention_replaces():
    for relevance in (Relevance({("text", "text"): torch.eye(2, dtype=torch.float64)[None]}),
                      initial_relevance({"text": 2}, 1, torch.zeros(1, dtype=torch.float64))):
        updated = apply_deltas(relevance, [self_attention_deltas(relevance, "text", A_BAR)], aggregate=False)
        assert torch.allclose(updated.full(("text", "text")), A_BAR)
        assert torch.allclose(updated.residual("text"), A_BAR - torch.eye(2, dtype=torch.float64))


def test_parallel_events_use_the_state_before_the_step():
    # one token per modality; step [t->i with a=.5, i->t with b=.25], then text self-attention c=.2
    relevance = initial_relevance({"text": 1, "image": 1}, 1, torch.zeros(1, dtype=torch.float64))
    a, b, c = t([[[0.5]]]), t([[[0.25]]]), t([[[0.2]]])
    relevance = apply_deltas(
        relevance, [bimodal_deltas(relevance, "text", "image", a), bimodal_deltas(relevance, "image", "text", b)]
    )
    # Eq. 11 for i->t reads the pre-step R_ti = 0, so R_ii stays 1 (sequentially it would be 1 + b*a)
    assert relevance.full(("image", "image")).item() == pytest.approx(1.0)
    assert relevance[("text", "image")].item() == pytest.approx(0.5)
    assert relevance[("image", "text")].item() == pytest.approx(0.25)
    relevance = apply_deltas(relevance, [self_attention_deltas(relevance, "text", c)])
    assert relevance.full(("text", "text")).item() == pytest.approx(1.2)
    assert relevance[("text", "image")].item() == pytest.approx(0.6)


def test_rollout_multiplies_later_layers_on_the_left():
    first, second = t([[[0.5, 0.5], [0.0, 1.0]]]), t([[[0.0, 1.0], [1.0, 0.0]]])
    # norm(first + I) = [[.75, .25], [0, 1]], norm(second + I) = [[.5, .5], [.5, .5]]
    assert torch.allclose(rollout([first, second], 2, first), t([[[0.375, 0.625], [0.375, 0.625]]]))
    assert torch.allclose(rollout([], 2, first), torch.eye(2, dtype=torch.float64)[None])


def test_read_rows_takes_one_row_per_element():
    matrix = torch.arange(2 * 3 * 2, dtype=torch.float64).reshape(2, 3, 2)
    assert torch.equal(read_rows(matrix, torch.tensor([2, 0])), t([[4.0, 5.0], [6.0, 7.0]]))
