"""GenericAttention's cost against a plain forward+backward of the same batch, as ratios in one run.

    python -m benchmarks.bench_generic          # the table
    python -m benchmarks.bench_generic --quick  # smaller models, to check the script runs

LXMERT of the released size (hidden 768, 12 heads, 9/5/5 layers, 20 tokens, 36 regions,
random weights) at batch 1 and 16, and DETR (ResNet-50-sized backbone, 6+6 layers, 100
queries) explaining 10 queries from one forward against one query at a time (and, for
information, the vectorised backward against one backward per query over that forward).
"""

import argparse
import json
import os

import torch
from transformers import DetrConfig, DetrForObjectDetection, LxmertConfig, LxmertForQuestionAnswering, ResNetConfig

from benchmarks._measure import median_seconds, peak_growth_in_subprocess, peak_kib, resident_kib
from captum_mm.attr import GenericAttention

TOKENS, REGIONS = 20, 36


def lxmert(quick: bool):
    size = dict(hidden_size=128, num_attention_heads=4, intermediate_size=256, l_layers=2, r_layers=1, x_layers=2) if quick else {}
    config = LxmertConfig(num_qa_labels=3129, **size)  # defaults: 768 hidden, 12 heads, 9/5/5 layers
    return LxmertForQuestionAnswering(config).eval()


def lxmert_inputs(model, batch: int):
    config = model.config
    ids = torch.randint(1000, config.vocab_size, (batch, TOKENS))
    feats, boxes = torch.randn(batch, REGIONS, config.visual_feat_dim), torch.rand(batch, REGIONS, 4)
    return (ids, feats, boxes), (torch.ones(batch, TOKENS, dtype=torch.long),)


def forward_backward(model, inputs, additional):
    logits = model(*inputs, *additional).question_answering_score
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    model.zero_grad(set_to_none=True)


def detr(quick: bool):
    backbone = ResNetConfig(
        embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], layer_type="bottleneck",
        out_features=["stage4"],
    )
    layers = dict(encoder_layers=2, decoder_layers=2, d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128) if quick else {}
    config = DetrConfig(backbone_config=backbone, use_pretrained_backbone=False, use_timm_backbone=False, num_queries=100, **layers)
    return DetrForObjectDetection(config).eval()


def memory_probe(kind: str, quick: bool, batch: int) -> None:
    torch.set_num_threads(1)
    model = lxmert(quick)
    inputs, additional = lxmert_inputs(model, batch)
    before = resident_kib()
    if kind == "plain":
        forward_backward(model, inputs, additional)
    else:
        GenericAttention(model).explain(inputs, None, additional)
    print(json.dumps({"growth_kib": peak_kib() - before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, to check the script runs")
    parser.add_argument("--memory-probe", nargs=2, metavar=("KIND", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe[0], args.quick, int(args.memory_probe[1]))
        return
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    torch.manual_seed(0)
    rows = []
    model = lxmert(args.quick)
    explainer = GenericAttention(model)
    per_sample = {}
    for batch in (1, 16):
        inputs, additional = lxmert_inputs(model, batch)
        plain = median_seconds(lambda: forward_backward(model, inputs, additional), repeats=3)
        explained = median_seconds(lambda: explainer.attribute(inputs, None, additional), repeats=3)
        per_sample[batch] = explained / batch
        rows.append((f"LXMERT attribute / forward+backward, batch {batch}", explained / plain, "<= 1.3"))
    rows.append(("LXMERT per-sample speed-up, batch 16 over batch 1", per_sample[1] / per_sample[16], "> 1"))
    quick = ["--quick"] if args.quick else []
    module = "benchmarks.bench_generic"
    plain_memory = peak_growth_in_subprocess(module, "plain", "16", *quick)
    explained_memory = peak_growth_in_subprocess(module, "explain", "16", *quick)
    rows.append(("LXMERT peak memory, explain / forward+backward, batch 16", explained_memory / plain_memory, "<= 1.3"))

    model = detr(args.quick)
    explainer = GenericAttention(model)
    pixels = torch.randn(1, 3, 512, 512)
    queries = list(range(10))
    batched = median_seconds(lambda: explainer.explain(pixels, [queries]), repeats=2)
    looped = median_seconds(lambda: [explainer.explain(pixels, [[q]]) for q in queries], repeats=2)
    rows.append(("DETR 10 queries: one at a time / batched", looped / batched, ">= 4"))
    explainer.vectorized_backward = True
    vectorized = median_seconds(lambda: explainer.explain(pixels, [queries]), repeats=2)
    rows.append(("DETR 10 queries: vectorised backward / backward per query", vectorized / batched, "info"))

    width = max(len(row[0]) for row in rows)
    print(f"{'measure'.ljust(width)}  ratio   goal")
    for name, ratio, goal in rows:
        print(f"{name.ljust(width)}  {ratio:6.2f}  {goal}")


if __name__ == "__main__":
    main()
