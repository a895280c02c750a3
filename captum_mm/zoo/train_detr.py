"""Seeded training of ``detr-shapes``: a small DETR (ResNet backbone, stride 16) trained from
scratch on synthetic shape scenes, scored with pycocotools' bbox AP on the validation scenes
(``captum-mm train detr-shapes``; its recipe in :mod:`captum_mm.zoo.recipes`)."""

import contextlib
import io
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, cast

import torch
from torch import nn

from captum_mm.datasets import write_shapes_coco
from captum_mm.zoo.model_recipe import Recipe
from captum_mm.zoo.training import cosine_schedule, save_checkpoint

if TYPE_CHECKING:
    from pycocotools.coco import COCO
    from transformers import DetrForObjectDetection
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

#: Fixed subset on which tests check that the checkpoint still reaches its recorded quality.
DETR_CHECK_SCENES = 60
DETR_IMAGE_SIZE = 128
DETR_SPLITS = {"train": (2000, 0), "val": (200, 100_000)}  # scene count, first seed


def detr_model() -> nn.Module:
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    # the keywords mypy does not see are taken through PretrainedConfig's **kwargs
    backbone = ResNetConfig(  # type: ignore[call-arg]
        num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1],
        layer_type="basic", out_features=["stage3"],
    )
    config = DetrConfig(  # type: ignore[call-arg]
        backbone_config=backbone, use_pretrained_backbone=False, use_timm_backbone=False, d_model=128,
        encoder_layers=3, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=256, decoder_ffn_dim=256, num_queries=12, num_labels=5, auxiliary_loss=True,
        id2label={0: "N/A", 1: "rectangle", 2: "circle", 3: "triangle", 4: "ellipse"},
    )
    return DetrForObjectDetection(config)


def detr_processor() -> "DetrImageProcessorPil":
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    return DetrImageProcessorPil(size={"shortest_edge": DETR_IMAGE_SIZE, "longest_edge": DETR_IMAGE_SIZE})


def shape_scenes(folder: Path, limit: Optional[int] = None) -> Dict[str, Path]:
    """The fixed train/validation split of synthetic scenes (the first ``limit`` of each), written once under ``folder``."""
    paths = {}
    for split, (count, seed) in DETR_SPLITS.items():
        path = Path(folder) / f"{split}.json"
        count = count if limit is None else min(count, limit)
        paths[split] = path if path.exists() else write_shapes_coco(folder, count, seed, DETR_IMAGE_SIZE, split)
    return paths


def _detr_targets(coco: "COCO", image_ids: List[int], size: int) -> List[Dict[str, torch.Tensor]]:
    targets = []
    for image_id in image_ids:
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32) / size
        boxes = torch.cat([boxes[:, :2] + boxes[:, 2:] / 2, boxes[:, 2:]], 1)  # cx, cy, w, h
        labels = torch.tensor([a["category_id"] for a in annotations])
        targets.append({"class_labels": labels, "boxes": boxes})
    return targets


