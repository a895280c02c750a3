"""``max_memory``: explained elements taken in groups of backward slots whose relevance buffers fit, with the same
results; ``"auto"`` (the default) a quarter of the available memory, at most 1 GiB."""

import pytest
import torch

from captum_mm.attr import AttentionRollout, GenericAttention, TransformerAttribution
from captum_mm.attr import _base, _memory
from helpers import encoder_decoder_model, language_model, prompt_batch

CONTINUATION = [[5, 6, 7, 8], [7, 9], [8, 9, 10]]


def prompt():
    torch.manual_seed(0)
    ids, mask = prompt_batch()
    return {"input_ids": ids, "attention_mask": mask}


def grouped(monkeypatch, explainer, batch):
    """The explanation, and the slot groups it was explained in."""
    groups = []
    monkeypatch.setattr(_base, "slot_groups", lambda *args: groups.extend(_memory.slot_groups(*args)) or groups)
    return explainer.explain(batch, continuation=CONTINUATION), [group.tolist() for group in groups]


def assert_same(explanation, reference):
    assert explanation.relevance.keys() == reference.relevance.keys()
    for name in reference.relevance:
        torch.testing.assert_close(explanation.relevance[name], reference.relevance[name])


def test_auto_is_the_default_and_equals_no_limit_on_a_small_case(monkeypatch):
    model = language_model("llama")
    explainer = GenericAttention(model)
    assert explainer.max_memory == "auto"
    automatic, groups = grouped(monkeypatch, explainer, prompt())
    assert groups == [[0, 1, 2, 3]]  # a few kB fit in a quarter of any machine's memory
    explainer.max_memory = None
    assert_same(automatic, explainer.explain(prompt(), continuation=CONTINUATION))


def test_auto_is_a_quarter_of_the_available_memory_at_most_one_gib(monkeypatch):
    monkeypatch.setattr(_memory, "available_memory", lambda device: 4000)
    assert _memory.memory_budget("auto", torch.device("cpu")) == 1000
    monkeypatch.setattr(_memory, "available_memory", lambda device: 64 << 30)
    assert _memory.memory_budget("auto", torch.device("cpu")) == 1 << 30
    monkeypatch.setattr(_memory, "available_memory", lambda device: None)  # unknown: no limit
    assert _memory.memory_budget("auto", torch.device("cpu")) is None
    assert _memory.memory_budget(1e9, torch.device("cpu")) == 1_000_000_000
    for wrong in ("half", 0, -5, 0.5, True):
        with pytest.raises(ValueError, match='max_memory must be a number of bytes \\(at least 1\\), "auto" or None'):
            _memory.memory_budget(wrong, torch.device("cpu"))


def test_available_memory_on_cpu_is_what_the_system_reports():
    available = _memory.available_memory(torch.device("cpu"))
    with open("/proc/meminfo") as meminfo:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in meminfo}
    assert 0 < available <= fields["MemTotal"]
    assert _memory.available_memory(torch.device("meta")) is None


def vectorized_transformer_attribution(model):
    explainer = TransformerAttribution(model)
    explainer.vectorized_backward = True  # a group's slots in one backward (as on accelerators)
    return explainer


@pytest.mark.parametrize("family", ["llama", "bart"])
@pytest.mark.parametrize("make", [GenericAttention, AttentionRollout, TransformerAttribution, vectorized_transformer_attribution],
                         ids=["generic", "rollout", "ta", "ta-vectorized"])
def test_a_budget_of_two_slots_gives_groups_of_two_with_the_same_results(family, make, monkeypatch):
    model = (language_model if family == "llama" else encoder_decoder_model)(family)
    explainer = make(model)
    explainer.max_memory = None
    whole = explainer.explain(prompt(), continuation=CONTINUATION)
    sizes = []
    element_bytes = _memory.element_bytes
    monkeypatch.setattr(_memory, "element_bytes", lambda *args: sizes.append(element_bytes(*args)) or sizes[-1])
    explainer.max_memory = 1 << 40
    explainer.explain(prompt(), continuation=CONTINUATION)
    explainer.max_memory = 2 * 3 * sizes[0]  # two slots of three samples' tokens
    budgeted, groups = grouped(monkeypatch, explainer, prompt())
    assert groups == [[0, 1], [2, 3]]
    assert_same(budgeted, whole)


def test_auto_with_little_memory_groups_and_warns(monkeypatch):
    model = language_model("llama")
    explainer = GenericAttention(model)
    whole = explainer.explain(prompt(), continuation=CONTINUATION)
    monkeypatch.setattr(_memory, "available_memory", lambda device: 4)
    with pytest.warns(UserWarning, match=r'max_memory="auto" \(1 bytes: a quarter of the memory available, at most '
                                         r"1 GiB\) is less than one backward's explained elements need"):
        budgeted, groups = grouped(monkeypatch, explainer, prompt())
    assert groups == [[0], [1], [2], [3]]
    assert_same(budgeted, whole)


def test_a_wrong_budget_is_a_clear_error():
    explainer = GenericAttention(language_model("llama"))
    explainer.max_memory = "1GB"
    with pytest.raises(ValueError, match="max_memory must be a number of bytes .* got '1GB'"):
        explainer.explain(prompt(), continuation=CONTINUATION)
