"""Weakly-supervised segmentation with DETR (Chefer, Gur & Wolf, ICCV 2021, supplementary Algorithm 1).

Each detection's relevance map on the backbone's feature grid becomes a mask:
min-max to [0, 255] (truncated to integers), Otsu's threshold, bilinear upsampling
to the target mask size, ``sigmoid > 0.5``, crop to the image's own area, nearest
upsampling to the original image size. Queries not kept get empty masks. Masks are
scored as COCO instance segmentation with an unmodified ``pycocotools.COCOeval``,
on COCO's IoU grid and on the paper's 0.20:0.05:0.95 grid (set through
``COCOeval.params``).
"""

import contextlib
import io
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from skimage.filters import threshold_otsu
from torch import Tensor

from captum_mm.metrics.distributed import gather, is_main_process, shard

Size = Tuple[int, int]

IOU_GRIDS = {
    "coco": np.linspace(0.5, 0.95, 10),
    "paper": np.linspace(0.2, 0.95, 16),
}


def scale_to_uint8(relevance: Tensor) -> np.ndarray:
    """Algorithm 1, min-max step: ``(r - min) / (max - min) * 255`` truncated to uint8 (all 0 if constant)."""
    values = relevance.detach().double().cpu().numpy()
    spread = values.max() - values.min()
    if spread == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return ((values - values.min()) / spread * 255).astype(np.uint8)


def otsu_foreground(image: np.ndarray) -> np.ndarray:
    """Algorithm 1, line 7: 255 where the value exceeds Otsu's threshold, else 0."""
    if image.min() == image.max():
        return np.zeros(image.shape, dtype=np.float32)
    return np.where(image > threshold_otsu(image), 255.0, 0.0).astype(np.float32)


def upsample_masks(maps: Tensor, target_size: Size, crop_size: Size, original_size: Size) -> Tensor:
    """Algorithm 1, lines 8-10: ``[K, h, w]`` maps to ``[K, H, W]`` boolean masks.

    Bilinear to ``target_size`` (the padded batch's pixel size), ``sigmoid > 0.5``,
    crop to ``crop_size`` (the image's own area in it), nearest to ``original_size``.
    """
    if maps.shape[0] == 0:
        return torch.zeros(0, *original_size, dtype=torch.bool)
    upsampled = F.interpolate(maps[:, None].float(), size=target_size, mode="bilinear", align_corners=False)
    masks = (upsampled.sigmoid() > 0.5)[:, :, : crop_size[0], : crop_size[1]]
    return F.interpolate(masks.float(), size=original_size, mode="nearest")[:, 0].bool()


def relevance_to_masks(
    relevance: Tensor, keep: Tensor, target_size: Size, crop_size: Size, original_size: Size
) -> Tensor:
    """Algorithm 1 for every query: ``[Q, h, w]`` relevance and ``[Q]`` kept flags to ``[Q, H, W]`` masks.

    Queries not kept start at -1 (an empty mask after the sigmoid), as in the reference.
    """
    maps = torch.full(relevance.shape, -1.0)
    for query in torch.nonzero(keep).flatten().tolist():
        maps[query] = torch.from_numpy(otsu_foreground(scale_to_uint8(relevance[query])))
    return upsample_masks(maps, target_size, crop_size, original_size)


def detections(
    image_id: int, masks: Tensor, scores: Tensor, labels: Tensor, category_ids: Optional[Mapping[int, int]] = None
) -> List[Dict[str, Any]]:
    """COCO results (RLE segmentations) for one image's queries."""
    results = []
    for mask, score, label in zip(masks.numpy().astype(np.uint8), scores.tolist(), labels.tolist()):
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        category = category_ids[label] if category_ids is not None else label
        results.append({"image_id": image_id, "category_id": int(category), "segmentation": rle, "score": float(score)})
    return results


STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR", "AR_small", "AR_medium", "AR_large",
)


