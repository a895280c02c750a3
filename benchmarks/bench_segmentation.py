"""The segmentation evaluator with all kept queries from one forward against one query at a time.

    python -m benchmarks.bench_segmentation [--quick]

DETR with a ResNet-50-sized backbone, 6+6 layers and 10 queries (random weights, every
query kept), on synthetic 256 x 256 scenes; images per second of the whole evaluator step
(forward, explanation, Algorithm 1 masks, COCO results).
"""

import tempfile

from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

from benchmarks._measure import benchmark_arguments, median_seconds
from captum_mm.attr import GenericAttention
from captum_mm.datasets import write_shapes_coco
from captum_mm.metrics.segmentation import SegmentationEvaluator


def detr(quick: bool):
    backbone = ResNetConfig(
        embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[1, 1, 1, 1] if quick else [3, 4, 6, 3],
        layer_type="bottleneck", out_features=["stage4"],
    )
    layers = dict(encoder_layers=2, decoder_layers=2) if quick else {}
    config = DetrConfig(backbone_config=backbone, use_pretrained_backbone=False, use_timm_backbone=False, num_queries=10, num_labels=5, **layers)
    return DetrForObjectDetection(config).eval()


def main() -> None:
    args = benchmark_arguments(__doc__.splitlines()[0], "a smaller DETR")
    model = detr(args.quick)
    processor = DetrImageProcessorPil(size={"shortest_edge": 256, "longest_edge": 256})
    explainer = GenericAttention(model)
    with tempfile.TemporaryDirectory() as folder:
        annotations = write_shapes_coco(folder, 4, seed=0, size=256)
        images = [1, 2, 3, 4]
        rates = {}
        for name, per_pass in (("all kept queries from one forward", None), ("one query at a time", 1)):
            evaluator = SegmentationEvaluator(model, processor, f"{folder}/val", annotations, threshold=0.0, queries_per_pass=per_pass)
            rates[name] = len(images) / median_seconds(lambda: evaluator.detections(explainer, images), repeats=2)
    for name, rate in rates.items():
        print(f"{name:36s} {rate:6.2f} images/s")
    batched, looped = rates.values()
    print(f"{'ratio':36s} {batched / looped:6.2f}")


if __name__ == "__main__":
    main()
