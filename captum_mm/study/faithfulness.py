"""The main job's faithfulness comparison (issue 27): the methods a model refuses (n/a in its tables, the refusal
as a note), Captum's infidelity of every method's relevance, which method wins each test (counted per model) and what
leaving attention sinks out did, generated from the tables."""

from typing import Any, Callable, Dict, List, Tuple

import torch
from captum.metrics import infidelity
from torch import Tensor

from captum_mm.metrics.perturbation import TokenGroup
from captum_mm.study.notes import best_columns, number
from captum_mm.study.report import table

#: Why Captum's infidelity is not computed for a generative VLM.
NO_INFIDELITY_GENERATED = ("Infidelity is not computed here: the relevance explains the greedy answer's pieces (summed), and "
                           "dropping tokens changes what is generated, so no fixed output exists to compare the "
                           "relevance's predicted change with.")


def refused_methods(methods: Dict[str, Callable], model: Any) -> Tuple[Dict[str, Callable], Dict[str, str]]:
    r"""
    The methods that explain ``model`` and those refusing it (their ``TypeError`` on construction).

    Args:
        methods (dict): Method name to factory ``(forward_func, model=None) -> explainer``.
        model (torch.nn.Module): The model.

    Returns:
        *tuple*: The methods kept (name to factory) and the refused ones' reasons (name to message).
    """
    kept, refused = {}, {}
    for name, factory in methods.items():
        try:
            factory(model)
        except TypeError as error:
            refused[name] = str(error)
        else:
            kept[name] = factory
    return kept, refused


def mark_refused(tables: List[Dict[str, Any]], refused: Dict[str, str]) -> None:
    r"""
    Each refused method as an n/a column of ``tables`` (in place), its reason as a note.

    Args:
        tables (list of dict): Tables comparing methods (:func:`captum_mm.study.report.table`).
        refused (dict): Method name to the refusal's message (:func:`refused_methods`).
    """
    for method_table in tables:
        for name, reason in refused.items():
            method_table["columns"].append(name)
            for values in method_table["rows"].values():
                values[name] = -1.0
            method_table["notes"].append(f"n/a ({name}): the method refuses this model: {reason}")


class Infidelity:
    r"""
    ``captum.metrics.infidelity`` (Yeh et al., NeurIPS 2019) of each method's per-token relevance, per modality:
    a perturbation drops a random ``share`` of the modality's real tokens (through its mask, as the perturbation tests
    drop them; a text's first and last token kept), and the metric compares the dropped tokens' summed relevance with
    the change of the explained logit (``normalize=True``: the relevance's best scale fitted per sample, so that
    methods of any scale compare). Lower is better. Called with each explained batch (``on_relevance``).

    Args:
        forward (Callable): The model called with a batch's keyword arguments, returning its logits.
        batch_of (Callable): Dataset indices to ``(batch, targets)``.
        groups (dict): Modality (``"text"``, ``"image"``) to its :class:`~captum_mm.metrics.perturbation.TokenGroup`.
        perturbations (int, optional): Perturbations per sample. Default: 8
        share (float, optional): Share of tokens dropped per perturbation. Default: 0.25
        seed (int, optional): Seed of the perturbations. Default: 0
    """

    def __init__(self, forward: Callable[..., Any], batch_of: Callable[[List[int]], Tuple[Dict[str, Tensor], Tensor]],
                 groups: Dict[str, TokenGroup], perturbations: int = 8, share: float = 0.25, seed: int = 0) -> None:
        self.forward, self.batch_of, self.groups = forward, batch_of, groups
        self.perturbations, self.share, self.seed = perturbations, share, seed
        self.values: Dict[str, Dict[str, List[float]]] = {}
        self._outputs: Dict[Tuple[int, ...], Tensor] = {}  # the perturbed forwards of the batch, shared by its methods

    def __call__(self, method: str, indices: List[int], relevance: Dict[str, Tensor]) -> None:
        plain, targets = self.batch_of(indices)
        if self._outputs and next(iter(self._outputs))[:len(indices)] != tuple(indices):
            self._outputs.clear()
        for modality, group in self.groups.items():
            batch = _with_mask(plain, group)
            names = list(batch)
            generator = torch.Generator().manual_seed(self.seed + indices[0])  # the same perturbations for every method

            def forward(keep: Tensor, *values: Tensor, mask: str = group.mask, modality: str = modality) -> Tensor:
                key = (*indices, hash(modality), hash(keep.numpy().tobytes()))
                if key not in self._outputs:
                    arguments = dict(zip(names, values))
                    with torch.no_grad():
                        self._outputs[key] = self.forward(**{**arguments, mask: arguments[mask] * keep.to(arguments[mask].dtype)})
                return self._outputs[key]

            def perturb(keep: Tensor, ends: bool = group.keep_ends) -> Tuple[Tensor, Tensor]:
                drop = (torch.rand(keep.shape, generator=generator) < self.share) & (keep > 0) & ~_ends(keep, ends)
                return drop.to(keep.dtype), keep * ~drop

            keep = batch[group.mask].double()
            scores = infidelity(forward, perturb, keep, relevance[modality].detach().double(),
                                additional_forward_args=tuple(batch[n] for n in names), target=targets,
                                n_perturb_samples=self.perturbations, normalize=True)
            self.values.setdefault(method, {}).setdefault(modality, []).extend(scores.tolist())

    def table(self, title: str, name: str) -> Dict[str, Any]:
        r"""
        The mean infidelity per modality and method (a relevance all zero scores the mean squared change itself).

        Args:
            title (str): The table's title.
            name (str): Its CSV name.

        Returns:
            *dict*: The table (:func:`captum_mm.study.report.table`), lower better.
        """
        methods = list(self.values)
        rows = {f"{modality} infid.": {m: sum(self.values[m][modality]) / len(self.values[m][modality]) for m in methods}
                for modality in self.groups}
        return table(rows, methods, title, name, {row: "lower" for row in rows})


