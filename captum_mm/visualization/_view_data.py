"""What the interactive view shows, as plain JSON-able data: one sample of one or several explanations
(see :func:`captum_mm.visualization.view`)."""

import base64
import io
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from captum_mm.attr._readout import Explanation
from captum_mm.metrics.segmentation import relevance_to_masks

Labels = Union[Sequence[str], Mapping[int, str], None]
#: Outputs over tokens of one sequence: shown on one colour scale (the prompt and the tokens generated after it).
_TEXT_SCALE = ("text", "generated")


def png_data_uri(image: Any) -> str:
    """An image (``[H, W, 3|4]`` or ``[3, H, W]`` array or tensor, uint8 or floats in [0, 1], or a PIL image) as a
    base64 PNG ``data:`` URI."""
    if not isinstance(image, Image.Image):
        array = np.asarray(image.detach().cpu() if isinstance(image, Tensor) else image)
        if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
            array = array.transpose(1, 2, 0)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise ValueError(f"An image must be [H, W, 3|4] or [3|4, H, W], got shape {array.shape}.")
        if array.dtype != np.uint8:
            if array.size and (array.min() < 0 or array.max() > 1):
                raise ValueError(f"A float image must lie in [0, 1], got values in [{array.min():.3g}, {array.max():.3g}]: "
                                 "pass uint8 for 0-255 pixels (a model's normalised pixel_values are not an image).")
            array = (array.astype(np.float64) * 255).round().astype(np.uint8)
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_size(image: Any) -> Tuple[int, int]:
    """``(height, width)`` of an image :func:`png_data_uri` takes."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    shape = tuple(image.shape)
    return (shape[1], shape[2]) if shape[0] in (3, 4) and shape[-1] not in (3, 4) else (shape[0], shape[1])


def _elements(explanation: Explanation, sample: int) -> List[Optional[int]]:
    """The explained elements of a sample: slot indices (None for one element a sample)."""
    if explanation.target.dim() == 1:
        return [None]
    return [slot for slot, target in enumerate(explanation.target[sample].tolist()) if target != -1]


def _check_alike(explanations: Sequence[Explanation], names: Sequence[str]) -> None:
    first = explanations[0]
    shapes = {key: tuple(value.shape) for key, value in first.relevance.items()}
    for name, other in zip(names[1:], explanations[1:]):
        other_shapes = {key: tuple(value.shape) for key, value in other.relevance.items()}
        if other_shapes != shapes:
            raise ValueError(f"Explanation {name!r} has outputs {other_shapes}, the first {names[0]!r} {shapes}: "
                             "view explanations of one batch.")
        if not torch.equal(other.target, first.target):
            raise ValueError(f"Explanation {name!r} explains other classes or tokens than {names[0]!r}: "
                             "view explanations of the same elements (same inputs, targets and continuation).")


def _label(labels: Labels, class_id: int) -> str:
    if labels is None:
        return str(class_id)
    if isinstance(labels, Mapping):
        return str(labels.get(class_id, class_id))
    return str(labels[class_id]) if 0 <= class_id < len(labels) else str(class_id)


def _corners(box: Tensor) -> List[float]:
    """DETR's normalised ``(cx, cy, w, h)`` as ``[x0, y0, x1, y1]`` fractions of the image."""
    cx, cy, w, h = box.tolist()
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _element_info(explanation: Explanation, sample: int, slots: List[Optional[int]], labels: Labels,
                  generated: Optional[Sequence[str]], boxes: Optional[Tensor]) -> List[Dict[str, Any]]:
    info = []
    for position, slot in enumerate(slots):
        index = (sample,) if slot is None else (sample, slot)
        class_id, score = int(explanation.target[index]), float(explanation.scores[index])
        label = generated[position] if generated is not None else _label(labels, class_id)
        entry: Dict[str, Any] = {"label": label, "score": score}
        if explanation.queries is not None:
            query = int(explanation.queries[index])
            entry["label"] = f"{label} (query {query})"
            entry["box"] = _corners(boxes[query]) if boxes is not None else None
        info.append(entry)
    return info


