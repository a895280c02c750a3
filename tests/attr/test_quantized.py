"""Quantized models (torchao's int8 weight-only on CPU; bitsandbytes' 8- and 4-bit layers, which run on CPU too) are
explained by every method; the LRP rules read the dequantized weights.

Tolerances, measured on a decoder-only LM, a VLM and an encoder in float32:
- against the same model with each quantized weight replaced by its dequantized value (the weights the quantized
  forward multiplies by): methods without LRP within 1e-5 of the maximum (measured at most 4e-7: float32 rounding of
  the same products in another kernel); LRP-based methods within 1e-2 (measured at most 9e-4: LRP on random models is
  ill-conditioned in float32 -- the z-rule divides by near-zero scores -- so the quantized kernel's rounding, 3e-7 of
  a layer's output, is amplified);
- against the unquantized model: methods without LRP within 1e-1 of the maximum (int8 rows round each weight by at most
  1/254 of its row's largest; measured at most 5e-2, Grad-CAM on LLaVA, whose positive part after the head mean turns
  small changes of a near-zero head sum into whole values; the others at most 1.7e-2). LRP-based methods are not
  compared there: on random models their relevance moves with the weights' rounding far more than the model's
  outputs do (measured 5.3 times its maximum on the Llama here; tests/attr/test_half_precision.py shows the same for
  bfloat16 rounding).
"""

import copy
from typing import Any, Dict

import pytest
import torch
from torch import nn
from torchao.quantization import Int8WeightOnlyConfig, quantize_

from big_models import EXPLAINED, KINDS, Kind, bitsandbytes_layers, dequantized_copy, is_lrp, relative_error

SAME_WEIGHTS = {False: 1e-5, True: 1e-2}  # by whether the method runs LRP
UNQUANTIZED = 1e-1


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request: Any) -> Dict[str, Any]:
    torch.manual_seed(0)
    family: Kind = KINDS[request.param]()
    quantized = copy.deepcopy(family.model)
    quantize_(quantized, Int8WeightOnlyConfig())
    return {"family": family, "quantized": quantized, "dequantized": dequantized_copy(quantized, lambda m: m.weight.dequantize())}


@pytest.mark.parametrize("method", EXPLAINED)
def test_torchao_int8_explained_as_its_dequantized_weights(kind: Dict[str, Any], method: str) -> None:
    family: Kind = kind["family"]
    assert type(kind["quantized"].get_submodule(_first_linear(kind["quantized"])).weight).__name__ == "Int8Tensor"
    got = family.relevance(method, kind["quantized"])
    assert relative_error(got, family.relevance(method, kind["dequantized"])) <= SAME_WEIGHTS[is_lrp(method)]
    if not is_lrp(method):
        assert relative_error(got, family.relevance(method, family.model)) <= UNQUANTIZED


def _first_linear(model: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if isinstance(module, nn.Linear))


@pytest.fixture(scope="module")
def llama() -> Kind:
    torch.manual_seed(0)
    return KINDS["llama"]()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("method", EXPLAINED)
def test_bitsandbytes_layers_explained_as_their_dequantized_weights(llama: Kind, bits: int, method: str) -> None:
    """On CPU both multiply by their dequantized weights (measured: 8-bit at most 1.5e-6 of the maximum off the
    dequantized model, 4-bit identical), so torchao's tolerances hold. Not compared with the unquantized model: NF4
    rounds weights coarsely (Grad-CAM's map moves by 1.1 times its maximum on this random model)."""
    from captum_mm.lrp.quantized import dense_weight

    quantized = bitsandbytes_layers(llama.model, bits)
    got = llama.relevance(method, quantized)
    error = relative_error(got, llama.relevance(method, dequantized_copy(quantized, lambda m: dense_weight(m, m.weight))))
    assert error <= SAME_WEIGHTS[is_lrp(method)]


class Int8Linear(nn.Linear):
    """A user's own quantized linear: int8 weight codes and per-row scales, dequantized in its forward."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=False)
        scales = linear.weight.detach().abs().amax(dim=1, keepdim=True) / 127
        self.weight = nn.Parameter((linear.weight.detach() / scales).round().to(torch.int8), requires_grad=False)
        self.register_buffer("scales", scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight.to(x.dtype) * self.scales).T


class PackedLinear(nn.Module):
    """A quantized layer holding no parameter at all (packed codes and scales as buffers, as GPTQ's)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        quantized = Int8Linear(linear)
        self.register_buffer("codes", quantized.weight.data)
        self.register_buffer("scales", quantized.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.codes.to(x.dtype) * self.scales).T


@pytest.mark.parametrize("layer, message", [(Int8Linear, r"down_proj \(.*test_quantized.Int8Linear, weight Parameter of "
                                                         r"torch.int8\).*dense floating-point"),
                                            (PackedLinear, r"no LRP rule .* covers model.layers.0.mlp.down_proj \(PackedLinear\)")])
def test_a_quantized_layer_the_rules_cannot_read_is_named_by_lrp_methods(llama: Kind, layer: Any, message: str) -> None:
    """Refused before the model runs, naming the layer and its type; the methods without LRP explain the model."""
    quantized = copy.deepcopy(llama.model)
    for block in quantized.model.layers:
        block.mlp.down_proj = layer(block.mlp.down_proj)
    for method in EXPLAINED:
        if is_lrp(method):
            with pytest.raises(TypeError, match=message):
                llama.relevance(method, quantized)
        else:
            assert relative_error(llama.relevance(method, quantized), llama.relevance(method, llama.model)) <= UNQUANTIZED
