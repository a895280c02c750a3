"""Models dispatched by accelerate (offloaded to CPU or disk, split over CPU and disk by a device map, loaded by
from_pretrained with a device map) are explained by every method exactly as the plain model. Their offloading hooks
put the weights back on the meta device as each module's forward ends; the LRP rules read the weight the forward
used from the hooks' maps. Compared in float64 (LRP is ill-conditioned in float32 on random models), but for
torchao-quantized models (float32 only; their weights dequantized from the hooks' maps) and models with gradient
checkpointing left on, compared with themselves before offloading."""

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Tuple

import pytest
import torch
from accelerate import cpu_offload, disk_offload, dispatch_model
from torch import nn

from captum_mm.attr import AttentionRollout, GenericAttention, TransformerAttribution
from helpers import bert, encoder_decoder_model, language_model, llava, prompt_batch, text_batch, vlm_prompts
from methods_under_test import METHODS

EXPLAINED = ["generic", "generic-lrp", "raw-attention", "rollout", "grad-cam", "partial-lrp", "transformer-attribution"]
CPU = torch.device("cpu")
CONTINUATION = [[5, 6], [7, 8]]


def alternating_device_map(model: nn.Module) -> Dict[str, str]:
    """The modules holding parameters of their own (with their submodules) on "cpu" and "disk" in turn, both within
    every block; modules sharing a tied parameter on the same device (as accelerate requires)."""
    device_map: Dict[str, str] = {}
    placed: Dict[int, str] = {}  # id(parameter): its device
    devices = itertools.cycle(("cpu", "disk"))
    for name, module in model.named_modules():
        own = [id(parameter) for parameter in module.parameters(recurse=False)]
        if own and not any(name.startswith(f"{owner}.") for owner in device_map):
            device_map[name] = next((placed[parameter] for parameter in own if parameter in placed), None) or next(devices)
            placed.update(dict.fromkeys(own, device_map[name]))
    return device_map


def from_pretrained(model: nn.Module, folder: str) -> nn.Module:
    model.save_pretrained(f"{folder}/checkpoint")
    return type(model).from_pretrained(f"{folder}/checkpoint", device_map=alternating_device_map(model),
                                       offload_folder=f"{folder}/offload", dtype=torch.float64).eval()


DISPATCH: Dict[str, Callable[[nn.Module, str], nn.Module]] = {
    "cpu_offload": lambda model, folder: cpu_offload(model, execution_device=CPU),
    "disk_offload": lambda model, folder: disk_offload(model, folder, execution_device=CPU),
    "dispatch_model": lambda model, folder: dispatch_model(model, alternating_device_map(model), offload_dir=folder),
    "from_pretrained": from_pretrained,
}


@dataclass
class Family:
    """A float64 model, how each method explains it (or a dispatched copy), and the plain model's explanations."""

    model: nn.Module
    explain: Callable[[Any], Any]
    references: Dict[str, Any] = field(default_factory=dict)

    def reference(self, method: str) -> Any:
        if method not in self.references:
            self.references[method] = self.explain(METHODS[method](self.model))
        return self.references[method]


def generative(model: nn.Module, prompt: Dict[str, torch.Tensor]) -> Family:
    """Prompts without padding (float64 left padding is another matter)."""
    prompt["input_ids"] = prompt["input_ids"].where(prompt["attention_mask"].bool(), 9)
    prompt["attention_mask"] = torch.ones_like(prompt["attention_mask"])
    return Family(model.double(), lambda explainer: explainer.explain(prompt, continuation=CONTINUATION))


def classifier(layers: int = 1) -> Family:
    ids, mask = text_batch(2)
    return Family(bert(layers=layers).double(), lambda explainer: explainer.explain(ids, torch.tensor([2, 5]), (mask,)))


FAMILIES: Dict[str, Callable[[], Family]] = {
    "llama": lambda: generative(language_model("llama", layers=1), dict(zip(("input_ids", "attention_mask"), prompt_batch(2, 5)))),
    "llava": lambda: generative(llava(vision_layers=2, layers=1), vlm_prompts(batch=2)),
    "t5": lambda: generative(encoder_decoder_model("t5", layers=1), dict(zip(("input_ids", "attention_mask"), prompt_batch(2, 5)))),
    "bert": classifier,
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: Any) -> Family:
    torch.manual_seed(0)
    return FAMILIES[request.param]()


