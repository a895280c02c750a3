"""Synthetic detection scenes from ``skimage.draw.random_shapes``, written as a COCO dataset.

Each scene holds several non-overlapping shapes of random colours on a white
background; an object's mask is recovered from the pixels (its bounding box, its
own colour), and written with its box as a COCO instance annotation (RLE).
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
from pycocotools import mask as mask_utils
from skimage.draw import random_shapes

CATEGORIES = ("rectangle", "circle", "triangle", "ellipse")
BACKGROUND = 255


def shapes_scene(seed: int, size: int = 128, min_shapes: int = 2, max_shapes: int = 4) -> Tuple[np.ndarray, List[Tuple[str, np.ndarray]]]:
    """One synthetic scene of non-overlapping shapes (``skimage.draw.random_shapes``).

    Args:
        seed (int): Its random seed.
        size (int, optional): Height and width in pixels. Default: 128
        min_shapes (int, optional): Fewest shapes. Default: 2
        max_shapes (int, optional): Most shapes. Default: 4

    Returns:
        *tuple*: The ``[size, size, 3]`` uint8 image and its ``(category, mask)`` objects.
    """
    image, labels = random_shapes(
        (size, size), max_shapes=max_shapes, min_shapes=min_shapes, min_size=size // 6, max_size=size // 2,
        intensity_range=((0, 200),) * 3, rng=seed,
    )
    objects = []
    for name, ((top, bottom), (left, right)) in labels:
        box = np.zeros((size, size), dtype=bool)
        box[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)] = True  # triangles may leave the image
        painted = box & (image != BACKGROUND).any(-1)
        if not painted.any():
            continue
        colours, counts = np.unique(image[painted], axis=0, return_counts=True)
        own = (image == colours[counts.argmax()]).all(-1)
        objects.append((name, painted & own))
    return image, objects


def _annotation(index: int, image_id: int, category: str, mask: np.ndarray) -> Dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    area, box = float(mask_utils.area(rle)), [float(v) for v in mask_utils.toBbox(rle)]
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "id": index, "image_id": image_id, "category_id": CATEGORIES.index(category) + 1, "iscrowd": 0,
        "segmentation": rle, "area": area, "bbox": box,
    }


def write_shapes_coco(folder, count: int, seed: int, size: int = 128, split: str = "val") -> Path:
    """Write scenes as COCO-format data: ``folder/split/*.png`` and ``folder/split.json`` with masks.

    Scene ``k`` uses seed ``seed + k``, so splits written with disjoint seed ranges never share a scene.

    Args:
        folder (str or Path): Where to write.
        count (int): How many scenes.
        seed (int): The first scene's seed.
        size (int, optional): Image size in pixels. Default: 128
        split (str, optional): The split's name. Default: "val"

    Returns:
        *Path*: The json's path.
    """
    from PIL import Image

    folder = Path(folder)
    images_dir = folder / split
    images_dir.mkdir(parents=True, exist_ok=True)
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for image_id in range(1, count + 1):
        image, objects = shapes_scene(seed + image_id, size)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(image).save(images_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        for category, mask in objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, category, mask))
    categories = [{"id": index + 1, "name": name, "supercategory": "shape"} for index, name in enumerate(CATEGORIES)]
    path = folder / f"{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
