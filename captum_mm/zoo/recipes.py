"""One recipe per shipped model: its class, data, training and the main job's evaluations.

Everything model-specific about a shipped model is its entry in :data:`RECIPES`; the zoo
loader, ``captum-mm train`` and ``captum-mm reproduce`` read it from here. A new model is
one entry (plus the functions it names: its architecture, training and study).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, cast

import transformers
from torch import nn

from captum_mm.datasets.easy_vqa import EASY_VQA_VOCABULARY, FEATURES, VISUAL_BERT_FEATURES, for_visual_bert
from captum_mm.metrics import (
    DEFAULT_STEPS,
    LXMERT_IMAGE,
    LXMERT_TEXT,
    VISUAL_BERT_IMAGE,
    VISUAL_BERT_IMAGE_STEPS,
    VISUAL_BERT_TEXT,
    TokenGroup,
)
from captum_mm.zoo import studies, study_llava, train, train_detr, train_llava

CHECKPOINTS = Path(__file__).parent / "checkpoints"

# The data a shipped model is trained and studied on.
EASY_VQA = "easy-VQA"
SHAPE_SCENES = "synthetic shape scenes"

Batch = Dict[str, Any]


@dataclass(frozen=True)
class EasyVQAInputs:
    """How a VQA model takes easy-VQA: its keyword arguments, its token groups and perturbation
    steps, and the config fields that must match the dataset."""

    convert: Callable[[Batch], Batch]  # a padded easy-VQA batch to the model's keyword arguments
    text: TokenGroup
    image: TokenGroup
    text_steps: Tuple[float, ...]
    image_steps: Tuple[float, ...]
    features: int  # region feature size the model takes
    answers_field: str  # config attribute: number of answers
    features_field: str  # config attribute: region feature size

    def mismatches(self, config: transformers.PretrainedConfig) -> List[str]:
        """What in ``config`` does not fit easy-VQA's answers, region features and vocabulary."""
        import easy_vqa

        found = {
            "answers": getattr(config, self.answers_field),
            "region feature size": getattr(config, self.features_field),
        }
        expected = {"answers": len(easy_vqa.get_answers()), "region feature size": self.features}
        wrong = [f"{key} {found[key]} (expected {expected[key]})" for key in found if found[key] != expected[key]]
        if config.vocab_size < len(EASY_VQA_VOCABULARY):
            wrong.append(f"vocabulary size {config.vocab_size} (expected at least {len(EASY_VQA_VOCABULARY)})")
        return wrong


@dataclass(frozen=True)
class Recipe:
    """A shipped model: what it is, what it learns from, how it is trained and studied.

    ``study(recipe, options, methods)`` runs the main job's evaluations (returns its
    ``numbers``, ``tables`` and ``figures``); ``trainer(recipe, output, seed, **options)``
    retrains it; ``goal`` is the quality (a key of ``quality.json``) it must reach.
    """

    name: str
    model_class_name: str  # a transformers class
    dataset: str
    evaluations: str  # what the main job runs on it, as its stage line says
    study: Callable[..., Dict[str, Any]]
    build: Callable[[], nn.Module]  # the untrained architecture
    trainer: Callable[..., Dict[str, Any]]
    epochs: int
    goal: Tuple[str, float]
    easy_vqa: Optional[EasyVQAInputs] = None
    processor_class_name: Optional[str] = None  # a transformers image processor saved with the checkpoint

    @property
    def model_class(self) -> Type[transformers.PreTrainedModel]:
        return getattr(transformers, self.model_class_name)

    def checkpoint(self) -> Path:
        """The folder of the shipped checkpoint."""
        path = CHECKPOINTS / self.name
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"The checkpoint of {self.name} is missing at {path}; retrain it with `captum-mm train {self.name}`."
            )
        return path

    def load(self, path: Optional[str] = None) -> nn.Module:
        """The shipped model, or the checkpoint at ``path`` after checking that it fits this recipe; in eval mode."""
        if path is None:
            return self.model_class.from_pretrained(self.checkpoint()).eval()
        config = transformers.AutoConfig.from_pretrained(path)
        expected = cast(Type[transformers.PreTrainedConfig], self.model_class.config_class).model_type
        if config.model_type != expected:
            raise ValueError(
                f"The checkpoint for {self.name} at {path} is a {config.model_type!r} model; expected {expected!r}."
            )
        wrong = self.easy_vqa.mismatches(config) if self.easy_vqa is not None else []
        if wrong:
            raise ValueError(
                f"The checkpoint for {self.name} at {path} does not fit captum_mm.datasets.easy_vqa: {'; '.join(wrong)}."
            )
        return self.model_class.from_pretrained(path).eval()

    def load_processor(self, path: Optional[str] = None) -> Any:
        """The image processor saved with the shipped checkpoint (or at ``path``)."""
        if self.processor_class_name is None:
            raise ValueError(f"{self.name} takes no image processor; only {', '.join(_with_processors())} do.")
        return getattr(transformers, self.processor_class_name).from_pretrained(path or self.checkpoint())

    def train(self, output: Path, seed: int = 0, **options: Any) -> Dict[str, Any]:
        """Retrain from scratch with ``seed``, save to ``output``, return the measured quality."""
        return self.trainer(self, Path(output), seed, **options)


