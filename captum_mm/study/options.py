"""What ``captum-mm reproduce`` runs: the models, methods, sample counts and data of the main job."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence

from captum_mm.attr.catalog import select_methods
from captum_mm.zoo.model_recipe import SHAPE_SCENES
from captum_mm.zoo.recipes import RECIPES


@dataclass
class Options:
    r"""
    What ``captum-mm reproduce`` runs (defaults finish in minutes on 2 CPU cores); checked when made.

    Attributes:
        output (Path): The folder of the report, ``results.json``, the tables and each model's figures.
        models (sequence of str): Shipped models to study, in order. Default: all of them
        methods (sequence of str, optional): Methods and ablations by name or alias. Default: None (all:
                    :func:`~captum_mm.attr.catalog.study_methods`)
        samples (int): easy-VQA test questions per VQA model (a quarter for the generative VLM), synthetic test
                    reviews for the text classifier.
        images (int): Scenes of the segmentation test.
        gallery (int): Questions in each gallery (half as many DETR scenes, at least one).
        seed (int): Seed of the sample selection.
        checkpoints (dict): Model name to the user's checkpoint replacing the shipped one.
        images_dir (str, optional): The user's COCO-format images for the segmentation test (with ``annotations``).
        annotations (str, optional): Their COCO annotations file.
        progress (bool): Show progress bars.
    """

    output: Path = Path("captum_mm_output")
    models: Sequence[str] = tuple(RECIPES)
    methods: Optional[Sequence[str]] = None
    samples: int = 32
    images: int = 100
    gallery: int = 4
    seed: int = 0
    checkpoints: Dict[str, str] = field(default_factory=dict)
    images_dir: Optional[str] = None
    annotations: Optional[str] = None
    progress: bool = True

    def __post_init__(self) -> None:
        counts = {"samples": self.samples, "images": self.images, "gallery": self.gallery}
        if any(count < 1 for count in counts.values()):
            raise ValueError(f"samples, images and gallery must be positive counts, got {counts}.")
        unknown = [name for name in self.models if name not in RECIPES]
        if unknown:
            raise ValueError(f"Unknown models {unknown}; the main job runs {', '.join(RECIPES)}.")
        select_methods(self.methods)
        stray = [name for name in self.checkpoints if name not in self.models]
        if stray:
            raise ValueError(f"Checkpoints given for {stray}, which are not among the models run ({', '.join(self.models)}).")
        if (self.images_dir is None) != (self.annotations is None):
            raise ValueError("Give both images_dir and annotations (a COCO-format dataset for DETR), or neither.")
        on_scenes = [name for name, recipe in RECIPES.items() if recipe.dataset == SHAPE_SCENES]
        if self.images_dir is not None and not set(on_scenes) & set(self.models):
            raise ValueError(
                f"images_dir/annotations replace the {SHAPE_SCENES} of the segmentation test, "
                f"but {' or '.join(on_scenes)} is not run."
            )
