"""The registry picks the adapter of the most specific class; a user's adapter overrides a built-in one."""

import pytest
from transformers import BertForSequenceClassification

from captum_mm.attr import GenericAttention
from captum_mm.models import adapter_for, register_adapter
from captum_mm.models import registry
from captum_mm.models.bert import BertAdapter
from helpers import bert, bert_case


class MyBert(BertForSequenceClassification):
    """A user's subclass of a supported class."""


@pytest.fixture
def restored_registry(monkeypatch):
    monkeypatch.setattr(registry, "_ADAPTERS", dict(registry._ADAPTERS))


def test_most_specific_class_wins(restored_registry):
    @register_adapter
    class MyBertAdapter(BertAdapter):
        model_classes = (MyBert,)

    subclassed = MyBert(bert().config).eval()
    assert type(adapter_for(subclassed)) is MyBertAdapter
    assert type(adapter_for(bert())) is BertAdapter  # the built-in still serves the base class


def test_subclass_of_a_supported_class_uses_its_adapter():
    assert type(adapter_for(MyBert(bert().config))) is BertAdapter


def test_user_adapter_overrides_the_built_in(restored_registry):
    calls = []

    @register_adapter
    class CountingBertAdapter(BertAdapter):
        def schedule(self, record, selection):
            calls.append(len(record.calls))
            return super().schedule(record, selection)

    case = bert_case()
    explanation = GenericAttention(case.model).explain(case.inputs, None, case.additional)
    assert calls == [2] and explanation.text.shape == (3, 6)


def test_the_override_is_undone_with_the_registry(restored_registry):
    assert type(adapter_for(bert())) is BertAdapter
