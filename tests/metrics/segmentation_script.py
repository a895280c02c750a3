"""A small segmentation evaluation, run alone or under torchrun (tests/metrics/test_segmentation_distributed.py)."""

import json
import sys
from pathlib import Path

import torch
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

from captum_mm.attr import GenericAttention
from captum_mm.metrics.segmentation import SegmentationEvaluator
from captum_mm.metrics.distributed import init_distributed


def main(folder, output):
    torch.set_num_threads(1)
    init_distributed()
    torch.manual_seed(0)
    backbone = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], out_features=["stage4"])
    config = DetrConfig(backbone_config=backbone, use_pretrained_backbone=False, use_timm_backbone=False, d_model=16,
                        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5, num_labels=5)
    model = DetrForObjectDetection(config).eval()
    processor = DetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})
    evaluator = SegmentationEvaluator(model, processor, Path(folder) / "val", Path(folder) / "val.json", threshold=0.0)
    scores = evaluator.evaluate({"ours": GenericAttention}, batch_size=2, progress=False)
    if scores is not None:
        Path(output).write_text(json.dumps(scores))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
