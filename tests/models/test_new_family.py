"""A new family is one file: here, a family whose attention is LLaMA's under its own class name gets its adapter,
which declares its attention function (lean capture, the float64 softmax); nothing else lists it."""

from types import MappingProxyType

import pytest
import torch
from helpers import language_model, prompt_batch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention

from captum_mm.adapters.llama import LlamaAdapter
from captum_mm.attr import GenericAttention
from captum_mm.attr.engine import forward_pass
from captum_mm.generation import generation_forward
from captum_mm.models import adapter_for, register_adapter, registry

CONTINUATION = [[5, 6], [7], [8, 9]]


class ToyAttention(LlamaAttention):
    """The new family's attention (LLaMA's eager function, found through its base class)."""


class ToyForCausalLM(LlamaForCausalLM):
    """A LLaMA whose attention modules are the new family's."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        for index, layer in enumerate(self.model.layers):
            layer.self_attn = ToyAttention(config, layer_idx=index)


class ToyAdapter(LlamaAdapter):
    model_classes = (ToyForCausalLM,)
    attention_classes = (ToyAttention,)
    attention_functions = MappingProxyType({ToyAttention: True})  # its eager function takes the softmax in float32


class UndeclaredToyAdapter(ToyAdapter):
    """Declares only LLaMA's classes: a subclass of a declared class is not served (exact types)."""

    attention_functions = LlamaAdapter.attention_functions


@pytest.fixture
def toy_registered(monkeypatch):
    """ToyAdapter registered for this test only (the registry is global)."""
    monkeypatch.setattr(registry, "_ADAPTERS", dict(registry._ADAPTERS))
    register_adapter(ToyAdapter)


def toy_and_llama():
    """A float64 toy model and a LLaMA with the same weights, and a left-padded prompt (its padding rows see no key)."""
    config = language_model("llama").config
    torch.manual_seed(0)
    toy = ToyForCausalLM(config).double().eval()
    llama = LlamaForCausalLM(config).double().eval()
    llama.load_state_dict(toy.state_dict())
    ids, mask = prompt_batch()
    return toy, llama, {"input_ids": ids, "attention_mask": mask}


def captured_calls(model, prompt, adapter, continuation=CONTINUATION):
    method = GenericAttention(model)
    forward, arguments, target = generation_forward(model, prompt, continuation, False, None)
    with forward_pass(model, forward, arguments, target=target, needs=method.needs, adapter=adapter) as run:
        return run.record.calls


def test_the_adapter_in_the_family_file_serves_it_lean(toy_registered):
    toy, _, prompt = toy_and_llama()
    adapter = adapter_for(toy)
    assert type(adapter) is ToyAdapter
    calls = captured_calls(toy, prompt, adapter)
    assert len(calls) == 2 and all(call.lean is not None and call.probs is None for call in calls)
    unpadded = {name: values[:1] for name, values in prompt.items()}
    undeclared = captured_calls(toy, unpadded, UndeclaredToyAdapter(toy), CONTINUATION[:1])
    assert len(undeclared) == 2 and all(call.lean is None and call.probs is not None for call in undeclared)
    with pytest.raises(ValueError, match="NaN"):  # undeclared: HF's float32 softmax, NaN on the padding rows
        captured_calls(toy, prompt, UndeclaredToyAdapter(toy))


def test_lean_equals_eager_and_the_built_in_llama_adapter(toy_registered):
    toy, llama, prompt = toy_and_llama()
    lean = GenericAttention(toy).explain(prompt, continuation=CONTINUATION)
    eager = GenericAttention(toy).explain(prompt, continuation=CONTINUATION, lean=False)
    built_in = GenericAttention(llama).explain(prompt, continuation=CONTINUATION)
    assert lean.relevance.keys() == eager.relevance.keys() == built_in.relevance.keys() == {"text", "generated"}
    assert lean.text.abs().sum() > 0
    for name, values in lean.relevance.items():
        assert values.dtype == torch.float64 and not values.isnan().any()
        torch.testing.assert_close(values, eager.relevance[name], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(values, built_in.relevance[name], rtol=0, atol=0)


def test_the_registration_is_gone_after_the_test():
    toy, _, _ = toy_and_llama()
    assert type(adapter_for(toy)) is LlamaAdapter  # the built-in serves its base class
