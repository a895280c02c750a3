"""The main job's step for each shipped model: what it runs on it, as its stage line says, and the study that runs it.

A step's ``run(recipe, options, methods)`` returns the study's ``numbers`` (for ``results.json``),
its ``tables`` and ``figures``. Every shipped model (:data:`captum_mm.zoo.recipes.RECIPES`) has one.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict

from captum_mm.study.detr import detr_study
from captum_mm.study.llava import llava_study
from captum_mm.study.text import text_study
from captum_mm.study.vqa import vqa_study


@dataclass(frozen=True)
class Step:
    r"""
    A shipped model's evaluations in the main job: their description and the study that runs them.

    Attributes:
        evaluations (str): What the main job runs on the model, as its stage line says.
        run (Callable): ``run(recipe, options, methods)``: the study, returning its ``numbers``, ``tables`` and
                    ``figures``.
    """

    evaluations: str
    run: Callable[..., Dict[str, Any]]


VQA_STEP = Step("perturbation tests, plausibility, gallery", vqa_study)

STEPS: Dict[str, Step] = {
    "lxmert-easyvqa": VQA_STEP,
    "visualbert-easyvqa": VQA_STEP,
    "detr-shapes": Step("weakly-supervised segmentation, mask figures", detr_study),
    "llava-easyvqa": Step("perturbation tests on generated answers, plausibility, gallery", llava_study),
    "bert-reviews": Step("perturbation tests on text tokens, plausibility against evidence keywords, heat maps", text_study),
}
