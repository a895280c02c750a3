"""The main job's study of a VQA model on easy-VQA test (:func:`vqa_study`): positive/negative
perturbation of image regions and text tokens for every method and ablation (supplementary
Tables 2-3, Figures 2-3), plausibility against the shapes' ground-truth masks, a Figure 1-style
gallery. It returns the study's ``numbers`` (for ``results.json``), its ``tables`` and ``figures``.
"""

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

import torch
from matplotlib.figure import Figure

from captum_mm.attr.catalog import ABLATIONS, BEYOND_PAPER, PAPER_METHODS
from captum_mm.datasets.batches import KeywordModel, pad_collate
from captum_mm.datasets.easy_vqa import GRID, EasyVQA, tokenizer
from captum_mm.metrics.study import StudyResult, attention_method, run_perturbation_study, vqa_settings
from captum_mm.study.faithfulness import Infidelity, mark_refused, refused_methods, sinks_effect, winners
from captum_mm.study.notes import vanished_panels
from captum_mm.study.options import Options
from captum_mm.study.report import table
from captum_mm.visualization import plot_perturbation_curves, save_perturbation_study
from captum_mm.visualization.figures import relevance_gallery
from captum_mm.zoo.model_recipe import EasyVQAInputs, Recipe

SETTING_ROWS = {"negative image": "Neg. img", "positive image": "Pos. img", "negative text": "Neg. text", "positive text": "Pos. text"}


class Plausibility:
    r"""
    Per method: share of image relevance on the shape (coverage-weighted) and the pointing game; called with each
    explained batch's relevance (the perturbation study's ``on_relevance``).

    Args:
        dataset (EasyVQA): The split explained, whose shapes' region coverage is the ground truth.
    """

    def __init__(self, dataset: EasyVQA) -> None:
        self.dataset = dataset
        self.share: Dict[str, List[float]] = {}
        self.hits: Dict[str, List[float]] = {}

    def __call__(self, method: str, indices: List[int], relevance: Dict[str, torch.Tensor]) -> None:
        coverage = self.dataset.region_coverage(indices).double()
        image = relevance["image"].detach().double().clamp(min=0)
        total = image.sum(1)
        share = torch.where(total > 0, (image * coverage).sum(1) / total.clamp(min=1e-12), torch.zeros_like(total))
        hits = coverage.gather(1, image.argmax(1, keepdim=True))[:, 0] > 0
        self.share.setdefault(method, []).extend(share.tolist())
        self.hits.setdefault(method, []).extend(hits.double().tolist())

    def table(self, title: str, name: str) -> Dict[str, Any]:
        methods = list(self.share)
        rows = {
            "on shape %": {m: 100 * sum(self.share[m]) / len(self.share[m]) for m in methods},
            "pointing %": {m: 100 * sum(self.hits[m]) / len(self.hits[m]) for m in methods},
        }
        return table(rows, methods, title, name, {row: "higher" for row in rows})


def vqa_study(recipe: "Recipe", options: "Options", methods: Dict[str, Callable]) -> Dict[str, Any]:
    r"""
    Perturbation tests, plausibility and the gallery of a VQA model on easy-VQA test.

    Args:
        recipe (Recipe): The model's recipe.
        options (Options): The main job's options (its checkpoint, sample counts, seed, output folder).
        methods (dict): Method name to explainer factory, from :func:`captum_mm.attr.catalog.select_methods`.

    Returns:
        *dict*: The study's ``numbers`` (for ``results.json``), its ``tables`` and ``figures``.
    """
    name, inputs = recipe.name, cast("EasyVQAInputs", recipe.easy_vqa)  # VQA recipes carry their inputs
    model = recipe.load(options.checkpoints.get(name))
    dataset = EasyVQA("test")

    def collate(items):
        batch, scores = pad_collate(items)
        return inputs.convert(batch), scores

    settings = vqa_settings(inputs.text, inputs.image, inputs.text_steps, inputs.image_steps)
    plausibility = Plausibility(dataset)
    study = scored_study(model, dataset, collate, settings, methods, plausibility, {"text": inputs.text, "image": inputs.image}, options)
    result, relevance_methods = study.result, study.relevance_methods
    folder = Path(options.output) / name
    save_perturbation_study(result, folder, f"{name}: perturbation tests on {len(result.samples)} easy-VQA test questions")
    tables = study_tables(name, result, plausibility, study.refused, study.infidelity)
    gallery, note = _vqa_gallery(model, dataset, inputs.convert, relevance_methods, result.samples[: options.gallery])
    gallery.savefig(folder / "gallery.png", dpi=110, bbox_inches="tight")
    figures = {"curves": plot_perturbation_curves(result), "gallery": gallery}
    return {"numbers": result.to_dict(), "tables": tables, "figures": figures, "notes": {"gallery": note},
            "summary": faithfulness_summary(tables)}


