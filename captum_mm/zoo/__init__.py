"""Small models trained by this project on real and synthetic data, shipped inside the package.

``load(name)`` returns the model in eval mode, offline; ``quality(name)`` what was measured
when it was trained (see ``captum-mm train --help`` to retrain). What each model is and how it
is trained: its recipe, :func:`captum_mm.zoo.recipes.recipe`; what the main job runs on it:
:mod:`captum_mm.study`.
"""

import json
from pathlib import Path
from typing import Any, Dict, Optional

from torch import nn

from captum_mm.zoo.model_recipe import CHECKPOINTS
from captum_mm.zoo.recipes import RECIPES, recipe, with_processors

NAMES = tuple(RECIPES)

__all__ = ["CHECKPOINTS", "NAMES", "checkpoint", "load", "load_processor", "quality", "recipe"]


def checkpoint(name: str) -> Path:
    """The folder of a shipped checkpoint.

    Args:
        name (str): One of :data:`NAMES`.

    Returns:
        *Path*: The folder holding its ``config.json``, weights and ``quality.json``.
    """
    return recipe(name).checkpoint()


def load(name: str, path: Optional[str] = None) -> nn.Module:
    """A shipped model, or your checkpoint of it, offline and in eval mode.

    Args:
        name (str): One of :data:`NAMES`, e.g. ``"llava-easyvqa"``.
        path (str, optional): Your checkpoint of that model (checked to fit its recipe).
                    Default: None (the shipped one)

    Returns:
        *nn.Module*: The HuggingFace model.

    Examples::

        >>> from captum_mm import zoo
        >>> model = zoo.load("lxmert-easyvqa")
    """
    return recipe(name).load(path)


def load_processor(name: str, path: Optional[str] = None) -> Any:
    """The image processor saved with a checkpoint (``detr-shapes``).

    Args:
        name (str): One of :data:`NAMES` that takes an image processor.
        path (str, optional): Your checkpoint. Default: None (the shipped one)

    Returns:
        The HuggingFace image processor.
    """
    entry = recipe(name)
    if entry.processor_class_name is None:
        raise ValueError(f"{name} takes no image processor; only {', '.join(with_processors())} do.")
    return entry.load_processor(path)


def quality(name: str) -> Dict[str, Any]:
    """What was measured when a shipped model was trained.

    Args:
        name (str): One of :data:`NAMES`.

    Returns:
        *dict*: Its ``quality.json``: accuracy, exact match or AP, training seconds, seed, epochs.
    """
    return json.loads((checkpoint(name) / "quality.json").read_text())
