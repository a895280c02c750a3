"""The perturbation study over a dataset: every method, every setting, batched, optionally distributed.

Started under ``torchrun``, the batches of the seeded sample selection are dealt to
the ranks and the per-sample scores gathered on rank 0 (:mod:`captum_mm.metrics.distributed`),
so the merged result is exactly what one process computes (every batch is formed and
evaluated the same way).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum_mm.datasets.batches import Batch, KeywordModel
from captum_mm.datasets.batches import pad_collate as pad_collate  # its documented path here
from captum_mm.metrics.distributed import gather, is_main_process, shard
from captum_mm.metrics.perturbation import TokenGroup, area_under_curve, perturbation_curve, vqa_score

#: ``method(inputs, targets) -> {"text": [B, T], "image": [B, R]}``: per-token relevance of each modality.
RelevanceMethod = Callable[[Batch, Tensor], Dict[str, Tensor]]


def attention_method(factory: Callable[..., Any], model: nn.Module, **options: Any) -> RelevanceMethod:
    """A captum_mm explainer class (or factory ``(forward_func, model, **options)``) as a
    :data:`RelevanceMethod`: every batch entry is an input, the predicted answers the targets."""

    def relevance(batch: Batch, targets: Tensor) -> Dict[str, Tensor]:
        names = tuple(batch)
        explainer = factory(KeywordModel(model, names), model, **options)
        return explainer.explain(tuple(batch[name] for name in names), targets).outputs()

    return relevance


@dataclass(frozen=True)
class Setting:
    """One perturbation test: a modality, its token group and steps, positive or negative."""

    modality: str
    group: TokenGroup
    steps: Tuple[float, ...]
    positive: bool

    @property
    def name(self) -> str:
        return f"{'positive' if self.positive else 'negative'} {self.modality}"


def vqa_settings(text: TokenGroup, image: TokenGroup, text_steps, image_steps) -> List[Setting]:
    """The paper's four tests, in the order of its tables: negative/positive image, negative/positive text."""
    return [
        Setting("image", image, tuple(image_steps), False),
        Setting("image", image, tuple(image_steps), True),
        Setting("text", text, tuple(text_steps), False),
        Setting("text", text, tuple(text_steps), True),
    ]


@dataclass
class StudyResult:
    """Per-sample scores of every method and setting, and their curves and AUCs.

    Attributes:
        samples (list[int]): Dataset indices evaluated, in selection order.
        steps (dict[str, list[float]]): Fractions removed per setting.
        scores (dict[str, dict[str, Tensor]]): ``scores[method][setting]``: ``[N, S]``.
    """

    samples: List[int]
    steps: Dict[str, List[float]]
    scores: Dict[str, Dict[str, Tensor]] = field(default_factory=dict)

    def accuracy(self, method: str, setting: str) -> List[float]:
        return (self.scores[method][setting].double().mean(0) * 100).tolist()

    def auc(self, method: str, setting: str) -> float:
        return area_under_curve(self.accuracy(method, setting), self.steps[setting])

    def to_dict(self) -> Dict[str, Any]:
        return {
            "samples": self.samples,
            "steps": self.steps,
            "methods": {
                method: {
                    setting: {"accuracy": self.accuracy(method, setting), "auc": self.auc(method, setting)}
                    for setting in settings
                }
                for method, settings in self.scores.items()
            },
        }

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def select_samples(size: int, count: Optional[int], seed: int) -> List[int]:
    """A seeded random selection of ``count`` dataset indices (all of them when ``count`` is None)."""
    if size == 0:
        raise ValueError("The dataset is empty.")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return order if count is None else order[: min(count, size)]


class Samples(Protocol):
    """What the study reads of a dataset: its length and its samples by index."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


def run_perturbation_study(
    model: Union[nn.Module, Callable[..., Tensor]],
    dataset: "Samples",
    collate: Callable[[List[Any]], Tuple[Batch, Tensor]],
    methods: Mapping[str, RelevanceMethod],
    settings: Sequence[Setting],
    num_samples: Optional[int] = None,
    seed: int = 0,
    batch_size: int = 32,
    forward_batch_size: int = 64,
    progress: bool = True,
    on_relevance: Optional[Callable[[str, List[int], Dict[str, Tensor]], None]] = None,
) -> Optional[StudyResult]:
    r"""
    Explain and perturbation-test every method on a seeded sample of ``dataset``.

    Each sample's predicted answer is explained; scores are VQA soft accuracies.

    Args:
        model (torch.nn.Module or Callable): The HuggingFace model, called with the batch's keyword
                    arguments, or any callable taking them and returning ``[B, C]`` answer scores
                    (a generative model's generated answer, one-hot).
        dataset (Sequence): Samples; ``collate(list_of_samples)`` returns the batch's
                    keyword arguments and its ``[B, C]`` answer scores.
        collate (Callable): See ``dataset``.
        methods (Mapping[str, RelevanceMethod]): Name to relevance method (see
                    :func:`attention_method` for captum_mm explainers; any callable
                    returning per-token scores works, e.g. a stock Captum method).
        settings (sequence of Setting): The tests to run (:func:`vqa_settings`).
        num_samples (int, optional): How many samples. Default: None (all)
        seed (int, optional): Seed of the sample selection. Default: 0
        batch_size (int, optional): Samples explained per batch. Default: 32
        forward_batch_size (int, optional): Rows per perturbed forward. Default: 64
        progress (bool, optional): Show a progress bar. Default: True
        on_relevance (Callable, optional): Called as ``on_relevance(method, indices,
                    relevance)`` for every explained batch (e.g. to score plausibility).
                    Default: None

    Returns:
        StudyResult on rank 0 (or without ``torch.distributed``); None on other ranks.
    """
    forward = KeywordModel(model, ()) if isinstance(model, nn.Module) else model
    samples = select_samples(len(dataset), num_samples, seed)
    batches = [samples[start : start + batch_size] for start in range(0, len(samples), batch_size)]
    local: Dict[int, Dict[str, Dict[str, Tensor]]] = {}
    for position, indices in tqdm(shard(batches), disable=not progress or not is_main_process(), desc="perturbation"):
        local[position] = _evaluate_batch(forward, dataset, collate, indices, methods, settings, forward_batch_size, on_relevance)
    per_batch = gather(local)
    if per_batch is None:
        return None
    result = StudyResult(samples, {setting.name: list(setting.steps) for setting in settings})
    for method in methods:
        result.scores[method] = {
            setting.name: torch.cat([scores[method][setting.name] for scores in per_batch]) for setting in settings
        }
    return result


def _evaluate_batch(
    model: Callable[..., Tensor],
    dataset: Samples,
    collate: Callable[[List[Any]], Tuple[Batch, Tensor]],
    indices: List[int],
    methods: Mapping[str, RelevanceMethod],
    settings: Sequence[Setting],
    forward_batch_size: int,
    on_relevance: Optional[Callable[[str, List[int], Dict[str, Tensor]], None]],
) -> Dict[str, Dict[str, Tensor]]:
    batch, answer_scores = collate([dataset[index] for index in indices])
    with torch.no_grad():
        targets = model(**batch).argmax(-1)
    score = vqa_score(answer_scores)
    scores: Dict[str, Dict[str, Tensor]] = {}
    for name, method in methods.items():
        relevance = method(batch, targets)
        if on_relevance is not None:
            on_relevance(name, list(indices), relevance)
        scores[name] = {
            setting.name: perturbation_curve(
                model, batch, relevance[setting.modality], setting.group, score, setting.positive, setting.steps,
                forward_batch_size,
            ).scores
            for setting in settings
        }
    return scores
