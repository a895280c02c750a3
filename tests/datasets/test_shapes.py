"""Synthetic shape scenes: masks match the pixels, the COCO json is valid for pycocotools."""

import numpy as np
from pycocotools.coco import COCO

from captum_mm.datasets import CATEGORIES, shapes_scene, write_shapes_coco


def test_masks_partition_the_painted_pixels():
    for seed in range(20):
        image, objects = shapes_scene(seed, size=96)
        assert 2 <= len(objects) <= 4 and all(name in CATEGORIES for name, _ in objects)
        masks = np.stack([mask for _, mask in objects])
        assert (masks.sum(0) <= 1).all()  # shapes never overlap
        assert np.array_equal(masks.any(0), (image != 255).any(-1))
        for _, mask in objects:
            assert len(np.unique(image[mask], axis=0)) == 1  # one colour per shape


def test_coco_json_round_trips(tmp_path):
    path = write_shapes_coco(tmp_path, 4, seed=10, size=64, split="train")
    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == [1, 2, 3, 4] and len(list((tmp_path / "train").glob("*.png"))) == 4
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
    for image_id in coco.getImgIds():
        _, objects = shapes_scene(10 + image_id, size=64)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert len(annotations) == len(objects)
        for annotation, (name, mask) in zip(annotations, objects):
            assert np.array_equal(coco.annToMask(annotation).astype(bool), mask)
            assert annotation["category_id"] == CATEGORIES.index(name) + 1
            assert annotation["area"] == mask.sum()
            x, y, w, h = annotation["bbox"]
            rows, cols = np.nonzero(mask)
            assert (x, y, w, h) == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
