"""What a shipped model's recipe is: its class, data, inputs and training (:class:`Recipe`), and where its
checkpoint lies. The recipes themselves: :data:`captum_mm.zoo.recipes.RECIPES`."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, cast

import transformers
from torch import nn

from captum_mm.datasets.batches import Batch
from captum_mm.datasets.easy_vqa import EASY_VQA_VOCABULARY
from captum_mm.metrics import TokenGroup

CHECKPOINTS = Path(__file__).parent / "checkpoints"

# The data a shipped model is trained and studied on.
EASY_VQA = "easy-VQA"
SHAPE_SCENES = "synthetic shape scenes"
REVIEWS = "synthetic movie reviews"


@dataclass(frozen=True)
class EasyVQAInputs:
    r"""
    How a VQA model takes easy-VQA: its keyword arguments, its token groups and perturbation
    steps, and the config fields that must match the dataset.

    Attributes:
        convert (Callable): A padded easy-VQA batch to the model's keyword arguments.
        text (TokenGroup): The model's text tokens, as the perturbation tests drop them.
        image (TokenGroup): Its image regions, likewise.
        text_steps (tuple of float): Fractions of text tokens removed.
        image_steps (tuple of float): Fractions of image regions removed.
        features (int): Region feature size the model takes.
        answers_field (str): Config attribute: number of answers.
        features_field (str): Config attribute: region feature size.
    """

    convert: Callable[[Batch], Batch]
    text: TokenGroup
    image: TokenGroup
    text_steps: Tuple[float, ...]
    image_steps: Tuple[float, ...]
    features: int
    answers_field: str
    features_field: str

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
    r"""
    A shipped model: what it is, what it learns from and how it is trained.

    Attributes:
        name (str): The model's name, also its checkpoint folder's.
        model_class_name (str): A transformers class.
        dataset (str): What it is trained and studied on (:data:`EASY_VQA`, :data:`SHAPE_SCENES` or :data:`REVIEWS`).
        build (Callable): The untrained architecture.
        trainer (Callable): ``trainer(recipe, output, seed, **options)`` retrains it.
        epochs (int): Its training epochs.
        goal (tuple): The quality (a key of ``quality.json``) it must reach, and the minimum.
        easy_vqa (EasyVQAInputs, optional): How a VQA classifier takes easy-VQA. Default: None
        processor_class_name (str, optional): A transformers image processor saved with the checkpoint. Default: None
        mismatches (Callable, optional): What in a user's config does not fit the data of a model taking no easy-VQA
                    (``mismatches(config) -> list of str``). Default: None
    """

    name: str
    model_class_name: str
    dataset: str
    build: Callable[[], nn.Module]
    trainer: Callable[..., Dict[str, Any]]
    epochs: int
    goal: Tuple[str, float]
    easy_vqa: Optional[EasyVQAInputs] = None
    processor_class_name: Optional[str] = None
    mismatches: Optional[Callable[[transformers.PretrainedConfig], List[str]]] = None

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
        check = self.easy_vqa.mismatches if self.easy_vqa is not None else self.mismatches
        wrong = check(config) if check is not None else []
        if wrong:
            data = "captum_mm.datasets.easy_vqa" if self.easy_vqa is not None else f"the {self.dataset}"
            raise ValueError(f"The checkpoint for {self.name} at {path} does not fit {data}: {'; '.join(wrong)}.")
        return self.model_class.from_pretrained(path).eval()

    def load_processor(self, path: Optional[str] = None) -> Any:
        """The image processor saved with the shipped checkpoint (or at ``path``)."""
        if self.processor_class_name is None:
            raise ValueError(f"{self.name} takes no image processor.")
        return getattr(transformers, self.processor_class_name).from_pretrained(path or self.checkpoint())

    def train(self, output: Path, seed: int = 0, **options: Any) -> Dict[str, Any]:
        """Retrain from scratch with ``seed``, save to ``output``, return the measured quality."""
        return self.trainer(self, Path(output), seed, **options)
