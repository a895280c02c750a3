"""Picks the architecture adapter from the model's class.

The adapter registered for the most specific class of the model wins (the nearest one in
the model class's method resolution order); among adapters for the same class the one
registered last wins, so a user's adapter overrides a built-in one.

For a model no adapter serves, the error names the closest supported class by name: the highest
:class:`difflib.SequenceMatcher` ratio between the HF ``model_type`` strings, plus 0.25 for the same task head (the
class name from ``For``/``LMHeadModel``/``Model`` on, e.g. ``ForCausalLM``), with the adapter serving it.
"""

import importlib
import pkgutil
import re
from difflib import SequenceMatcher
from types import ModuleType
from typing import Dict, List, Optional, Type

from torch import nn

from captum_mm.models.adapter import ArchitectureAdapter

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


def import_modules(package: ModuleType) -> List[str]:
    """Import every module of ``package``, so that the adapters defined in them register themselves (a family is
    one file: nothing lists the adapters).

    Args:
        package (ModuleType): An imported package, e.g. ``captum_mm.models``.

    Returns:
        *list of str*: the imported modules' names, sorted.
    """
    names = sorted(info.name for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}."))
    for name in names:
        importlib.import_module(name)
    return names


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
    name = type(model).__name__
    model_type: Optional[str] = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        raise TypeError(
            f"captum_mm cannot explain a {name}: it is not a HuggingFace model with an architecture adapter. Pass the "
            "HuggingFace model as forward_func, or as model= when forward_func wraps it; for another architecture, "
            "write an adapter and register it with captum_mm.models.register_adapter (tutorial "
            "04_bring_your_own_model.ipynb)."
        )
    closest = closest_supported_class(name, model_type)
    raise TypeError(
        f"captum_mm cannot explain a {name} (model_type {model_type!r}): no architecture adapter serves it. The "
        f"closest supported family by name is {closest.__name__}, served by {_ADAPTERS[closest].__name__}. If {name} has "
        f"the same layout, register a subclass of {_ADAPTERS[closest].__name__} naming it in model_classes with "
        "captum_mm.models.register_adapter; otherwise write an adapter (tutorial 04_bring_your_own_model.ipynb). "
        "captum_mm.models.supported_classes() lists every supported class."
    )


def _task_head(class_name: str) -> str:
    match = re.search(r"(For[A-Z].*|LMHeadModel|Model)$", class_name)
    return match.group(1) if match else ""


def closest_supported_class(class_name: str, model_type: str) -> type:
    """The supported class closest to an unsupported model by name: the most similar HF ``model_type``, plus 0.25
    for the same task head (``ForCausalLM``, ...); e.g. ``LlamaForCausalLM`` for ``Olmo2ForCausalLM``.

    Args:
        class_name (str): The model's class name.
        model_type (str): Its config's ``model_type``.

    Returns:
        *type*: A class some registered adapter serves.
    """
    head = _task_head(class_name)

    def score(candidate: type) -> float:
        candidate_type = getattr(getattr(candidate, "config_class", None), "model_type", "") or candidate.__name__.lower()
        return SequenceMatcher(None, model_type, candidate_type).ratio() + 0.25 * (_task_head(candidate.__name__) == head)

    return max(sorted(_ADAPTERS, key=lambda c: c.__name__), key=score)
