"""The main job's study of ``bert-reviews``, a text classifier, on the synthetic reviews' test split
(:func:`text_study`): positive/negative perturbation of the review's tokens (``[CLS]`` and ``[SEP]`` kept) for every
method it is given, plausibility against the evidence keywords that decide each label (share of positive relevance
on them, pointing game, top-k precision), text heat maps of a few reviews. It returns the study's ``numbers`` (for
``results.json``), its ``tables`` and ``figures``.
"""

from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch
from matplotlib.figure import Figure
from torch import Tensor

from captum_mm.datasets.batches import KeywordModel, pad_collate
from captum_mm.datasets.reviews import LABELS, SyntheticReviews
from captum_mm.metrics.perturbation import TokenGroup
from captum_mm.metrics.study import RelevanceMethod, Setting
from captum_mm.study.notes import vanished_panels
from captum_mm.study.options import Options
from captum_mm.study.report import table
from captum_mm.study.vqa import faithfulness_summary, scored_study, study_tables
from captum_mm.visualization import plot_perturbation_curves, save_perturbation_study, text_heatmaps
from captum_mm.zoo.model_recipe import Recipe

#: The review's tokens, as the perturbation tests drop them (``[CLS]`` and ``[SEP]`` stay).
TEXT = TokenGroup(("input_ids", "token_type_ids"), "attention_mask", keep_ends=True)
#: Fractions removed: a review's 1 to 3 evidence keywords are 2 to 14 % of its words, so the first of the default steps
#: (25 %) would remove them all; these resolve the first quarter.
TEXT_STEPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 0.75, 1.0)
SETTINGS = (Setting("text", TEXT, TEXT_STEPS, False), Setting("text", TEXT, TEXT_STEPS, True))
SETTING_ROWS = {"negative text": "Neg. text", "positive text": "Pos. text"}


class EvidencePlausibility:
    r"""
    Per method, against each review's evidence keywords, over its words (``[CLS]``, ``[SEP]`` and padding left out):
    the share of positive relevance on the evidence, the pointing game (the most relevant word is evidence) and the
    top-k precision (evidence among the ``k`` most relevant words, ``k`` the review's evidence count). Only words of
    positive relevance count as pointed at: an explanation with none points nowhere. Called with each explained
    batch's relevance (the perturbation study's ``on_relevance``).

    Args:
        dataset (SyntheticReviews): The split explained, whose evidence is the ground truth.
    """

    ROWS = ("on evidence %", "pointing %", "top-k precision %")

    def __init__(self, dataset: SyntheticReviews) -> None:
        self.dataset = dataset
        self.scores: Dict[str, List[Tuple[float, float, float]]] = {}

    def __call__(self, method: str, indices: List[int], relevance: Dict[str, Tensor]) -> None:
        evidence = self.dataset.evidence(indices)
        words = torch.zeros_like(evidence)
        for row, index in enumerate(indices):
            words[row, 1 : len(self.dataset.tokens(index)) - 1] = True
        text = relevance["text"].detach().double()[:, : evidence.shape[1]]
        self.scores.setdefault(method, []).extend(evidence_scores(text, evidence, words))

    def table(self, title: str, name: str) -> Dict[str, Any]:
        r"""
        The scores averaged over the reviews, in %, one column per method.

        Args:
            title (str): The table's title.
            name (str): Its CSV file's name without ``.csv``.

        Returns:
            *dict*: The table (:func:`captum_mm.study.report.table`).
        """
        methods = list(self.scores)
        rows = {label: {m: 100 * sum(s[i] for s in self.scores[m]) / len(self.scores[m]) for m in methods}
                for i, label in enumerate(self.ROWS)}
        return table(rows, methods, title, name, {row: "higher" for row in rows})


