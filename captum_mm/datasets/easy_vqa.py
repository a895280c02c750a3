"""easy-VQA (the PyPI package ``easy-vqa``) as region features for LXMERT and VisualBERT.

Each 64 x 64 image holds one shape on a uniform background. The image is cut into
an 8 x 8 grid of 8 x 8-pixel regions; every region gets fixed features computed
from its pixels (mean colour, mean colour of its shape pixels, shape coverage and
the coverage of its 4 x 4 sub-blocks) and its normalised box. The shape's mask is
recovered from the pixels (colour distance to the background, read at the
corner), and with it each region's share of the shape: the ground truth for
plausibility checks.

Questions are tokenised by a real WordPiece tokenizer: the bert-base-uncased
vocabulary reduced to the word pieces easy-VQA uses (``EASY_VQA_VOCABULARY``),
which tokenises every easy-VQA question exactly as the full vocabulary does.
"""

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

GRID, CELL = 8, 8
FEATURES = 3 + 3 + 1 + 16
#: Word pieces of bert-base-uncased that easy-VQA questions use, plus the special tokens.
EASY_VQA_VOCABULARY = (
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "##l", "##tangle", "?", "a", "black", "blue", "brown", "circle",
    "color", "contain", "does", "gray", "green", "image", "in", "is", "no", "not", "of", "present", "rec", "red",
    "shape", "tea", "the", "there", "triangle", "what", "yellow",
)


def shape_mask(image: np.ndarray, tolerance: float = 60.0) -> np.ndarray:
    """Pixels of the shape: colour distance (sum over RGB) to the background, read at the corner, above ``tolerance``."""
    background = image[0, 0].astype(np.float64)
    return np.abs(image.astype(np.float64) - background).sum(-1) > tolerance


def region_features(image: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``[64, 23]`` region features and ``[64]`` shape coverage of the 8 x 8 grid."""
    mask = shape_mask(image)
    pixels = image.astype(np.float64) / 255.0
    cells = pixels.reshape(GRID, CELL, GRID, CELL, 3).transpose(0, 2, 1, 3, 4).reshape(GRID * GRID, CELL * CELL, 3)
    covered = mask.reshape(GRID, CELL, GRID, CELL).transpose(0, 2, 1, 3).reshape(GRID * GRID, CELL * CELL)
    coverage = covered.mean(1)
    shape_colour = (cells * covered[..., None]).sum(1) / np.maximum(covered.sum(1, keepdims=True), 1)
    blocks = mask.reshape(GRID, 4, 2, GRID, 4, 2).mean((2, 5))  # 4 x 4 sub-blocks of 2 x 2 pixels per region
    blocks = blocks.transpose(0, 2, 1, 3).reshape(GRID * GRID, 16)
    features = np.concatenate([cells.mean(1), shape_colour, coverage[:, None], blocks], 1)
    return features.astype(np.float32), coverage.astype(np.float32)


def region_boxes() -> np.ndarray:
    """Normalised ``[x0, y0, x1, y1]`` boxes of the grid's regions, row by row."""
    rows, cols = np.divmod(np.arange(GRID * GRID), GRID)
    return np.stack([cols, rows, cols + 1, rows + 1], 1).astype(np.float32) / GRID


def tokenizer():
    """The reduced bert-base-uncased WordPiece tokenizer (lower-casing, basic + word-piece splitting)."""
    import tempfile

    from transformers import BertTokenizer

    with tempfile.TemporaryDirectory() as folder:
        vocabulary = Path(folder) / "vocab.txt"
        vocabulary.write_text("\n".join(EASY_VQA_VOCABULARY) + "\n")
        return BertTokenizer.from_pretrained(folder)


@lru_cache(maxsize=2)
def _images(split: str) -> Tuple[Dict[int, int], np.ndarray, np.ndarray, np.ndarray]:
    import easy_vqa
    from PIL import Image

    paths = easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()
    ids = sorted(paths)
    images = np.stack([np.array(Image.open(paths[i]).convert("RGB")) for i in ids])
    features, coverage = zip(*(region_features(image) for image in images))
    return {image_id: row for row, image_id in enumerate(ids)}, images, np.stack(features), np.stack(coverage)


@dataclass
class EasyVQA:
    """One split of easy-VQA, as model inputs.

    ``dataset[i]`` maps argument names to unbatched tensors (``input_ids``,
    ``attention_mask``, ``token_type_ids``, ``visual_feats``, ``visual_pos``) plus
    ``answer_scores`` (one-hot over the 13 answers); :func:`captum_mm.datasets.batches.pad_collate`
    batches them. ``for_visual_bert(batch)`` turns a batch into VisualBERT's arguments.
    """

    split: str = "test"

    def __post_init__(self) -> None:
        import easy_vqa

        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}.")
        questions = easy_vqa.get_train_questions() if self.split == "train" else easy_vqa.get_test_questions()
        self.questions, answers, self.image_ids = questions
        self.answers: List[str] = easy_vqa.get_answers()
        self.labels = [self.answers.index(answer) for answer in answers]
        self.rows, self.images, self.features, self.coverage = _images(self.split)
        self.boxes = torch.from_numpy(region_boxes())
        encoded = tokenizer()(self.questions)["input_ids"]
        self.token_ids = [torch.tensor(ids) for ids in encoded]

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        row = self.rows[self.image_ids[index]]
        ids = self.token_ids[index]
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),
            "visual_feats": torch.from_numpy(self.features[row]),
            "visual_pos": self.boxes,
            "answer_scores": torch.nn.functional.one_hot(torch.tensor(self.labels[index]), len(self.answers)).float(),
        }

    def image(self, index: int) -> np.ndarray:
        """The ``[64, 64, 3]`` image of question ``index``."""
        return self.images[self.rows[self.image_ids[index]]]

    def region_coverage(self, indices: Sequence[int]) -> Tensor:
        """``[B, 64]`` share of each region covered by the shape, for questions ``indices``."""
        return torch.from_numpy(np.stack([self.coverage[self.rows[self.image_ids[i]]] for i in indices]))


#: VisualBERT region inputs: features, box, one-hot grid row and column (it has no box input of its own).
VISUAL_BERT_FEATURES = FEATURES + 4 + 2 * GRID


def for_visual_bert(batch: Dict[str, Any]) -> Dict[str, Any]:
    """VisualBERT's arguments: region features, boxes and one-hot grid positions as ``visual_embeds``."""
    converted = {name: value for name, value in batch.items() if name not in ("visual_feats", "visual_pos")}
    boxes = batch["visual_pos"]
    cells = (boxes[..., :2] * GRID).round().long().clamp(0, GRID - 1)  # column, row of each region
    position = torch.cat([torch.nn.functional.one_hot(cells[..., 1], GRID), torch.nn.functional.one_hot(cells[..., 0], GRID)], -1)
    converted["visual_embeds"] = torch.cat([batch["visual_feats"], boxes, position.to(boxes.dtype)], -1)
    return converted
