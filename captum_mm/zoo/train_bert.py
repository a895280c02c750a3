"""``bert-reviews``: a small ``BertForSequenceClassification`` trained from scratch on the synthetic movie reviews of
:mod:`captum_mm.datasets.reviews` (``captum-mm train bert-reviews``), scored on their test split.
"""

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_mm.datasets.batches import KeywordModel, pad_collate
from captum_mm.datasets.reviews import LABELS, LONGEST, REVIEW_VOCABULARY, SyntheticReviews
from captum_mm.zoo.training import classifier_accuracy, save_trained, train_epochs

if TYPE_CHECKING:
    from transformers import BertForSequenceClassification, PretrainedConfig

    from captum_mm.zoo.model_recipe import Recipe

#: Reviews of the test split on which a test checks that the shipped checkpoint still reaches its recorded accuracy.
CHECK_REVIEWS = 500


def bert_model() -> "BertForSequenceClassification":
    r"""
    The untrained architecture of ``bert-reviews``.

    Returns:
        *BertForSequenceClassification*: Hidden 64, 3 layers of 4 heads, for the reviews' vocabulary and labels.
    """
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=len(REVIEW_VOCABULARY), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, id2label=dict(enumerate(LABELS)),
    )
    return BertForSequenceClassification(config)


def reviews_mismatches(config: "PretrainedConfig") -> List[str]:
    r"""
    What in a user's ``BertForSequenceClassification`` config does not fit the synthetic reviews.

    Args:
        config (PretrainedConfig): The checkpoint's config.

    Returns:
        *list of str*: One line per mismatch (labels, vocabulary, positions); empty when it fits.
    """
    found = {"labels": (config.num_labels, len(LABELS)), "vocabulary size": (config.vocab_size, len(REVIEW_VOCABULARY)),
             "positions": (config.max_position_embeddings, LONGEST)}
    return [f"{key} {value} (expected {'' if key == 'labels' else 'at least '}{needed})" for key, (value, needed) in found.items()
            if value < needed or (key == "labels" and value != needed)]


def train_bert(recipe: "Recipe", output: Path, seed: int = 0, epochs: Optional[int] = None, batch_size: int = 64,
               lr: float = 1e-3, limit: Optional[int] = None) -> Dict[str, Any]:
    r"""
    Train ``bert-reviews`` on the synthetic reviews' train split, save it to ``output`` and return its measured quality.

    Args:
        recipe (Recipe): The model's recipe.
        output (Path): The checkpoint folder written.
        seed (int, optional): Seed of the initialisation and the shuffles. Default: 0
        epochs (int, optional): Default: None (the recipe's)
        batch_size (int, optional): Reviews per step. Default: 64
        lr (float, optional): Peak learning rate. Default: 1e-3
        limit (int, optional): Only the first ``limit`` reviews of each split (a quick check of the recipe).
                    Default: None (all)

    Returns:
        *dict*: The measured quality, as ``quality.json`` holds it.
    """
    epochs = epochs or recipe.epochs
    torch.manual_seed(seed)
    started = time.perf_counter()
    train, test = SyntheticReviews("train"), SyntheticReviews("test")
    model = recipe.build()
    forward = KeywordModel(model, ())

    def step(indices: List[int], epoch: int) -> Tuple[Tensor, str]:
        batch, scores = pad_collate([train[i] for i in indices])
        return nn.functional.cross_entropy(forward(**batch), scores.argmax(-1)), ""

    train_epochs(recipe.name, model, step, len(train) if limit is None else min(limit, len(train)), epochs, batch_size,
                 lr, seed)
    test_indices = None if limit is None else range(min(limit, len(test)))
    return save_trained(model, output, {
        "reviews_test_accuracy": classifier_accuracy(model, test, test_indices),
        "check_subset_accuracy": classifier_accuracy(model, test, range(CHECK_REVIEWS)[:limit]),
    }, started, seed, epochs, limit)
