"""Whole-schedule definitions (raw attention, rollout, start_layer) on a hand-computed LXMERT-like schedule."""

from dataclasses import replace

import torch

from captum_mm.relevance.propagation import generic_relevance, last_layer_relevance, rollout_relevance
from captum_mm.relevance.schedule import AttentionEvent, Readout, Schedule


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


TEXT_1 = AttentionEvent(0, "text", "text")
IMAGE_1 = AttentionEvent(1, "image", "image")
CROSS = AttentionEvent(2, "text", "image")
TEXT_2 = AttentionEvent(3, "text", "text")
CLS = torch.zeros(1, dtype=torch.long)
MAPS = {
    0: t([[[0.5, 0.5], [0.0, 1.0]]]),
    1: t([[[0.0, 1.0], [1.0, 0.0]]]),
    2: t([[[1.0, 0.0], [0.5, 0.5]]]),
    3: t([[[0.0, 1.0], [0.0, 1.0]]]),
}


def schedule():
    return Schedule(
        sizes={"text": 2, "image": 2},
        masks={"text": torch.ones(1, 2, dtype=torch.bool), "image": torch.ones(1, 2, dtype=torch.bool)},
        steps=[(TEXT_1,), (IMAGE_1,), (CROSS,), (TEXT_2,)],
        outputs={"text": Readout("text", CLS, "text"), "image": Readout("text", CLS, "image")},
        element_sample=torch.zeros(1, dtype=torch.long),
    )


def test_raw_attention_takes_the_last_map_into_each_modality():
    matrices = last_layer_relevance(schedule(), MAPS)
    assert torch.equal(matrices[("text", "text")], MAPS[3]) and torch.equal(matrices[("text", "image")], MAPS[2])


def test_rollout_text_and_bimodal():
    matrices = rollout_relevance(schedule(), MAPS)
    # norm(A0 + I) = [[.75, .25], [0, 1]], norm(A3 + I) = [[.5, .5], [0, 1]]; later on the left
    assert torch.allclose(matrices[("text", "text")], t([[[0.375, 0.625], [0.0, 1.0]]]))
    # rollout_tt (before the cross-attention) = [[.75, .25], [0, 1]], rollout_ii = [[.5, .5], [.5, .5]]
    # R_ti = rollout_tt^T A_cross rollout_ii = [[.375, .375], [.625, .625]]
    assert torch.allclose(matrices[("text", "image")], t([[[0.375, 0.375], [0.625, 0.625]]]))


def test_rollout_reads_a_causal_row_stream_by_its_row():
    maps = {0: t([[[1.0, 0.0], [0.5, 0.5]]]), 1: t([[[1.0, 0.0], [0.0, 1.0]]]), 2: t([[[0.2, 0.8], [0.6, 0.4]]])}
    causal = replace(schedule(), steps=[(TEXT_1,), (IMAGE_1,), (CROSS,)], causal=frozenset({"text"}))
    # rollout_tt = norm(A0 + I) = [[1, 0], [.25, .75]], rollout_ii = norm(A1 + I) = I
    # causal: rollout_tt A_cross = [[.2, .8], [.25 * .2 + .75 * .6, .25 * .8 + .75 * .4]]
    assert torch.allclose(rollout_relevance(causal, maps)[("text", "image")], t([[[0.2, 0.8], [0.5, 0.5]]]))
    # the reference's rollout_tt^T A_cross: row 0 reads token 1's row, [.2 + .25 * .6, .8 + .25 * .4]
    reference = replace(causal, causal=frozenset())
    assert torch.allclose(rollout_relevance(reference, maps)[("text", "image")], t([[[0.35, 0.9], [0.45, 0.3]]]))


def test_start_layer_drops_each_modalitys_first_self_attentions():
    started = schedule().starting_at(1)
    assert started.steps == [(CROSS,), (TEXT_2,)]
    assert schedule().starting_at(0).steps == schedule().steps
    matrices = rollout_relevance(started, MAPS)
    assert torch.allclose(matrices[("text", "text")], t([[[0.5, 0.5], [0.0, 1.0]]]))
    assert torch.allclose(matrices[("text", "image")], MAPS[2])