def vqa_recipe(name: str, model_class_name: str, build: Callable[..., nn.Module], epochs: int, inputs: EasyVQAInputs) -> Recipe:
    """A VQA model trained on easy-VQA to the 90 % test-accuracy goal, studied by the VQA study."""
    return Recipe(
        name=name, model_class_name=model_class_name, dataset=EASY_VQA,
        evaluations="perturbation tests, plausibility, gallery", study=studies.vqa_study, build=build,
        trainer=train.train_vqa, epochs=epochs, goal=("easy_vqa_test_accuracy", 90.0), easy_vqa=inputs,
    )


RECIPES: Dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        vqa_recipe(
            "lxmert-easyvqa", "LxmertForQuestionAnswering", train.lxmert_model, 3,
            EasyVQAInputs(
                convert=lambda batch: batch, text=LXMERT_TEXT, image=LXMERT_IMAGE, text_steps=DEFAULT_STEPS,
                image_steps=DEFAULT_STEPS, features=FEATURES, answers_field="num_qa_labels",
                features_field="visual_feat_dim",
            ),
        ),
        vqa_recipe(
            "visualbert-easyvqa", "VisualBertForQuestionAnswering", train.visual_bert_model, 10,
            EasyVQAInputs(
                convert=for_visual_bert, text=VISUAL_BERT_TEXT, image=VISUAL_BERT_IMAGE, text_steps=DEFAULT_STEPS,
                image_steps=VISUAL_BERT_IMAGE_STEPS, features=VISUAL_BERT_FEATURES, answers_field="num_labels",
                features_field="visual_embedding_dim",
            ),
        ),
        Recipe(
            name="detr-shapes",
            model_class_name="DetrForObjectDetection",
            dataset=SHAPE_SCENES,
            evaluations="weakly-supervised segmentation, mask figures",
            study=studies.detr_study,
            build=train_detr.detr_model,
            trainer=train_detr.train_detr,
            epochs=150,
            goal=("bbox_AP50", 0.5),
            processor_class_name="DetrImageProcessorPil",
        ),
        Recipe(
            name="llava-easyvqa",
            model_class_name="LlavaForConditionalGeneration",
            dataset=EASY_VQA,
            evaluations="perturbation tests on generated answers, plausibility, gallery",
            study=study_llava.llava_study,
            build=train_llava.llava_model,
            trainer=train_llava.train_llava,
            epochs=12,
            goal=("easy_vqa_test_exact_match", 90.0),
        ),
    )
}


def recipe(name: str) -> Recipe:
    """The recipe of a shipped model: its class, data, training and the main job's evaluations.

    Args:
        name (str): One of the shipped models' names.

    Returns:
        *Recipe*: Its entry of :data:`RECIPES`.
    """
    if name not in RECIPES:
        raise ValueError(f"Unknown model {name!r}; shipped: {', '.join(RECIPES)}.")
    return RECIPES[name]


def _with_processors() -> List[str]:
    return [name for name, entry in RECIPES.items() if entry.processor_class_name is not None]
