"""Small models trained by this project on real and synthetic data, shipped inside the package.

``load(name)`` returns the model in eval mode, offline; ``quality(name)`` what was measured
when it was trained (see ``captum-mm train --help`` to retrain). What each model is, how it
is trained and what the main job runs on it: its recipe, :func:`captum_mm.zoo.recipes.recipe`.
"""

import json
from pathlib import Path
from typing import Any, Dict, Optional

from torch import nn

from captum_mm.zoo.recipes import CHECKPOINTS, RECIPES, recipe

NAMES = tuple(RECIPES)

__all__ = ["CHECKPOINTS", "NAMES", "checkpoint", "load", "load_processor", "quality", "recipe"]


def checkpoint(name: str) -> Path:
    """The folder of the shipped checkpoint ``name``."""
    return recipe(name).checkpoint()


def load(name: str, path: Optional[str] = None) -> nn.Module:
    """The shipped model ``name`` (one of :data:`NAMES`), or your checkpoint of it at ``path``, in eval mode."""
    return recipe(name).load(path)


def load_processor(name: str, path: Optional[str] = None) -> Any:
    """The image processor saved with the checkpoint ``name`` (or your checkpoint at ``path``)."""
    return recipe(name).load_processor(path)


def quality(name: str) -> Dict[str, Any]:
    """What was measured when ``name`` was trained (accuracy or AP, seconds, seed, epochs)."""
    return json.loads((checkpoint(name) / "quality.json").read_text())
