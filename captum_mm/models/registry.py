"""Picks the architecture adapter from the model's class.

The adapter registered for the most specific class of the model wins (the nearest one in
the model class's method resolution order); among adapters for the same class the one
registered last wins, so a user's adapter overrides a built-in one.
"""

from typing import Dict, List, Type

from torch import nn

from captum_mm.models.base import ArchitectureAdapter

_ADAPTERS: Dict[type, Type[ArchitectureAdapter]] = {}


def register_adapter(adapter: Type[ArchitectureAdapter]) -> Type[ArchitectureAdapter]:
    """Class decorator making an adapter available to every method; it replaces an adapter registered
    earlier for the same model classes (so a user's adapter overrides a built-in one).

    Args:
        adapter (type): An :class:`~captum_mm.models.ArchitectureAdapter` subclass naming its
                    ``model_classes``.

    Returns:
        *type*: ``adapter`` itself.

    Examples::

        >>> @register_adapter
        ... class RobertaAdapter(BertAdapter):
        ...     model_classes = (RobertaModel,)
    """
    for model_class in adapter.model_classes:
        _ADAPTERS[model_class] = adapter
    return adapter


def supported_classes() -> List[str]:
    """The model classes some registered adapter serves.

    Returns:
        *list of str*: Their names, sorted.
    """
    return sorted(cls.__name__ for cls in _ADAPTERS)


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter serving the model's most specific registered class, instantiated for it.

    Args:
        model (nn.Module): A HuggingFace model.

    Returns:
        *ArchitectureAdapter*: Its family's adapter (a variant, where the family picks one per model).

    Raises:
        TypeError: No adapter serves the model's class; the message lists the supported classes.
    """
    for model_class in type(model).__mro__:
        if model_class in _ADAPTERS:
            return _ADAPTERS[model_class].for_model(model)
    raise TypeError(
        f"captum_mm cannot explain a {type(model).__name__}: no architecture adapter serves it. "
        f"Supported classes: {', '.join(supported_classes())}. Pass the HuggingFace model itself as "
        "forward_func, or as model= when forward_func is a wrapper."
    )
