"""A small perturbation study, run alone or under torchrun (tests/metrics/test_study.py)."""

import sys

import torch

from captum_mm.attr import GenericAttention, RawAttention
from captum_mm.metrics import LXMERT_IMAGE, LXMERT_TEXT
from captum_mm.metrics.distributed import init_distributed
from captum_mm.metrics.study import attention_method, pad_collate, run_perturbation_study, vqa_settings
from transformers import LxmertConfig, LxmertForQuestionAnswering


def build():
    torch.manual_seed(0)
    config = LxmertConfig(vocab_size=60, hidden_size=32, num_attention_heads=4, intermediate_size=37, l_layers=1,
                          r_layers=1, x_layers=2, visual_feat_dim=12, num_qa_labels=5)
    model = LxmertForQuestionAnswering(config).eval()
    dataset = []
    for index in range(11):
        length = 4 + index % 3
        dataset.append({
            "input_ids": torch.randint(1, 60, (length,)), "attention_mask": torch.ones(length, dtype=torch.long),
            "visual_feats": torch.randn(6, 12), "visual_pos": torch.rand(6, 4), "answer_scores": torch.rand(5).round(),
        })
    return model, dataset


def main(output):
    torch.set_num_threads(1)
    init_distributed()
    model, dataset = build()
    methods = {"generic": attention_method(GenericAttention, model), "raw": attention_method(RawAttention, model)}
    settings = vqa_settings(LXMERT_TEXT, LXMERT_IMAGE, (0.0, 0.5, 1.0), (0.0, 0.25, 0.5, 1.0))
    result = run_perturbation_study(model, dataset, pad_collate, methods, settings, num_samples=9, seed=3, batch_size=2, progress=False)
    if result is not None:
        result.save(output)


if __name__ == "__main__":
    main(sys.argv[1])
