"""Keyword batches: samples (dicts of unbatched tensors) collated into one batch, and a model called on one.

The datasets' samples map a model's argument names to tensors; training, the perturbation
study and the main job all pad them into a batch with :func:`pad_collate` and read a model's
logits on it through :class:`KeywordModel`.
"""

from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import Tensor, nn

from captum_mm.models import adapter_for

Batch = Dict[str, Any]


class KeywordModel:
    r"""
    A HuggingFace model called with keyword arguments (or positionally, in ``names`` order), returning logits.

    Args:
        model (torch.nn.Module): The HuggingFace model.
        names (sequence of str): The argument names of positional inputs, in order.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.model, self.names, self.adapter = model, tuple(names), adapter_for(model)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        kwargs.update(zip(self.names, args))
        return self.adapter.logits(self.model(**kwargs))


def pad_collate(items: List[Mapping[str, Tensor]], label: str = "answer_scores") -> Tuple[Batch, Tensor]:
    r"""
    Stack samples, right-padding every per-token tensor with zeros (masks and ids included).

    Args:
        items (list of Mapping[str, Tensor]): Samples mapping argument names to unbatched tensors,
                    plus ``label`` (its ``[C]`` answer scores).
        label (str, optional): The key of the answer scores. Default: "answer_scores"

    Returns:
        *tuple*: The batch's keyword arguments and its ``[B, C]`` answer scores, returned separately.
    """
    batch: Batch = {}
    for name in items[0]:
        values = [item[name] for item in items]
        if values[0].dim() == 0:
            batch[name] = torch.stack(values)
            continue
        length = max(value.shape[0] for value in values)
        padded = values[0].new_zeros(len(values), length, *values[0].shape[1:])
        for row, value in enumerate(values):
            padded[row, : value.shape[0]] = value
        batch[name] = padded
    return batch, batch.pop(label)
