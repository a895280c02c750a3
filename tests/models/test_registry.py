"""The registry picks the adapter of the most specific class; a user's adapter overrides a built-in one."""

import importlib
import sys

import pytest
import torch
import transformers
from helpers import bert, bert_case
from transformers import BertForSequenceClassification
from transformers.models.mixtral.modeling_mixtral import MixtralAttention, MixtralDecoderLayer, MixtralRMSNorm
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3DecoderLayer, Qwen3MLP, Qwen3RMSNorm

from captum_mm.adapters.bert import BertAdapter
from captum_mm.adapters.llama import LlamaAdapter
from captum_mm.attr import AttentionGradCam, AttentionRollout, GenericAttention, PartialLRP, RawAttention, TransformerAttribution
from captum_mm.models import adapter_for, register_adapter, registry, supported_classes


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


@pytest.mark.parametrize("model_class, closest, adapter", [
    ("Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaAdapter"),
    ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "Qwen3MoeAdapter"),  # its shared expert has no rule yet
    ("RobertaModel", "BertModel", "BertAdapter"),
])
def test_an_unsupported_model_is_pointed_to_the_closest_family_register_adapter_and_tutorial_04(model_class, closest, adapter):
    configs = {
        "Qwen3ForCausalLM": dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=8),
        "Qwen2MoeForCausalLM": dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, num_experts=2, moe_intermediate_size=16,
                                    shared_expert_intermediate_size=16, eos_token_id=2),
        "RobertaModel": dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
    }
    cls = getattr(transformers, model_class)
    model = cls(cls.config_class(**configs[model_class])).eval()
    with pytest.raises(TypeError, match=rf"cannot explain a {model_class} \(model_type '\w+'\): no architecture adapter serves it\. "
                                        rf"The closest supported family by name is {closest}, served by {adapter}\..*"
                                        r"captum_mm\.models\.register_adapter.*tutorial 04_bring_your_own_model\.ipynb"):
        adapter_for(model)


LLAMA_REUSED = {  # LlamaAdapter's classes extended by the model's own: what a user reusing it would register
    "Qwen3ForCausalLM": dict(attention_classes=(Qwen3Attention,), layer_classes=(Qwen3DecoderLayer,),
                             mlp_classes=(Qwen3MLP,), norm_classes=(Qwen3RMSNorm,)),
    "MixtralForCausalLM": dict(attention_classes=(MixtralAttention,), layer_classes=(MixtralDecoderLayer,),
                               norm_classes=(MixtralRMSNorm,)),
}
UNCOVERED = {"Qwen3ForCausalLM": r"model\.layers\.0\.self_attn\.q_norm \(Qwen3RMSNorm\)",  # QK-norm inside attention
             "MixtralForCausalLM": r"model\.layers\.0\.mlp\.gate \(MixtralTopKRouter\), model\.layers\.0\.mlp\.experts \(MixtralExperts\)"}


@pytest.mark.parametrize("model_class", list(LLAMA_REUSED))
def test_lrp_methods_refuse_blocks_the_reused_adapter_has_no_rule_for(restored_registry, model_class):
    cls = getattr(transformers, model_class)
    config = cls.config_class(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=8, num_local_experts=2)
    model = cls(config).eval()
    extended = {name: getattr(LlamaAdapter, name) + classes for name, classes in LLAMA_REUSED[model_class].items()}
    register_adapter(type("ReusedLlamaAdapter", (LlamaAdapter,), {"model_classes": (cls,), **extended}))
    prompt = torch.randint(0, 50, (1, 5))
    for method in (GenericAttention, AttentionRollout, RawAttention, AttentionGradCam):
        assert method(model).explain(prompt, continuation=[[3, 4]]).text.abs().sum() > 0
    lrp_methods = (PartialLRP, TransformerAttribution, lambda m: GenericAttention(m, head_weighting="lrp"))
    for method in lrp_methods:
        with pytest.raises(TypeError, match=rf"LRP-based methods cannot explain this {model_class}: no LRP rule of its "
                                            rf"adapter covers {UNCOVERED[model_class]}.* unverified.*covered_types"):
            method(model).explain(prompt, continuation=[[3, 4]])


def test_an_adapter_finding_no_attention_module_says_so(restored_registry):
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8)).eval()
    register_adapter(type("PlainLlamaReuse", (LlamaAdapter,), {"model_classes": (type(model),)}))
    with pytest.raises(TypeError, match="PlainLlamaReuse finds no attention module in this Qwen3ForCausalLM"):
        AttentionRollout(model).explain(torch.randint(0, 50, (1, 4)), continuation=[[3]])


def test_an_adapter_file_registers_itself_when_its_package_is_scanned(restored_registry, tmp_path, monkeypatch):
    package = tmp_path / "my_adapters"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "my_bert.py").write_text(
        "from transformers import BertForSequenceClassification\n\nfrom captum_mm.models import register_adapter\n"
        "from captum_mm.adapters.bert import BertAdapter\n\n\nclass MyBertForScan(BertForSequenceClassification):\n    pass\n\n\n"
        "@register_adapter\nclass MyBertAdapter(BertAdapter):\n    model_classes = (MyBertForScan,)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("my_adapters", "my_adapters.my_bert"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert "MyBertForScan" not in supported_classes()
    assert registry.import_modules(importlib.import_module("my_adapters")) == ["my_adapters.my_bert"]
    model = sys.modules["my_adapters.my_bert"].MyBertForScan(bert().config)
    assert type(adapter_for(model)).__name__ == "MyBertAdapter"


def test_every_built_in_adapter_module_is_imported():
    names = registry.import_modules(importlib.import_module("captum_mm.adapters"))
    assert {adapter.__module__ for adapter in registry._ADAPTERS.values()} <= set(names)
    assert {"captum_mm.adapters.llama", "captum_mm.adapters.blip2", "captum_mm.adapters.vision_language"} <= set(names)