def _pixels(coco: "COCO", folder: Path, image_ids: List[int], processor: "DetrImageProcessorPil") -> torch.Tensor:
    from PIL import Image

    images = [Image.open(folder / coco.imgs[i]["file_name"]).convert("RGB") for i in image_ids]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def detr_box_ap(
    model: nn.Module, coco: "COCO", folder: Path, processor: "DetrImageProcessorPil", limit: Optional[int] = None, batch_size: int = 32
) -> Dict[str, float]:
    """pycocotools bbox AP and AP50 of ``model`` on the scenes of ``coco`` (the first ``limit`` ones)."""
    from pycocotools.cocoeval import COCOeval

    image_ids, results = sorted(coco.getImgIds())[:limit], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(image_ids), batch_size):
            chunk = image_ids[start : start + batch_size]
            output = model(pixel_values=_pixels(coco, folder, chunk, processor))
            scores, labels = output.logits.softmax(-1)[..., :-1].max(-1)
            for image_id, boxes, score_row, label_row in zip(chunk, output.pred_boxes, scores, labels):
                size = coco.imgs[image_id]["width"]
                xywh = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, 2:]], 1) * size
                for box, score, label in zip(xywh.tolist(), score_row.tolist(), label_row.tolist()):
                    results.append({"image_id": image_id, "category_id": label, "bbox": box, "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluation.params.imgIds = image_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"bbox_AP": float(evaluation.stats[0]), "bbox_AP50": float(evaluation.stats[1])}


def calibrate_backbone(model: nn.Module, pixels: torch.Tensor) -> None:
    """Data-dependent statistics for DETR's frozen batch norms: each is set to the channel mean and
    variance of its input on ``pixels`` (from scratch, their identity defaults leave the ResNet
    unnormalised)."""
    from transformers.models.detr.modeling_detr import DetrFrozenBatchNorm2d

    def calibrate(module: DetrFrozenBatchNorm2d, args: Tuple[torch.Tensor, ...]) -> None:
        module.running_mean.copy_(args[0].mean((0, 2, 3)))
        module.running_var.copy_(args[0].var((0, 2, 3)))

    norms = [m for m in model.modules() if isinstance(m, DetrFrozenBatchNorm2d)]
    handles = [norm.register_forward_pre_hook(calibrate) for norm in norms]
    try:
        with torch.no_grad():
            cast("DetrForObjectDetection", model).model.backbone(pixels, torch.ones(pixels.shape[0], *pixels.shape[-2:], dtype=torch.long))
    finally:
        for handle in handles:
            handle.remove()


def train_detr(
    recipe: "Recipe", output: Path, seed: int = 0, epochs: Optional[int] = None, batch_size: int = 16, lr: float = 5e-4,
    clip: float = 1.0, limit: Optional[int] = None,
) -> Dict[str, Any]:
    """Train ``recipe``'s DETR on the synthetic train scenes, save it and return its validation bbox AP.

    ``limit`` uses only the first ``limit`` scenes of each split (a quick check of the recipe).
    """
    import tempfile

    with tempfile.TemporaryDirectory() as scenes:
        return _train_detr(recipe, output, Path(scenes), seed, epochs or recipe.epochs, batch_size, lr, clip, limit)


def _train_detr(
    recipe: "Recipe", output: Path, scenes: Path, seed: int, epochs: int, batch_size: int, lr: float, clip: float,
    limit: Optional[int],
) -> Dict[str, Any]:
    from pycocotools.coco import COCO

    torch.manual_seed(seed)
    started = time.perf_counter()
    paths = shape_scenes(scenes, limit)
    with contextlib.redirect_stdout(io.StringIO()):
        train, val = COCO(str(paths["train"])), COCO(str(paths["val"]))
    processor, model = detr_processor(), recipe.build()
    model.requires_grad_(True)  # HF freezes the stem and first stage, meant for pretrained backbones
    image_ids = sorted(train.getImgIds())
    pixels = _pixels(train, Path(scenes) / "train", image_ids, processor)
    targets = _detr_targets(train, image_ids, DETR_IMAGE_SIZE)
    calibration = pixels[torch.randperm(len(image_ids), generator=torch.Generator().manual_seed(seed))[:64]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(image_ids) / batch_size)
    scheduler = cosine_schedule(optimizer, epochs * steps_per_epoch, warmup=steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        calibrate_backbone(model, calibration)
        model.train()
        order = torch.randperm(len(image_ids), generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            loss = model(pixel_values=pixels[rows], labels=[targets[int(r)] for r in rows]).loss
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            scheduler.step()
        print(f"{recipe.name} epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}", flush=True)
        if (epoch + 1) % 10 == 0:
            print(f"  validation {detr_box_ap(model, val, Path(scenes) / 'val', processor)}", flush=True)
    calibrate_backbone(model, calibration)
    cast("DetrForObjectDetection", model).config.auxiliary_loss = False
    quality: Dict[str, Any] = detr_box_ap(model, val, Path(scenes) / "val", processor)
    quality["check_subset_AP50"] = detr_box_ap(model, val, Path(scenes) / "val", processor, DETR_CHECK_SCENES)["bbox_AP50"]
    quality.update(train_seconds=round(time.perf_counter() - started, 1), seed=seed, epochs=epochs, lr=lr, clip=clip,
                   torch_threads=torch.get_num_threads(), limit=limit)
    save_checkpoint(model, output, quality)
    processor.save_pretrained(output)
    return quality

