"""Seeded training of ``lxmert-easyvqa`` / ``visualbert-easyvqa`` (``captum-mm train NAME``; each model's
architecture, training function and epochs are named by its recipe in :mod:`captum_mm.zoo.recipes`): small
LXMERT / VisualBERT question answering models trained from scratch on easy-VQA train (region features of
:mod:`captum_mm.datasets.easy_vqa`), scored on easy-VQA test.
"""

import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, cast

import torch
from torch import Tensor, nn

from captum_mm.datasets.batches import KeywordModel, pad_collate
from captum_mm.datasets.easy_vqa import EASY_VQA_VOCABULARY, FEATURES, VISUAL_BERT_FEATURES, EasyVQA
from captum_mm.zoo.model_recipe import EasyVQAInputs, Recipe
from captum_mm.zoo.training import classifier_accuracy, save_trained, train_epochs

#: Fixed subsets on which tests check that a checkpoint still reaches its recorded quality.
VQA_CHECK_QUESTIONS = 600
VQA_SIZE: Dict[str, Any] = dict(hidden_size=128, num_attention_heads=4, intermediate_size=256, max_position_embeddings=32)


def lxmert_model() -> nn.Module:
    r"""
    The untrained architecture of ``lxmert-easyvqa``.

    Returns:
        *nn.Module*: A small ``LxmertForQuestionAnswering`` for easy-VQA's vocabulary, region features and answers.
    """
    from transformers import LxmertConfig, LxmertForQuestionAnswering

    config = LxmertConfig(
        vocab_size=len(EASY_VQA_VOCABULARY), l_layers=2, r_layers=2, x_layers=2, visual_feat_dim=FEATURES,
        visual_pos_dim=4, num_qa_labels=13, **VQA_SIZE,
    )
    return LxmertForQuestionAnswering(config)


def visual_bert_model() -> nn.Module:
    r"""
    The untrained architecture of ``visualbert-easyvqa``.

    Returns:
        *nn.Module*: A small ``VisualBertForQuestionAnswering`` for easy-VQA's vocabulary, region features and answers.
    """
    from transformers import VisualBertConfig, VisualBertForQuestionAnswering

    config = VisualBertConfig(  # type: ignore[call-arg]  # num_labels goes through PretrainedConfig's **kwargs
        vocab_size=len(EASY_VQA_VOCABULARY), num_hidden_layers=4, visual_embedding_dim=VISUAL_BERT_FEATURES, num_labels=13,
        **VQA_SIZE,
    )
    return VisualBertForQuestionAnswering(config)


def vqa_accuracy(
    recipe: "Recipe", model: nn.Module, dataset: EasyVQA, indices: Optional[Iterable[int]] = None, batch_size: int = 256
) -> float:
    r"""
    Top-1 accuracy (%) of ``recipe``'s VQA ``model`` on ``dataset`` (all of it, or ``indices``).

    Args:
        recipe (Recipe): The model's recipe (how it takes easy-VQA).
        model (torch.nn.Module): The model (left in eval mode).
        dataset (EasyVQA): The split scored.
        indices (Iterable[int], optional): The questions scored. Default: None (all)
        batch_size (int, optional): Questions per forward. Default: 256

    Returns:
        *float*: The accuracy, in %.
    """
    convert = cast("EasyVQAInputs", recipe.easy_vqa).convert  # VQA recipes carry their inputs
    return classifier_accuracy(model, dataset, indices, convert, batch_size)


def train_vqa(
    recipe: "Recipe", output: Path, seed: int = 0, epochs: Optional[int] = None, batch_size: int = 64, lr: float = 5e-4,
    limit: Optional[int] = None,
) -> Dict[str, Any]:
    r"""
    Train ``recipe``'s VQA model on easy-VQA train, save it to ``output`` and return its measured quality.

    Args:
        recipe (Recipe): The model's recipe.
        output (Path): The checkpoint folder written.
        seed (int, optional): Seed of the initialisation and the shuffles. Default: 0
        epochs (int, optional): Default: None (the recipe's)
        batch_size (int, optional): Questions per step. Default: 64
        lr (float, optional): Peak learning rate. Default: 5e-4
        limit (int, optional): Only the first ``limit`` questions of each split (a quick check of the recipe).
                    Default: None (all)

    Returns:
        *dict*: The measured quality, as ``quality.json`` holds it.
    """
    name, epochs = recipe.name, epochs or recipe.epochs
    torch.manual_seed(seed)
    started = time.perf_counter()
    train, test = EasyVQA("train"), EasyVQA("test")
    train_size, test_indices = len(train), None
    if limit is not None:
        train_size, test_indices = min(limit, len(train)), range(min(limit, len(test)))
    model = recipe.build()
    forward = KeywordModel(model, ())
    convert = cast("EasyVQAInputs", recipe.easy_vqa).convert  # VQA recipes carry their inputs
    counts = {"epoch": -1, "correct": 0, "seen": 0}  # this epoch's training accuracy

    def step(indices: List[int], epoch: int) -> Tuple[Tensor, str]:
        if counts["epoch"] != epoch:
            counts.update(epoch=epoch, correct=0, seen=0)
        batch, scores = pad_collate([train[i] for i in indices])
        logits = forward(**convert(batch))
        counts["correct"] += int((logits.argmax(-1) == scores.argmax(-1)).sum())
        counts["seen"] += len(scores)
        return nn.functional.cross_entropy(logits, scores.argmax(-1)), f", train accuracy {100 * counts['correct'] / counts['seen']:.1f}%"

    train_epochs(name, model, step, train_size, epochs, batch_size, lr, seed)
    model.eval()
    return save_trained(model, output, {
        "easy_vqa_test_accuracy": vqa_accuracy(recipe, model, test, test_indices),
        "check_subset_accuracy": vqa_accuracy(recipe, model, test, range(VQA_CHECK_QUESTIONS)[:limit]),
    }, started, seed, epochs, limit)

