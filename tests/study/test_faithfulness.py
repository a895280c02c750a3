"""The faithfulness comparison's words, from hand-made tables: refused methods n/a with their reason, the winners
counted, what leaving sinks out did, infidelity's mean over finite samples."""

import torch

from captum_mm.metrics.perturbation import TokenGroup
from captum_mm.study.faithfulness import Infidelity, _ends, mark_refused, refused_methods, sinks_effect, winners
from captum_mm.study.report import table


def _tables():
    auc = table({"Neg. img": {"ours": 80.0, "rollout": 82.0, "ours w/o sinks": 81.004},
                 "Pos. img": {"ours": 60.0, "rollout": 60.0, "ours w/o sinks": 61.0}},
                ["ours", "rollout", "ours w/o sinks"], "t", "m_auc", {"Neg. img": "higher", "Pos. img": "lower"})
    plausibility = table({"pointing %": {"ours": 90.0, "rollout": 70.0, "ours w/o sinks": 90.001}},
                         ["ours", "rollout", "ours w/o sinks"], "p", "m_plausibility", {"pointing %": "higher"})
    return [auc, plausibility]


def test_winners_are_counted_per_test_with_ties():
    assert winners(_tables()) == ("Which method to trust (the best value of each of 3 tests; ties count for each): "
                                  "rollout 2 (Neg. img, Pos. img); ours 2 (Pos. img, pointing %); "
                                  "ours w/o sinks 1 (pointing %).")


def test_sinks_effect_as_shown_helped_hurt_or_no_change():
    assert sinks_effect(_tables()) == (
        "Attention sinks left out (first token and tokens taking ≥ 25% of attention; helped 1, hurt 1, no change 1): "
        "ours Neg. img 80.00 → 81.00 (helped); ours Pos. img 60.00 → 61.00 (hurt); ours pointing % 90.00 → 90.00 "
        "(no change).")
    assert sinks_effect([table({"r": {"ours": 1.0}}, ["ours"], "t", "n", {"r": "higher"})]) == ""


def test_a_refused_method_is_n_a_with_its_reason():
    def refusing(forward_func, model=None):
        raise TypeError("AttnLRP cannot explain this model (X): reasons.")

    kept, refused = refused_methods({"ours": lambda forward_func, model=None: object(), "AttnLRP": refusing}, None)
    assert list(kept) == ["ours"] and refused == {"AttnLRP": "AttnLRP cannot explain this model (X): reasons."}
    tables = _tables()
    mark_refused(tables, refused)
    assert tables[1]["columns"][-1] == "AttnLRP" and tables[1]["rows"]["pointing %"]["AttnLRP"] == -1.0
    assert tables[0]["notes"] == ["n/a (AttnLRP): the method refuses this model: AttnLRP cannot explain this model (X): "
                                  "reasons."]
    assert winners(tables).startswith("Which method to trust (the best value of each of 3 tests")  # n/a never wins


def test_infidelity_of_exact_relevance_is_zero_and_the_ends_are_kept():
    """A linear model's exact relevance (its weights) gives infidelity 0, zero relevance the mean squared change; a
    text's first and last real token are never dropped."""
    weights = torch.tensor([1.0, -2.0, 3.0, 0.5])

    def forward(tokens, mask):
        return torch.stack([(tokens * mask * weights).sum(1), torch.zeros(len(tokens))], 1)

    batch = {"tokens": torch.ones(2, 4), "mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
    metric = Infidelity(forward, lambda indices: (batch, torch.tensor([0, 0])), {"text": TokenGroup(("tokens",), "mask")},
                        perturbations=16, share=0.5)
    metric("exact", [0, 1], {"text": weights.expand(2, 4)})
    metric("zero", [0, 1], {"text": torch.zeros(2, 4)})
    table = metric.table("t", "n")
    assert abs(table["rows"]["text infid."]["exact"]) < 1e-12 and table["rows"]["text infid."]["zero"] > 1
    assert _ends(batch["mask"].double(), True).tolist() == [[True, False, False, True], [True, False, True, False]]