def evidence_scores(relevance: Tensor, evidence: Tensor, words: Tensor) -> List[Tuple[float, float, float]]:
    r"""
    Per text: share of positive relevance on the evidence, pointing hit, top-k precision (see
    :class:`EvidencePlausibility`).

    Args:
        relevance (Tensor): ``[B, T]`` relevance of each token.
        evidence (Tensor): ``[B, T]`` bool, the evidence tokens.
        words (Tensor): ``[B, T]`` bool, the tokens scored (evidence among them).

    Returns:
        *list of tuple*: ``(share, hit, precision)`` per text, each in [0, 1].
    """
    positive = torch.where(words, relevance.clamp(min=0), torch.zeros_like(relevance))
    total = positive.sum(1)
    share = torch.where(total > 0, (positive * evidence).sum(1) / total.clamp(min=1e-300), torch.zeros_like(total))
    order = torch.where(words, relevance, torch.full_like(relevance, -torch.inf)).argsort(dim=1, descending=True, stable=True)
    pointed = (evidence & (positive > 0)).gather(1, order).double()  # evidence of positive relevance, most relevant first
    counts = evidence.sum(1)
    precision = [float(pointed[b, : int(k)].sum() / k) for b, k in enumerate(counts.tolist())]
    return list(zip(share.tolist(), pointed[:, 0].tolist(), precision))


def text_study(recipe: "Recipe", options: "Options", methods: Dict[str, Callable]) -> Dict[str, Any]:
    r"""
    Perturbation tests, plausibility and heat maps of a text classifier on the synthetic reviews' test split.

    Args:
        recipe (Recipe): The model's recipe.
        options (Options): The main job's options (its checkpoint, sample counts, seed, output folder).
        methods (dict): Method name to explainer factory, from :func:`captum_mm.attr.catalog.select_methods`: every one
                    runs.

    Returns:
        *dict*: The study's ``numbers`` (for ``results.json``), its ``tables`` and ``figures``.
    """
    name = recipe.name
    model = recipe.load(options.checkpoints.get(name))
    dataset = SyntheticReviews("test")
    plausibility = EvidencePlausibility(dataset)
    study = scored_study(model, dataset, pad_collate, SETTINGS, methods, plausibility, {"text": TEXT}, options)
    result, relevance_methods = study.result, study.relevance_methods
    folder = Path(options.output) / name
    save_perturbation_study(result, folder, f"{name}: perturbation tests on {len(result.samples)} synthetic reviews")
    heatmaps, note = _heatmaps(model, dataset, relevance_methods, result.samples[: options.gallery])
    heatmaps.savefig(folder / "heatmaps.png", dpi=110, bbox_inches="tight")
    figures = {"curves": plot_perturbation_curves(result), "heatmaps": heatmaps}
    tables = study_tables(name, result, plausibility, study.refused, study.infidelity, SETTING_ROWS, "the evidence keywords", paper=False)
    return {"numbers": result.to_dict(), "tables": tables, "figures": figures, "notes": {"heatmaps": note},
            "summary": faithfulness_summary(tables)}


def _heatmaps(model, dataset: SyntheticReviews, relevance_methods: Dict[str, RelevanceMethod],
              indices: List[int]) -> Tuple[Figure, str]:
    """Every method's relevance over the reviews ``indices``, their evidence framed, and the note on white lines."""
    batch, _ = pad_collate([dataset[i] for i in indices])
    with torch.no_grad():
        predictions = KeywordModel(model, ())(**batch).argmax(-1)
    relevance = {method: relevance_of(batch, predictions)["text"].detach() for method, relevance_of in relevance_methods.items()}
    titles = [f"review {i}: {LABELS[dataset.labels[i]]}, predicted {LABELS[p]}" for i, p in zip(indices, predictions.tolist())]
    figure = text_heatmaps([dataset.tokens(i) for i in indices], relevance, titles, dataset.evidence(indices).tolist())
    named = [f"review {i}" for i in indices]
    return figure, vanished_panels({method: (text, None) for method, text in relevance.items()}, named, "text")