def _output_layout(explanation: Explanation, sample: int, slot: Optional[int]) -> Tuple[List[str], List[str]]:
    """Output names shown as token strips (one value a token) and as image heat maps (grids)."""
    strips: List[str] = []
    grids: List[str] = []
    for name, values in explanation.relevance.items():
        one = values[sample] if slot is None else values[sample, slot]
        (strips if one.dim() == 1 else grids).append(name)
    return strips, grids


def _grids(values: Tensor) -> List[Tensor]:
    """One element's image relevance as its grids: ``[h, w]`` is one, ``[n, h, w]`` (tiles, images) ``n``."""
    return [values] if values.dim() == 2 else list(values.reshape(-1, *values.shape[-2:]))


def _values(explanation: Explanation, sample: int, slot: Optional[int], strips: List[str], grids: List[str],
            explained: int) -> Dict[str, Any]:
    """One element's relevance: per token strip (the generated tokens' cut to the ``explained`` ones) and per grid."""
    def one(name: str) -> Tensor:
        values = explanation.relevance[name]
        return (values[sample] if slot is None else values[sample, slot]).detach().double().cpu()

    cut = {name: explained if name == "generated" else None for name in strips}
    return {"strips": {name: one(name)[: cut[name]].tolist() for name in strips},
            "images": [grid.flatten().tolist() for name in grids for grid in _grids(one(name))]}


def _mask_uri(mask: np.ndarray) -> str:
    """A boolean mask as a PNG, red where set, transparent elsewhere."""
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[mask] = (220, 20, 60, 255)
    return png_data_uri(rgba)


def _masks(explanation: Explanation, sample: int, slots: List[Optional[int]], size: Tuple[int, int]) -> List[str]:
    """Algorithm 1's mask of each explained DETR query (its map over the whole image, unpadded)."""
    maps = torch.stack([explanation.relevance["image"][sample, slot] for slot in slots]).detach().double().cpu()
    masks = relevance_to_masks(maps, torch.ones(len(slots), dtype=torch.bool), size, size, size)
    return [_mask_uri(mask.numpy()) for mask in masks]


def _strip_labels(name: str, count: int, tokens: Any) -> List[str]:
    """A token strip's labels: ``tokens`` (the text's, or by output name), else the output name and index."""
    given = tokens.get(name) if isinstance(tokens, Mapping) else (tokens if name == "text" else None)
    if given is None:
        return [f"{name} {index}" for index in range(count)]
    if len(given) != count:
        raise ValueError(f"{len(given)} labels given for output {name!r}, whose relevance has {count} tokens "
                         "(padding included): give one label a token.")
    return [str(token) for token in given]


def _generated_labels(explanation: Explanation, sample: int, slots: List[Optional[int]],
                      generated: Optional[Sequence[str]]) -> Optional[List[str]]:
    """The explained generated tokens' labels (None for other families): ``generated``, else their ids."""
    if explanation.generated_ids is None:
        return None
    if generated is None:
        return [f"#{int(explanation.generated_ids[sample, slot])}" for slot in slots]
    if len(generated) != len(slots):
        raise ValueError(f"{len(generated)} generated tokens given; sample {sample} has {len(slots)} explained "
                         "generated tokens: give one string a token.")
    return [str(token) for token in generated]


def _collapse_silent_runs(strip: Dict[str, Any], element_values: List[Dict[str, List[float]]]) -> None:
    """Runs of one repeated token (a VLM's image placeholders) that no method gives relevance shown as one
    token ``"<image> ×16"``: the strip's labels and every element's values for it, in place."""
    name, labels = strip["name"], strip["labels"]
    silent = [all(values[name][index] == 0.0 for values in element_values) for index in range(len(labels))]
    kept, shown, start = [], [], 0
    while start < len(labels):
        end = start + 1
        while end < len(labels) and labels[end] == labels[start] and silent[end] and silent[start]:
            end += 1
        kept.append(start)
        shown.append(labels[start] if end - start == 1 else f"{labels[start]} \u00d7{end - start}")
        start = end
    strip["labels"] = shown
    for values in element_values:
        values[name] = [values[name][index] for index in kept]