@pytest.fixture(scope="module", params=sorted(DISPATCH))
def dispatched(request: Any, family: Family, tmp_path_factory: Any) -> nn.Module:
    return DISPATCH[request.param](copy.deepcopy(family.model), str(tmp_path_factory.mktemp("offload")))


def assert_same_explanation(explanation: Any, reference: Any) -> None:
    assert explanation.relevance.keys() == reference.relevance.keys()
    for name, values in reference.relevance.items():
        assert torch.isfinite(values).all() and (name == "generated" or values.abs().sum() > 0), name  # can fail
        torch.testing.assert_close(explanation.relevance[name], values, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(explanation.scores, reference.scores, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("method", EXPLAINED)
def test_dispatched_model_explained_as_the_plain_model(family: Family, dispatched: nn.Module, method: str) -> None:
    assert any(parameter.device.type == "meta" for parameter in dispatched.parameters())  # offloaded indeed
    assert_same_explanation(family.explain(METHODS[method](dispatched)), family.reference(method))


def eager(explainer: Any) -> Any:
    explainer.lean = False
    return explainer


def test_eager_capture_and_attribute_on_an_offloaded_model() -> None:
    """The methods' eager capture (lean capture: above), and Captum's attribute."""
    family = FAMILIES["bert"]()
    ids, mask = text_batch(2)
    dispatched = cpu_offload(copy.deepcopy(family.model), execution_device=CPU)
    for make in (lambda model: eager(GenericAttention(model)), lambda model: eager(AttentionRollout(model)), TransformerAttribution):
        reference = make(family.model).attribute(ids, torch.tensor([2, 5]), (mask,))
        assert reference[0].abs().sum() > 0
        torch.testing.assert_close(make(dispatched).attribute(ids, torch.tensor([2, 5]), (mask,)), reference, rtol=1e-6, atol=1e-12)


def offloaded_state(model: nn.Module) -> Tuple[Any, ...]:
    parameters = {name: (parameter.device, parameter.requires_grad) for name, parameter in model.named_parameters()}
    hooks = [(module.__dict__.get("forward"), module.__dict__.get("_hf_hook"), dict(module._forward_hooks),
              dict(module._forward_pre_hooks)) for module in model.modules()]
    return parameters, hooks


@pytest.mark.parametrize("method", ["generic", "transformer-attribution"])
def test_offloaded_frozen_model_left_as_it_was(method: str) -> None:
    """accelerate replaces the parameter objects at every forward: the frozen flags are restored on the model's own."""
    family = FAMILIES["llama"]()
    dispatched = cpu_offload(copy.deepcopy(family.model).requires_grad_(False), execution_device=CPU)
    before = offloaded_state(dispatched)
    assert_same_explanation(family.explain(METHODS[method](dispatched)), family.reference(method))
    assert offloaded_state(dispatched) == before


def test_weights_loaded_by_a_parent_hook_refused_by_lrp_methods() -> None:
    """preload_module_classes: the MLP's hook loads its projections' weights, which keep no hook of their own."""
    family = FAMILIES["llama"]()
    dispatched = cpu_offload(copy.deepcopy(family.model), execution_device=CPU, preload_module_classes=["LlamaMLP"])
    with pytest.raises(ValueError, match="preload_module_classes"):
        family.explain(TransformerAttribution(dispatched))
    assert_same_explanation(family.explain(GenericAttention(dispatched)), family.reference("generic"))


def quantized(model: nn.Module) -> nn.Module:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig())
    return model


def checkpointed(model: nn.Module) -> nn.Module:
    model.gradient_checkpointing_enable()
    return model.train()  # checkpointing acts in training mode (the Llama has no dropout)


@pytest.mark.parametrize("prepare", [quantized, checkpointed])
def test_offloaded_quantized_or_checkpointed_model_explained_as_before_offloading(prepare: Callable[[nn.Module], nn.Module]) -> None:
    """torchao's int8 weights offloaded (the rules dequantize the hook's copy), gradient checkpointing left on."""
    from big_models import KINDS, relative_error

    torch.manual_seed(0)
    family = KINDS["llama"]()
    model = prepare(copy.deepcopy(family.model))
    dispatched = cpu_offload(copy.deepcopy(model), execution_device=CPU)
    assert any(parameter.device.type == "meta" for parameter in dispatched.parameters())
    for method in EXPLAINED:
        assert relative_error(family.relevance(method, dispatched), family.relevance(method, model)) == 0, method