def _summary(evaluation: COCOeval) -> Dict[str, float]:
    """COCO's twelve summary numbers, computed from ``evaluation.eval`` for any IoU grid."""
    params, precision, recall = evaluation.params, evaluation.eval["precision"], evaluation.eval["recall"]

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    def pick(array, area="all", detections=100, iou=None):
        a, m = params.areaRngLbl.index(area), params.maxDets.index(detections)
        selected = array[..., a, m]
        if iou is not None:
            selected = selected[np.isclose(params.iouThrs, iou)]
        return mean(selected)

    values = [
        pick(precision), pick(precision, iou=0.5), pick(precision, iou=0.75),
        pick(precision, "small"), pick(precision, "medium"), pick(precision, "large"),
        pick(recall, detections=1), pick(recall, detections=10), pick(recall),
        pick(recall, "small"), pick(recall, "medium"), pick(recall, "large"),
    ]
    return dict(zip(STAT_NAMES, values))


def evaluate_masks(coco: COCO, results: Sequence[Dict[str, Any]], image_ids: Sequence[int]) -> Dict[str, Dict[str, float]]:
    """COCO ``segm`` evaluation of ``results`` on ``image_ids``, once per IoU grid of :data:`IOU_GRIDS`."""
    if not results:
        return {grid: dict.fromkeys(STAT_NAMES, 0.0) for grid in IOU_GRIDS}
    with contextlib.redirect_stdout(io.StringIO()):
        predictions = coco.loadRes(list(results))
        summaries = {}
        for grid, thresholds in IOU_GRIDS.items():
            evaluation = COCOeval(coco, predictions, "segm")
            evaluation.params.imgIds = list(image_ids)
            evaluation.params.iouThrs = thresholds
            evaluation.evaluate()
            evaluation.accumulate()
            summaries[grid] = _summary(evaluation)
    return summaries


def _processed_sizes(pixel_mask: Tensor) -> List[Size]:
    """Height and width of each image inside the padded batch."""
    return [(int(mask.any(1).sum()), int(mask.any(0).sum())) for mask in pixel_mask.bool()]


