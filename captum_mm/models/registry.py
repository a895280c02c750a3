"""Picks the architecture adapter from the model's class."""

from typing import List, Type

from torch import nn

from captum_mm.models.base import ArchitectureAdapter

_ADAPTERS: List[Type[ArchitectureAdapter]] = []


def register_adapter(adapter: Type[ArchitectureAdapter]) -> Type[ArchitectureAdapter]:
    """Class decorator making an adapter available to every method."""
    _ADAPTERS.append(adapter)
    return adapter


def supported_classes() -> List[str]:
    return sorted(cls.__name__ for adapter in _ADAPTERS for cls in adapter.model_classes)


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter serving ``model``'s class, instantiated for it."""
    for adapter in _ADAPTERS:
        if isinstance(model, adapter.model_classes):
            return adapter(model)
    raise TypeError(
        f"captum_mm cannot explain a {type(model).__name__}: no architecture adapter serves it. "
        f"Supported classes: {', '.join(supported_classes())}. Pass the HuggingFace model itself as "
        "forward_func, or as model= when forward_func is a wrapper."
    )