def _with_mask(batch: Dict[str, Tensor], group: TokenGroup) -> Dict[str, Tensor]:
    """``batch`` with the group's mask (all tokens real where the batch has none)."""
    if group.mask in batch:
        return batch
    tokens = next(batch[name] for name in group.tensors if name in batch)
    return {**batch, group.mask: torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)}


def _ends(keep: Tensor, ends: bool) -> Tensor:
    """The first and last real token of each row (none when ``ends`` is False)."""
    marked = torch.zeros_like(keep, dtype=torch.bool)
    if ends:
        real = keep > 0
        first, last = real.to(torch.int8).argmax(1), keep.shape[1] - 1 - real.flip(1).to(torch.int8).argmax(1)
        rows = torch.arange(keep.shape[0])
        marked[rows, first], marked[rows, last] = True, True
    return marked


def winners(tables: List[Dict[str, Any]]) -> str:
    r"""
    Which method to trust: each method winning a test (a row's best value as shown; ties count for each), counted.

    Args:
        tables (list of dict): The model's tables comparing methods (its AUC, plausibility and infidelity tables).

    Returns:
        *str*: The paragraph.
    """
    won: Dict[str, List[str]] = {}
    tests = 0
    for method_table in tables:
        for row, values in method_table["rows"].items():
            tests += 1
            for column in best_columns(values, method_table["better"][row]):
                won.setdefault(column, []).append(row)
    ranked = sorted(won.items(), key=lambda item: -len(item[1]))
    counts = "; ".join(f"{method} {len(rows)} ({', '.join(rows)})" for method, rows in ranked)
    return f"Which method to trust (the best value of each of {tests} tests; ties count for each): {counts}."


def sinks_effect(tables: List[Dict[str, Any]]) -> str:
    r"""
    What leaving attention sinks out did: each ``"X w/o sinks"`` column against ``X`` in every row (as shown, two
    decimals), helped / hurt / no change, counted.

    Args:
        tables (list of dict): The model's tables comparing methods.

    Returns:
        *str*: The paragraph, empty when no such pair was run.
    """
    parts, tally = [], {"helped": 0, "hurt": 0, "no change": 0}
    for method_table in tables:
        pairs = [(c[: -len(" w/o sinks")], c) for c in method_table["columns"] if c.endswith(" w/o sinks")]
        for base, variant in pairs:
            if base not in method_table["columns"]:
                continue
            for row, values in method_table["rows"].items():
                if min(values[base], values[variant]) < 0:
                    continue
                delta = round(values[variant], 2) - round(values[base], 2)
                sign = 1 if method_table["better"][row] == "higher" else -1
                verdict = "no change" if abs(delta) < 0.005 else "helped" if sign * delta > 0 else "hurt"
                tally[verdict] += 1
                parts.append(f"{base} {row} {number(values[base])} → {number(values[variant])} ({verdict})")
    if not parts:
        return ""
    counted = ", ".join(f"{verdict} {count}" for verdict, count in tally.items())
    return f"Attention sinks left out (first token and tokens taking ≥ 25% of attention; {counted}): {'; '.join(parts)}."
