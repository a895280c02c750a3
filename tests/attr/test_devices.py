"""Models split over two devices by a device map are explained as the plain model, the result on the inputs' device.

This machine has one device: the second is simulated (:mod:`simulated_devices`: tensors on ``lazy`` computing on the
CPU, every operation refusing to mix devices as torch does between real ones). The map puts the model's blocks before
the middle layer of its language model (or encoder) on one device and the rest on the other, as ``device_map="auto"``
fills devices in order, blocks the model says not to split whole. Two dispatches: each half executed where it is (a model over two GPUs), and the first
half on the second device, the ``cpu`` half offloaded and executed there too (a GPU with CPU offload: accelerate's
reading of ``"cpu"`` in a map whose main device is a GPU). Inputs on the CPU in both.
"""

import copy
from typing import Any, Callable, Dict, Tuple

import pytest
import torch
from accelerate import dispatch_model
from torch import nn

from captum_mm.lrp import quantized
from methods_under_test import METHODS
from simulated_devices import STAND_IN, Placed, simulated_devices
from helpers import encoder_decoder_model, language_model, llava, prompt_batch, vlm_prompts
from test_accelerate import EXPLAINED, Family, assert_same_explanation, classifier, generative

#: Each dispatch's devices of the two halves; the first is the main device.
HALVES: Dict[str, Tuple[str, str]] = {"split": ("cpu", STAND_IN.type), "offloaded": (STAND_IN.type, "cpu")}


#: Two layers a stage: the halves split the language model (the VLM: its vision tower from its language model).
FAMILIES: Dict[str, Callable[[], Family]] = {
    "llama": lambda: generative(language_model("llama", layers=2), dict(zip(("input_ids", "attention_mask"), prompt_batch(2, 5)))),
    "llava": lambda: generative(llava(vision_layers=2, layers=2), vlm_prompts(batch=2)),
    "t5": lambda: generative(encoder_decoder_model("t5", layers=2), dict(zip(("input_ids", "attention_mask"), prompt_batch(2, 5)))),
    "bert": lambda: classifier(layers=2),
}


#: The families and dispatches tested: the VLM and the encoder-decoder split only (the other two run both).
CASES = [("llama", "split"), ("llama", "offloaded"), ("bert", "split"), ("bert", "offloaded"), ("llava", "split"), ("t5", "split")]
_BUILT: Dict[str, Family] = {}


def family_named(name: str) -> Family:
    """Each family built once for the module (with its plain model's explanations)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = FAMILIES[name]()
    return _BUILT[name]


@pytest.fixture(autouse=True)
def placed_weights_read_as_dense(monkeypatch: Any) -> None:
    """The LRP rules refuse tensor subclasses they cannot dequantize; the stand-in device's are dense."""
    dequantizer = quantized.dequantizer
    monkeypatch.setattr(quantized, "dequantizer", lambda module, weight: quantized._dense if isinstance(weight, Placed)
                        else dequantizer(module, weight))


def halves_device_map(model: nn.Module, devices: Tuple[str, str]) -> Dict[str, str]:
    """The blocks holding parameters (those in ``model._no_split_modules`` whole, other modules with parameters of
    their own), in order: those before the middle layer of the last stack of unsplit blocks (the language model's,
    or the decoder's, or the encoder's) on ``devices[0]``, the rest on ``devices[1]``; a block sharing a tied
    parameter with an earlier one on that one's device (as accelerate requires)."""
    unsplit, blocks = set(model._no_split_modules or []), {}  # type: ignore[var-annotated]
    for name, module in model.named_modules():
        whole = type(module).__name__ in unsplit
        if not any(name.startswith(f"{block}.") for block in blocks) and list(module.parameters(recurse=whole)):
            blocks[name] = (type(module).__name__ if whole else None, {id(p) for p in module.parameters(recurse=whole)})
    kinds = [kind for kind, _ in blocks.values() if kind is not None]
    stack = [name for name, (kind, _) in blocks.items() if kind == kinds[-1]]
    middle, placed = list(blocks).index(stack[len(stack) // 2]), {}  # type: ignore[var-annotated]
    device_map = {}
    for index, (name, (_, parameters)) in enumerate(blocks.items()):
        device_map[name] = next((placed[p] for p in parameters if p in placed), devices[index >= middle])
        placed.update(dict.fromkeys(parameters, device_map[name]))
    return device_map


def dispatched(model: nn.Module, split: str) -> nn.Module:
    devices = HALVES[split]
    return dispatch_model(copy.deepcopy(model), halves_device_map(model, devices), main_device=devices[0])


def on_the_cpu(explanation: Any) -> None:
    """Every tensor of the explanation on the inputs' device, a plain tensor."""
    for name, value in vars(explanation).items():
        values = value.values() if isinstance(value, dict) else [value]
        assert all(type(v) is torch.Tensor and v.device.type == "cpu" for v in values if isinstance(v, torch.Tensor)), name


@pytest.mark.parametrize("name, split", CASES)
@pytest.mark.parametrize("method", EXPLAINED)
def test_model_on_two_devices_explained_as_the_plain_model(name: str, split: str, method: str) -> None:
    family = family_named(name)
    reference = family.reference(method)
    with simulated_devices():
        model = dispatched(family.model, split)
        assert {parameter.device.type for parameter in model.parameters()} >= {STAND_IN.type}
        explanation = family.explain(METHODS[method](model))
    on_the_cpu(explanation)
    assert_same_explanation(explanation, reference)


def test_simulated_devices_refuse_to_mix() -> None:
    """The simulation raises where torch raises between two devices, and lets through what torch lets through."""
    with simulated_devices():
        there, here = torch.ones(2, 3).to(STAND_IN), torch.ones(2, 3)
        assert isinstance(there, Placed) and (there * 2).device == STAND_IN
        with pytest.raises(RuntimeError, match="same device"):
            there + here
        assert (there + torch.tensor(1.0)).device == STAND_IN  # a 0-dim CPU tensor may
        assert there[torch.tensor([1])].device == STAND_IN  # a CPU index may
        assert torch.equal((there * 3).cpu(), torch.full((2, 3), 3.0))