def test_generic_relevance_on_the_schedule():
    matrices = generic_relevance(schedule(), MAPS)
    # after TEXT_1: R_tt = I + A0 = [[1.5, .5], [0, 2]]; after IMAGE_1: R_ii = I + A1 = [[1, 1], [1, 1]]
    # CROSS: R_hat_tt = [[.5, .5], [0, 1]] and R_hat_ii = [[0, 1], [1, 0]] have unit row sums, so
    #   R_bar_tt = R_tt, R_bar_ii = R_ii; R_bar_tt^T A2 = [[1.5, 0], [.5 + 1, 1]] = [[1.5, 0], [1.5, 1]];
    #   dR_ti = that times [[1, 1], [1, 1]] = [[1.5, 1.5], [2.5, 2.5]]; Eq. 11 adds A2 R_it = 0
    # TEXT_2: R_tt += A3 R_tt = [[0, 2], [0, 2]] -> [[1.5, 2.5], [0, 4]]
    #         R_ti += A3 R_ti = [[2.5, 2.5], [2.5, 2.5]] -> [[4, 4], [5, 5]]
    assert torch.allclose(matrices[("text", "text")], t([[[1.5, 2.5], [0.0, 4.0]]]))
    assert torch.allclose(matrices[("text", "image")], t([[[4.0, 4.0], [5.0, 5.0]]]))


