"""Small models trained by this project on real and synthetic data, shipped inside the package.

``load(name)`` returns the model in eval mode, offline; ``quality(name)`` what was measured
when it was trained (see ``captum-mm train --help`` to retrain).
"""

import json
from pathlib import Path
from typing import Any, Dict

from torch import nn

CHECKPOINTS = Path(__file__).parent / "checkpoints"
NAMES = ("lxmert-easyvqa", "visualbert-easyvqa", "detr-shapes")


def checkpoint(name: str) -> Path:
    if name not in NAMES:
        raise ValueError(f"Unknown model {name!r}; shipped: {', '.join(NAMES)}.")
    path = CHECKPOINTS / name
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"The checkpoint of {name} is missing at {path}; retrain it with `captum-mm train {name}`.")
    return path


def load(name: str) -> nn.Module:
    """The shipped model ``name`` (one of :data:`NAMES`), in eval mode."""
    from transformers import AutoConfig, DetrForObjectDetection, LxmertForQuestionAnswering, VisualBertForQuestionAnswering

    path = checkpoint(name)
    classes = {"lxmert": LxmertForQuestionAnswering, "visual_bert": VisualBertForQuestionAnswering, "detr": DetrForObjectDetection}
    model_type = AutoConfig.from_pretrained(path).model_type
    return classes[model_type].from_pretrained(path).eval()


def load_processor(name: str = "detr-shapes"):
    """The image processor saved with the DETR checkpoint."""
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    return DetrImageProcessorPil.from_pretrained(checkpoint(name))


def quality(name: str) -> Dict[str, Any]:
    """What was measured when ``name`` was trained (accuracy or AP, seconds, seed, epochs)."""
    return json.loads((checkpoint(name) / "quality.json").read_text())