@dataclass
class ScoredStudy:
    """A perturbation study's result with the scores taken from each explained batch.

    Attributes:
        result (StudyResult): The perturbation study's result.
        relevance_methods (dict): The methods run, as the study ran them.
        refused (dict): Method name to why it refuses the model (not run).
        infidelity (Infidelity): Their infidelity scores.
    """

    result: StudyResult
    relevance_methods: Dict[str, Any]
    refused: Dict[str, str]
    infidelity: Infidelity


def scored_study(model: Any, dataset: Any, collate: Callable, settings: Any, methods: Dict[str, Callable],
                 plausibility: Callable[[str, List[int], Dict[str, torch.Tensor]], None], groups: Dict[str, Any],
                 options: "Options") -> ScoredStudy:
    r"""
    The perturbation study of the methods that do not refuse ``model``, each explained batch's relevance scored by
    ``plausibility`` and by Captum's infidelity of the token ``groups``.

    Args:
        model (nn.Module): The classifier.
        dataset (Dataset): The split explained.
        collate (Callable): Items to ``(batch, scores)``.
        settings (sequence of Setting): The perturbation settings.
        methods (dict): Method name to explainer factory.
        plausibility (Callable): Called with each method's explained batch.
        groups (dict): Modality to its :class:`~captum_mm.metrics.perturbation.TokenGroup`, for the infidelity.
        options (Options): The main job's options (sample count, seed, progress).

    Returns:
        *ScoredStudy*
    """
    methods, refused = refused_methods(methods, model)
    relevance_methods = {method: attention_method(factory, model) for method, factory in methods.items()}
    forward = KeywordModel(model, ())
    infidelity = Infidelity(forward, lambda indices: predicted(forward, collate([dataset[i] for i in indices])[0]),
                            groups, seed=options.seed)

    def on_relevance(method: str, indices: List[int], relevance: Dict[str, torch.Tensor]) -> None:
        plausibility(method, indices, relevance)
        infidelity(method, indices, relevance)

    result = cast(StudyResult, run_perturbation_study(  # one process: the whole result
        model, dataset, collate, relevance_methods, settings, num_samples=options.samples, seed=options.seed,
        progress=options.progress, on_relevance=on_relevance,
    ))
    return ScoredStudy(result, relevance_methods, refused, infidelity)


