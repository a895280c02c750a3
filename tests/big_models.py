"""The three kinds of model the big-model tests (quantized, bfloat16, gradient checkpointing) explain: a decoder-only LM
(Llama), a VLM (LLaVA) and an encoder (BERT), one layer each (LLaVA's vision tower two: its features are read at
the one before last), each with fixed inputs and how every method explains them."""

import copy
from dataclasses import dataclass
from typing import Any, Callable, Dict

import torch
from torch import Tensor, nn

from helpers import bert, language_model, llava, prompt_batch, text_batch, vlm_prompts
from methods_under_test import LRP_BASED, METHODS

#: The registered methods (ablations left out: they share these methods' paths).
EXPLAINED = ["generic", "generic-lrp", "raw-attention", "rollout", "grad-cam", "partial-lrp", "transformer-attribution"]
CONTINUATION = [[5, 6], [7, 8]]


@dataclass
class Kind:
    """A model and how a method explains it, on inputs fixed once."""

    model: nn.Module
    explain: Callable[[Any], Any]

    def relevance(self, method: str, model: nn.Module) -> Dict[str, Tensor]:
        """``model`` (this one or a variant of it) explained by ``method``: its relevance per output."""
        return self.explain(METHODS[method](model)).relevance


def _generative(model: nn.Module, prompt: Dict[str, Tensor]) -> Kind:
    return Kind(model, lambda explainer: explainer.explain(prompt, continuation=CONTINUATION))


def _encoder() -> Kind:
    ids, mask = text_batch(2)
    return Kind(bert(layers=1), lambda explainer: explainer.explain(ids, torch.tensor([2, 5]), (mask,)))


KINDS: Dict[str, Callable[[], Kind]] = {
    "llama": lambda: _generative(language_model("llama", layers=1), dict(zip(("input_ids", "attention_mask"), prompt_batch(2, 5)))),
    "llava": lambda: _generative(llava(vision_layers=2, layers=1), vlm_prompts(batch=2)),
    "bert": _encoder,
}


def relative_error(got: Dict[str, Tensor], expected: Dict[str, Tensor]) -> float:
    """The largest difference of any output, relative to that output's largest expected value (outputs that are all
    zero in ``expected`` must be all zero in ``got``); every value checked finite."""
    worst = 0.0
    for name, value in expected.items():
        assert torch.isfinite(got[name]).all() and torch.isfinite(value).all(), name
        scale = value.abs().max()
        error = (got[name].double() - value.double()).abs().max()
        worst = max(worst, float(error / scale) if scale > 0 else float(error > 0) * float("inf"))
    return worst


def dequantized_copy(quantized: nn.Module, dequantize: Any) -> nn.Module:
    """A copy of ``quantized`` whose quantized linears are plain ``nn.Linear`` s holding ``dequantize(linear)``."""
    plain = copy.deepcopy(quantized)
    originals = dict(quantized.named_modules())
    for parent_name, parent in list(plain.named_modules()):
        for name, child in list(parent.named_children()):
            original = originals[f"{parent_name}.{name}".lstrip(".")]
            if isinstance(child, nn.Linear) and type(original.weight) is not nn.Parameter:
                linear = nn.Linear(child.in_features, child.out_features, child.bias is not None)
                linear.weight = nn.Parameter(dequantize(original).detach().clone(), requires_grad=False)
                linear.bias = original.bias
                setattr(parent, name, linear)
    return plain


def bitsandbytes_layers(model: nn.Module, bits: int, device: str = "cpu", compute_dtype: torch.dtype = torch.float32) -> nn.Module:
    """A copy of ``model`` on ``device`` whose linear layers (but the LM head) are bitsandbytes' ``Linear4bit`` (NF4,
    computing in ``compute_dtype``) or ``Linear8bitLt`` (LLM.int8), quantized from the same weights there."""
    import bitsandbytes as bnb

    quantized = copy.deepcopy(model)
    for parent in list(quantized.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or name == "lm_head":
                continue
            if bits == 4:
                layer = bnb.nn.Linear4bit(child.in_features, child.out_features, child.bias is not None, compute_dtype=compute_dtype, quant_type="nf4")
                layer.weight = bnb.nn.Params4bit(child.weight.data.clone(), requires_grad=False, quant_type="nf4")
            else:
                layer = bnb.nn.Linear8bitLt(child.in_features, child.out_features, child.bias is not None, has_fp16_weights=False)
                layer.weight = bnb.nn.Int8Params(child.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data.clone(), requires_grad=False)
            setattr(parent, name, layer.to(device))  # quantizes
    return quantized.to(device)


def is_lrp(method: str) -> bool:
    """Whether ``method`` runs an LRP backward."""
    return method in LRP_BASED
