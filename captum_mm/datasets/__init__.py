"""Datasets for the shipped models and the main job."""

from captum_mm.datasets.shapes import CATEGORIES, shapes_scene, write_shapes_coco

__all__ = ["CATEGORIES", "shapes_scene", "write_shapes_coco"]