def predicted(forward: Callable[..., torch.Tensor], batch: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """A batch and the model's predicted classes.

    Args:
        forward (Callable): The model called with the batch's keyword arguments, returning its logits.
        batch (dict): The batch.

    Returns:
        *tuple*: ``(batch, predictions)``.
    """
    with torch.no_grad():
        return batch, forward(**batch).argmax(-1)


def faithfulness_summary(tables: List[Dict[str, Any]]) -> List[str]:
    r"""
    The paragraphs closing a model's tables: which method wins each test (its AUC, plausibility and infidelity
    tables; not the ablations), and what leaving attention sinks out did.

    Args:
        tables (list of dict): The model's tables (:func:`study_tables`).

    Returns:
        *list of str*: The paragraphs (the sinks' left out when no "w/o sinks" method ran).
    """
    compared = [t for t in tables if not t["name"].endswith("_ablations_auc")]
    return [paragraph for paragraph in (winners(compared), sinks_effect(compared)) if paragraph]


def study_tables(name: str, result: StudyResult, plausibility: Any, refused: Optional[Dict[str, str]] = None,
                 infidelity: Optional[Infidelity] = None, setting_rows: Optional[Dict[str, str]] = None,
                 ground_truth: str = "the ground-truth shape masks", paper: bool = True) -> List[Dict[str, Any]]:
    r"""
    A study's tables: the AUC of every method (the paper's and those beside it), of the ablations (when run), the
    plausibility and (when given) the infidelity; refused methods n/a in the methods' tables, their reason noted.

    Args:
        name (str): The model's name, as the titles give it.
        result (StudyResult): The perturbation study's result.
        plausibility (Plausibility or EvidencePlausibility): Its plausibility scores (a ``table(title, name)``).
        refused (dict, optional): Method name to why it refuses the model. Default: None
        infidelity (Infidelity, optional): Its infidelity scores. Default: None
        setting_rows (dict, optional): Perturbation setting to its row label. Default: None (the VQA settings'
                    :data:`SETTING_ROWS`)
        ground_truth (str, optional): What the plausibility is measured against, as its title says.
        paper (bool, optional): Whether the paper's supplementary Tables 2-3 are this model's counterparts (the
                    titles say so). Default: True

    Returns:
        *list of dict*: The tables (:func:`captum_mm.study.report.table`).
    """
    short, rows_of = name.split("-")[0], setting_rows or SETTING_ROWS
    better = {label: "higher" if setting.startswith("negative") else "lower" for setting, label in rows_of.items()}

    def auc_table(columns, title, stem):
        columns = [c for c in columns if c in result.scores]
        rows = {label: {c: result.auc(c, setting) for c in columns} for setting, label in rows_of.items()}
        return table(rows, columns, title, stem, better)

    as_paper = (" (as supplementary Table 3, and the methods beside the paper's)", " (as supplementary Table 2)")
    as_paper = as_paper if paper else ("", "")
    methods_auc = auc_table(list(PAPER_METHODS) + list(BEYOND_PAPER), f"{name}: AUC of every method{as_paper[0]}", f"{short}_auc")
    tables = [methods_auc]
    ablation_columns = ["ours"] + list(ABLATIONS)
    if any(c in result.scores for c in ABLATIONS):
        tables.append(auc_table(ablation_columns, f"{name}: AUC of the ablations{as_paper[1]}", f"{short}_ablations_auc"))
    compared = [methods_auc, plausibility.table(f"{name}: plausibility against {ground_truth}", f"{short}_plausibility")]
    if infidelity is not None:
        compared.append(infidelity.table(f"{name}: Captum's infidelity of each method's relevance (lower is better)",
                                         f"{short}_infidelity"))
    mark_refused(compared, refused or {})
    return tables + compared[1:]


def _vqa_gallery(model, dataset, convert, relevance_methods, indices) -> Tuple[Figure, str]:
    """The gallery of the questions ``indices`` and its note on black panels."""
    batch, _ = pad_collate([dataset[i] for i in indices])
    inputs = convert(batch)
    with torch.no_grad():
        predictions = KeywordModel(model, ())(**inputs).argmax(-1)
    vocabulary = tokenizer()
    tokens = [vocabulary.convert_ids_to_tokens(dataset[i]["input_ids"].tolist()) for i in indices]
    relevance = {}
    for method, relevance_of in relevance_methods.items():
        values = relevance_of(inputs, predictions)
        relevance[method] = (values["text"].detach(), values["image"].detach())
    answers = [dataset.answers[p] for p in predictions.tolist()]
    titles = [f"{textwrap.fill(dataset.questions[i], 24)}\n→ {answer}" for i, answer in zip(indices, answers)]
    figure = relevance_gallery([dataset.image(i) for i in indices], tokens, relevance, (GRID, GRID), titles)
    return figure, vanished_panels(relevance)