class SegmentationEvaluator:
    r"""
    The paper's DETR segmentation test on a COCO-format dataset, for any captum_mm explainer.

    Args:
        model (DetrForObjectDetection): The detector (any checkpoint, e.g. from disk).
        processor (Callable): Its image processor (e.g. ``DetrImageProcessorPil``),
                    called as ``processor(images=[PIL images], return_tensors="pt")``.
        images (str or Path): Folder of the images named in the annotations.
        annotations (str or Path): COCO instances json (with segmentations).
        threshold (float, optional): Queries whose best class probability ("no object"
                    excluded) exceeds it are explained (Algorithm 1). Default: 0.5
        category_ids (Mapping[int, int], optional): Model label to COCO category id.
                    Default: None (identity, as for COCO-trained DETR)
        queries_per_pass (int, optional): Explain at most this many queries per image
                    from one forward (1: one forward per query). Default: None (all
                    kept queries of a batch from one forward)

    Examples::

        >>> evaluator = SegmentationEvaluator(model, processor, "val2017", "instances_val2017.json")
        >>> scores = evaluator.evaluate({"ours": GenericAttention, "rollout": AttentionRollout})
        >>> print(format_table(scores))
    """

    def __init__(
        self, model, processor, images, annotations, threshold: float = 0.5, category_ids=None, queries_per_pass=None
    ) -> None:
        from pathlib import Path

        from transformers import DetrForObjectDetection

        if not isinstance(model, DetrForObjectDetection):
            raise TypeError(f"The segmentation test needs a DetrForObjectDetection, got a {type(model).__name__}.")
        self.images, annotations = Path(images), Path(annotations)
        for path, what in ((self.images, "image folder"), (annotations, "annotations file")):
            if not path.exists():
                raise FileNotFoundError(f"The {what} {path} does not exist.")
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(annotations))
        self.model, self.processor, self.threshold, self.category_ids = model, processor, threshold, category_ids
        self.queries_per_pass = queries_per_pass

    def image_ids(self, image_ids: Optional[Sequence[int]] = None, limit: Optional[int] = None) -> List[int]:
        """The images to evaluate (all annotated ones by default), checked against the annotations."""
        known = sorted(self.coco.getImgIds())
        if image_ids is None:
            return known[:limit] if limit is not None else known
        unknown = sorted(set(image_ids) - set(known))
        if unknown:
            raise ValueError(f"Image ids {unknown[:10]} are not in the annotations ({len(known)} images there).")
        return list(image_ids)

    def load_images(self, image_ids: Sequence[int]):
        """The PIL images of ``image_ids``."""
        from PIL import Image

        images = []
        for image_id in image_ids:
            path = self.images / self.coco.imgs[image_id]["file_name"]
            if not path.exists():
                raise FileNotFoundError(f"Image {image_id} is annotated but its file {path} is missing.")
            images.append(Image.open(path).convert("RGB"))
        return images

    def detections(self, explainer, image_ids: Sequence[int]) -> List[Dict[str, Any]]:
        """COCO results of one batch of images: every query, masks from ``explainer``'s relevance."""
        images = self.load_images(image_ids)
        inputs = self.processor(images=images, return_tensors="pt")
        pixels, pixel_mask = inputs["pixel_values"], inputs["pixel_mask"]
        with torch.no_grad():
            logits = self.model(pixel_values=pixels, pixel_mask=pixel_mask).logits
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)
        keep = scores > self.threshold
        relevance = self.relevance(explainer, pixels, pixel_mask, keep)
        results = []
        for index, (image_id, image) in enumerate(zip(image_ids, images)):
            masks = relevance_to_masks(
                relevance[index], keep[index], tuple(pixels.shape[-2:]), _processed_sizes(pixel_mask)[index],
                (image.height, image.width),
            )
            results += detections(image_id, masks, scores[index], labels[index], self.category_ids)
        return results

    def relevance(self, explainer, pixels: Tensor, pixel_mask: Tensor, keep: Tensor) -> Tensor:
        """``[B, Q, h, w]`` relevance of the kept queries (zero elsewhere), ``queries_per_pass`` at a time."""
        queries = [torch.nonzero(row).flatten().tolist() for row in keep]
        step = self.queries_per_pass or max([len(row) for row in queries] + [1])
        relevance: Optional[Tensor] = None
        for start in range(0, max([len(row) for row in queries] + [1]), step):
            chunk = [row[start : start + step] for row in queries]
            explanation = explainer.explain(pixels, chunk, (pixel_mask,))
            if relevance is None:
                relevance = torch.zeros(*keep.shape, *explanation.image.shape[-2:])
            for index, row in enumerate(chunk):
                for slot, query in enumerate(row):
                    relevance[index, query] = explanation.image[index, slot].detach().cpu()
        assert relevance is not None  # the loop runs at least once
        return relevance

    def evaluate(
        self,
        methods: Mapping[str, Any],
        image_ids: Optional[Sequence[int]] = None,
        batch_size: int = 4,
        progress: bool = True,
    ) -> Optional[Dict[str, Dict[str, Dict[str, float]]]]:
        """COCO ``segm`` scores per method and IoU grid: ``{method: {"coco"|"paper": {stat: value}}}``.

        ``methods`` maps names to explainer factories ``factory(model)`` (e.g. captum_mm classes or
        ``functools.partial(GenericAttention, normalize=False)``). Under ``torchrun`` the image
        batches are dealt to the ranks and the detections gathered on rank 0, which alone
        returns the scores.
        """
        from tqdm.auto import tqdm

        image_ids = self.image_ids(image_ids)
        batches = [image_ids[start : start + batch_size] for start in range(0, len(image_ids), batch_size)]
        scores = {}
        for name, factory in methods.items():
            explainer = factory(self.model)
            local = {}
            for position, batch in tqdm(shard(batches), disable=not progress or not is_main_process(), desc=name):
                local[position] = self.detections(explainer, batch)
            per_batch = gather(local)
            if per_batch is not None:
                scores[name] = evaluate_masks(self.coco, [result for part in per_batch for result in part], image_ids)
        return scores if is_main_process() else None


TABLE_ROWS = ("AP", "AP_medium", "AP_large", "AR", "AR_medium", "AR_large")


def format_table(scores: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Supplementary Table 1's layout: one column per method, rows per IoU grid (values in %)."""
    methods = list(scores)
    width = max([12] + [len(name) for name in methods])
    lines = []
    for grid in IOU_GRIDS:
        title = "IoU 0.50:0.05:0.95 (COCO)" if grid == "coco" else "IoU 0.20:0.05:0.95 (paper)"
        lines.append(title)
        lines.append(" " * 10 + "".join(name.rjust(width + 2) for name in methods))
        for row in TABLE_ROWS:
            lines.append(row.ljust(10) + "".join(f"{100 * scores[m][grid][row]:.1f}".rjust(width + 2) for m in methods))
        lines.append("")
    return "\n".join(lines).rstrip()