def _drop_missing_images(values: Dict[str, List[Dict[str, Any]]], given: int, maps: int) -> None:
    """Fewer images than maps: the maps past them are a prompt's missing images (all zero in a batch of prompts holding
    different counts), dropped in place; anything else is refused."""
    extra = [element["images"][given:] for elements in values.values() for element in elements]
    if given > maps or any(value != 0.0 for grids in extra for grid in grids for value in grid):
        raise ValueError(f"{given} images given for {maps} image heat maps: give one image a map, or none "
                         "(fewer only where the maps past them are all zero: images the prompt does not hold).")
    for elements in values.values():
        for element in elements:
            del element["images"][given:]


def view_data(explanations: Sequence[Explanation], names: Sequence[str], sample: int, tokens: Any,
              generated: Optional[Sequence[str]], images: Sequence[Any], labels: Labels,
              boxes: Optional[Tensor]) -> Dict[str, Any]:
    """Everything the page shows, JSON-able; checks the explanations agree and the labels fit."""
    _check_alike(explanations, names)
    first = explanations[0]
    if not 0 <= sample < first.target.shape[0]:
        raise ValueError(f"sample {sample} is outside the batch of {first.target.shape[0]}.")
    _check_boxes(first, boxes)
    slots = _elements(first, sample)
    if not slots:
        raise ValueError(f"Sample {sample} has no explained element (no detection kept, no generated token).")
    strips, grids = _output_layout(first, sample, slots[0])
    values = {name: [_values(e, sample, slot, strips, grids, len(slots)) for slot in slots]
              for e, name in zip(explanations, names)}
    example = values[names[0]][0]
    index = (sample,) if slots[0] is None else (sample, slots[0])
    maps = [(name, list(grid.shape)) for name in grids for grid in _grids(first.relevance[name][index])]
    shapes = [shape for _, shape in maps]
    if images and len(images) != len(shapes):
        _drop_missing_images(values, len(images), len(shapes))
        shapes = shapes[: len(images)]
    generated_labels = _generated_labels(first, sample, slots, generated)
    strip_data = [{"name": name, "scale": "text" if name in _TEXT_SCALE else name, "causal": name == "generated",
                   "labels": generated_labels if name == "generated" else _strip_labels(name, len(example["strips"][name]), tokens)}
                  for name in strips]
    for strip in strip_data:
        _collapse_silent_runs(strip, [element["strips"] for elements in values.values() for element in elements])
    return {
        "methods": list(names), "kind": _kind(first), "values": values,
        "strips": strip_data,
        "images": [{"src": png_data_uri(images[position]) if images else None, "grid": shape, "scale": name}
                   for position, (name, shape) in enumerate(maps[: len(shapes)])],
        "elements": _element_info(first, sample, slots, labels, generated_labels, boxes),
        "masks": _all_masks(explanations, names, sample, slots, images, shapes),
    }


def _all_masks(explanations: Sequence[Explanation], names: Sequence[str], sample: int, slots: List[Optional[int]],
               images: Sequence[Any], shapes: List[List[int]]) -> Optional[Dict[str, List[str]]]:
    """DETR: each method's mask of each detection, at the image's size (16 pixels a cell without an image)."""
    if explanations[0].queries is None or "image" not in explanations[0].relevance:
        return None
    size = image_size(images[0]) if images else (shapes[0][0] * 16, shapes[0][1] * 16)
    return {name: _masks(e, sample, slots, size) for e, name in zip(explanations, names)}


def _check_boxes(explanation: Explanation, boxes: Optional[Tensor]) -> None:
    if boxes is None:
        return
    if explanation.queries is None:
        raise ValueError("boxes are drawn for DETR explanations only (explain returned no queries).")
    queries = int(explanation.queries.max()) + 1
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] < queries:
        raise ValueError(f"boxes must be the sample's pred_boxes [num_queries, 4] (at least {queries} queries), "
                         f"got shape {tuple(boxes.shape)}.")


def _kind(explanation: Explanation) -> str:
    if explanation.generated_ids is not None:
        return "generation"
    return "detection" if explanation.queries is not None else "classification"
