"""What the shipped models' trainers share: the learning-rate schedule, the epoch loop and saving a checkpoint."""

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Tuple, cast

import torch
from torch import Tensor, nn

from captum_mm.datasets.batches import Batch, KeywordModel, pad_collate
from captum_mm.metrics.study import Samples

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    r"""
    Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total_steps``.

    Args:
        optimizer (torch.optim.Optimizer): The optimizer whose learning rate is scheduled.
        total_steps (int): Steps of the whole training.
        warmup (int): Steps of the linear warm-up.

    Returns:
        *LambdaLR*: The scheduler, stepped once per optimizer step.
    """

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_epochs(name: str, model: nn.Module, step: Callable[[List[int], int], Tuple[Tensor, str]], size: int, epochs: int,
                 batch_size: int, lr: float, seed: int) -> None:
    r"""
    AdamW (half an epoch of warm-up, then cosine decay) over ``epochs`` seeded shuffles of the first ``size``
    training items.

    Args:
        name (str): The model's name, as the progress lines print it.
        model (torch.nn.Module): The model trained (left in eval mode).
        step (Callable): ``step(indices, epoch)`` gives a batch's loss and what to print of it every 100 steps.
        size (int): How many training items.
        epochs (int): Passes over them.
        batch_size (int): Items per step.
        lr (float): Peak learning rate.
        seed (int): Seed of the shuffles.

    Returns:
        None
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(size / batch_size)
    scheduler = cosine_schedule(optimizer, epochs * steps_per_epoch, warmup=steps_per_epoch // 2)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(size, generator=generator).tolist()
        for number, start in enumerate(range(0, size, batch_size)):
            loss, shown = step(order[start : start + batch_size], epoch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            if number % 100 == 0:
                print(f"{name} epoch {epoch + 1}/{epochs} step {number}: loss {loss.item():.3f}{shown}", flush=True)
    model.eval()


def save_checkpoint(model: nn.Module, output: Path, quality: Dict[str, Any]) -> None:
    r"""
    Save a trained HuggingFace model and its measured quality (``quality.json``) to ``output``.

    Args:
        model (torch.nn.Module): The trained ``PreTrainedModel``.
        output (Path): The checkpoint folder.
        quality (dict): What was measured, written as ``quality.json``.

    Returns:
        None
    """
    output = Path(output)
    cast("PreTrainedModel", model).save_pretrained(output)
    (output / "quality.json").write_text(json.dumps(quality, indent=2))


def save_trained(model: nn.Module, output: Path, scores: Dict[str, float], started: float, seed: int, epochs: int,
                 limit: Optional[int]) -> Dict[str, Any]:
    r"""
    Save a model trained from scratch with its quality: the measured ``scores`` and the run's facts (seconds since
    ``started``, seed, epochs, torch threads, ``limit``).

    Args:
        model (torch.nn.Module): The trained ``PreTrainedModel``.
        output (Path): The checkpoint folder.
        scores (dict): What was measured on the test split and the check subset.
        started (float): ``time.perf_counter()`` when training began.
        seed (int): The training's seed.
        epochs (int): Its epochs.
        limit (int or None): The items of each split it was limited to (None: all).

    Returns:
        *dict*: The quality, as ``quality.json`` holds it.
    """
    quality = {**scores, "train_seconds": round(time.perf_counter() - started, 1), "seed": seed, "epochs": epochs,
               "torch_threads": torch.get_num_threads(), "limit": limit}
    save_checkpoint(model, output, quality)
    return quality


def classifier_accuracy(model: nn.Module, dataset: Samples, indices: Optional[Iterable[int]] = None,
                        convert: Callable[[Batch], Batch] = lambda batch: batch, batch_size: int = 256) -> float:
    r"""
    Top-1 accuracy (%) of a classifier on a dataset of keyword samples with one-hot ``answer_scores``.

    Args:
        model (torch.nn.Module): The HuggingFace classifier (left in eval mode).
        dataset (Samples): The split scored (:func:`~captum_mm.datasets.batches.pad_collate` batches its samples).
        indices (Iterable[int], optional): The samples scored. Default: None (all)
        convert (Callable, optional): A padded batch to the model's keyword arguments. Default: the batch itself
        batch_size (int, optional): Samples per forward. Default: 256

    Returns:
        *float*: The accuracy, in %.
    """
    selected = list(range(len(dataset))) if indices is None else list(indices)
    forward, correct = KeywordModel(model, ()), 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(selected), batch_size):
            batch, scores = pad_collate([dataset[i] for i in selected[start : start + batch_size]])
            correct += int((scores.argmax(-1) == forward(**convert(batch)).argmax(-1)).sum())
    return 100.0 * correct / len(selected)
