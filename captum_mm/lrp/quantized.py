"""The weights of quantized linear layers, dequantized for the LRP rules.

The linear rules need the weight ``[out, in]`` as a dense floating-point tensor (they split it into its positive and
negative parts). Quantized layers hold it otherwise: torchao's tensor subclasses (``quantize_(model,
Int8WeightOnlyConfig())`` and the like: a ``torch.Tensor`` subclass whose ``dequantize()`` gives the dense weight),
bitsandbytes' ``Linear8bitLt`` (int8 rows and their scales) and ``Linear4bit`` (packed 4-bit blocks and their quant
state). The rules read the dequantized weight, the value the layer's forward multiplies by (up to the activation
rounding of layers that quantize their inputs too); any other format gets an error naming the module's type rather
than a rule computed on raw integer codes.
"""

from typing import Callable, Iterable, Optional, Tuple, cast

import torch
from torch import Tensor, nn

#: A function from a layer's stored weight to its dense floating-point value.
Dequantize = Callable[[Tensor], Tensor]


def _bitsandbytes_4bit(weight: Tensor) -> Tensor:
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(weight.data, weight.quant_state)  # type: ignore[attr-defined]


def _row_scales(module: nn.Module, weight: Tensor) -> Optional[Tensor]:
    """bitsandbytes' int8 row scales: on the weight until the layer's first forward, on the layer's state after."""
    scales = getattr(weight, "SCB", None)
    return getattr(getattr(module, "state", None), "SCB", None) if scales is None else scales


def _bitsandbytes_8bit(module: nn.Module) -> Dequantize:
    def dequantize(weight: Tensor) -> Tensor:
        from bitsandbytes.functional import int8_vectorwise_dequant

        return int8_vectorwise_dequant(weight.data, cast(Tensor, _row_scales(module, weight)))

    return dequantize


def _own_dequantize(weight: Tensor) -> Tensor:
    return weight.dequantize()


def _dense(weight: Tensor) -> Tensor:
    return weight


def dequantizer(module: nn.Module, weight: Tensor) -> Optional[Dequantize]:
    """How to read ``module``'s ``weight`` as a dense floating-point tensor, from their types and attributes alone
    (the weight's data is not touched).

    Args:
        module (nn.Module): A linear layer.
        weight (Tensor): Its weight.

    Returns:
        *callable*: The function giving the dense weight; None for a format the rules cannot read.
    """
    if getattr(weight, "quant_state", None) is not None:  # bitsandbytes' Params4bit
        return _bitsandbytes_4bit
    if weight.dtype == torch.int8 and _row_scales(module, weight) is not None:  # bitsandbytes' Int8Params
        return _bitsandbytes_8bit(module)
    if type(weight).__torch_dispatch__ is not Tensor.__torch_dispatch__:  # a wrapper subclass (torchao's)
        return _own_dequantize if callable(getattr(type(weight), "dequantize", None)) else None
    return _dense if weight.is_floating_point() and weight.layout == torch.strided else None


def check_linear_weights(linears: Iterable[Tuple[str, nn.Module]]) -> None:
    """Raise before any forward where a linear module's weight is in a format the rules cannot read.

    Args:
        linears (iterable of (str, nn.Module)): The linear modules the rules serve, with their names.

    Raises:
        TypeError: Naming the first such module, its type and its weight's.
    """
    for name, module in linears:
        weight = cast(Tensor, module.weight)
        if dequantizer(module, weight) is None:
            raise TypeError(_unreadable(module, name, weight))


def _unreadable(module: nn.Module, name: str, weight: Tensor) -> str:
    return (
        f"The LRP rules cannot read the weight of {name} ({type(module).__module__}.{type(module).__name__}, weight "
        f"{type(weight).__name__} of {weight.dtype}): they need it as a dense floating-point [out, in] tensor. Read are "
        "plain weights, torch tensor subclasses with a dequantize() method (torchao's quantize_), and bitsandbytes' "
        "Linear8bitLt and Linear4bit. Dequantize the model, or use a method without LRP (GenericAttention, "
        "AttentionRollout, RawAttention, AttentionGradCam)."
    )


def dense_weight(module: nn.Module, weight: Tensor) -> Tensor:
    """``weight``, the weight ``module``'s forward used, as a dense floating-point tensor of its shape.

    Args:
        module (nn.Module): The linear module.
        weight (Tensor): Its weight as stored (on its execution device).

    Returns:
        *Tensor*: The dense weight, in the layer's floating-point dtype.

    Raises:
        TypeError: A format the rules cannot read, or a dequantized weight that is not dense or has another shape
                    than the layer's ``[out_features, in_features]``.
    """
    read = dequantizer(module, weight)
    value = None if read is None else read(weight)
    expected = (getattr(module, "out_features", None), getattr(module, "in_features", None))
    if value is None or dequantizer(module, value) is not _dense or (None not in expected and tuple(value.shape) != expected):
        raise TypeError(_unreadable(module, type(module).__name__, weight))
    return value