def test_three_modalities_in_a_chain_compose_through_the_middle_stage():
    """BLIP question answering's shape: vision self-attention, question self- and cross-attention to the vision
    tokens, answer self- and cross-attention to the question. Eq. 10 gives R^{tq} and R^{qv} (Eq. 11 void both
    times); the answer's image relevance is R^{tq}[k] . R^{qv}[:, patches] (a Stage through ("question", "vision"))."""
    from captum_mm.attr._readout import read_out
    from captum_mm.relevance.schedule import Stage

    events = [AttentionEvent(0, "vision", "vision"), AttentionEvent(1, "question", "question"),
              AttentionEvent(2, "question", "vision"), AttentionEvent(3, "target", "target"),
              AttentionEvent(4, "target", "question")]
    maps = {
        0: t([[[0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]),
        1: t([[[0.5, 0.5], [0.0, 1.0]]]),
        2: t([[[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]]),
        3: t([[[1.0, 0.0], [0.5, 0.5]]]),
        4: t([[[1.0, 0.0], [0.5, 0.5]]]),
    }
    row = torch.ones(1, dtype=torch.long)  # the answer's second token
    image = Readout("target", row, "question", grid=(1, 2), through=Stage(("question", "vision"), slice(None), slice(1, None)))
    chain = Schedule(
        sizes={"vision": 3, "question": 2, "target": 2},
        masks={name: torch.ones(1, size, dtype=torch.bool) for name, size in (("vision", 3), ("question", 2), ("target", 2))},
        steps=[(event,) for event in events],
        outputs={"text": Readout("target", row, "question"), "image": image},
        element_sample=torch.zeros(1, dtype=torch.long),
    )
    matrices = generic_relevance(chain, maps)
    # Every A_hat below has unit row sums, so each R_bar = R. R_vv = I + A0; R_qq = I + A1 = [[1.5, .5], [0, 2]].
    # Eq. 10, question -> vision: R_qq^T A2 = [[1.5, 0, 0], [.5, 1, 1]], times R_vv = [[1, .5, .5], [1, 1, 0], [0, 1, 1]]
    assert torch.allclose(matrices[("question", "vision")], t([[[1.5, 0.75, 0.75], [1.5, 2.25, 1.25]]]))
    # R_tt = I + A3 = [[2, 0], [.5, 1.5]]; R_tq is 0 until Eq. 10, target -> question:
    # R_tt^T A4 = [[2.25, .25], [.75, .75]], times R_qq
    assert torch.allclose(matrices[("target", "question")], t([[[3.375, 1.625], [1.125, 1.875]]]))
    outputs = read_out(chain, matrices)
    assert torch.allclose(outputs["text"], t([[1.125, 1.875]]))
    # image = [1.125, 1.875] . R_qv[:, 1:] = 1.125 [.75, .75] + 1.875 [2.25, 1.25]
    assert torch.allclose(outputs["image"], t([[[5.0625, 3.1875]]]))
    raw = read_out(chain, last_layer_relevance(chain, maps))  # A4[1] . A2[:, 1:]
    assert torch.allclose(raw["text"], t([[0.5, 0.5]])) and torch.allclose(raw["image"], t([[[0.25, 0.25]]]))


def test_row_only_propagation_on_a_hand_computed_chain():
    # one modality, two layers: R = (I + A2)(I + A1); row 1 of it, v <- v (I + A2), then v <- v (I + A1):
    # v = [0, 1] (I + A2) = [0, 1] + [.5, .5] = [.5, 1.5]; then + v A1 = [.5, 1.5] + [.25, .25 + 1.5] = [.75, 3.25]
    from captum_mm.attr._readout import read_out
    from captum_mm.relevance.propagation import RowRelevance

    events = [AttentionEvent(0, "text", "text"), AttentionEvent(1, "text", "text")]
    maps = {0: t([[[0.5, 0.5], [0.0, 1.0]]]), 1: t([[[1.0, 0.0], [0.5, 0.5]]])}
    chain = Schedule(sizes={"text": 2}, masks={"text": torch.ones(1, 2, dtype=torch.bool)}, steps=[(e,) for e in events],
                     outputs={"text": Readout("text", torch.ones(1, dtype=torch.long), "text")},
                     element_sample=torch.zeros(1, dtype=torch.long))
    relevance = generic_relevance(chain, maps)
    assert isinstance(relevance, RowRelevance)
    assert torch.allclose(relevance.rows(("text", "text"), torch.ones(1, dtype=torch.long)), t([[0.75, 3.25]]))
    assert torch.allclose(read_out(chain, relevance)["text"], t([[0.75, 0.0]]))  # the row's own entry zeroed


def _full_products(schedule, maps, factor):
    """Each modality's ``S_L ... S_1`` as full matrices (later layers on the left), ``factor(A)`` giving ``S``."""
    matrices = {}
    for modality, size in schedule.sizes.items():
        product = torch.eye(size, dtype=torch.float64).expand(schedule.num_elements, size, size)
        for event in schedule.self_events(modality):
            product = torch.bmm(factor(maps[event.call]), product)
        matrices[(modality, modality)] = product
    return matrices


def test_row_only_propagation_equals_the_full_matrices_through_a_stage_and_a_token_map():
    """A LLaVA-like schedule: three vision layers, then two LM layers over a sequence whose tokens 1-2 are image tokens,
    each pooling two of the vision tokens 1-4 (a token map); three elements read at different rows."""
    from captum_mm.attr._readout import read_out
    from captum_mm.relevance.propagation import RowRelevance, transformer_attribution_relevance
    from captum_mm.relevance.rules import normalized_with_identity
    from captum_mm.relevance.schedule import Stage

    torch.manual_seed(0)
    events = [AttentionEvent(k, "vision", "vision") for k in range(3)] + [AttentionEvent(k, "sequence", "sequence") for k in (3, 4)]
    sizes = {"vision": 5, "sequence": 6}
    maps = {e.call: torch.rand(3, sizes[e.query], sizes[e.query], dtype=torch.float64).softmax(-1) for e in events}
    rows = torch.tensor([5, 4, 5])
    pooling = t([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    image = Readout("sequence", rows, "sequence", column_index=torch.tensor([[1, 2]] * 3),
                    through=Stage(("vision", "vision"), slice(1, 5), slice(1, None), pooling), grid=(2, 2))
    chain = Schedule(sizes=sizes, masks={m: torch.ones(3, n, dtype=torch.bool) for m, n in sizes.items()},
                     steps=[(e,) for e in events], outputs={"text": Readout("sequence", rows, "sequence"), "image": image},
                     element_sample=torch.arange(3))
    eye = lambda a: torch.eye(a.shape[-1], dtype=a.dtype)  # noqa: E731
    cases = [
        (generic_relevance(chain, maps), lambda a: eye(a) + a),
        (generic_relevance(chain, maps, aggregate=False), lambda a: a),
        (rollout_relevance(chain, maps), normalized_with_identity),
        (transformer_attribution_relevance(chain, maps), lambda a: eye(a) + a),
    ]
    for relevance, factor in cases:
        assert isinstance(relevance, RowRelevance)
        rows_only, full = read_out(chain, relevance), read_out(chain, _full_products(chain, maps, factor))
        for name in ("text", "image"):
            torch.testing.assert_close(rows_only[name], full[name], rtol=1e-12, atol=1e-12)
