"""GenericAttention on long sequences against a plain SDPA forward+backward, lean and eager capture.

    python -m benchmarks.bench_long_context            # the table and benchmarks/long_context.png
    python -m benchmarks.bench_long_context --quick    # small sizes, to check the script runs

A ``LlamaForCausalLM`` of a small random config (hidden 256, 8 layers, 8 heads, 2 key/value heads,
LLaMA's 32,000-token vocabulary) at N = 256 ... 4096 tokens, batch 1, one explained generated token
(prompt of N - 1 tokens), and ViT-Base (random weights) at 224^2 and 448^2 images. For each size:
time and peak memory of ``GenericAttention.explain`` with lean capture (the default) and with the eager
path (``lean = False``), each divided by the model's own SDPA forward plus ``backward()`` of the
explained logit, and the fitted growth exponent of each time in N. Peak memory: the growth of the
resident set's high-water mark (VmHWM) of a fresh process running one measurement, after the model and
inputs are built.
"""

import argparse
import json
import os
import tempfile
from typing import Any, Dict, List, Tuple

import torch
from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTForImageClassification

from benchmarks._measure import median_seconds, peak_growth_in_subprocess, peak_kib, resident_kib
from captum_mm.attr import GenericAttention

LENGTHS, QUICK_LENGTHS = (256, 512, 1024, 2048, 4096), (64, 128)
IMAGES, QUICK_IMAGES = (224, 448), (32, 64)
KINDS = ("sdpa", "lean", "eager")


def llama(quick: bool) -> LlamaForCausalLM:
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=1000) if quick else dict(
        hidden_size=256, intermediate_size=688, num_hidden_layers=8, vocab_size=32000)
    config = LlamaConfig(num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=8192,
                         attn_implementation="sdpa", **size)
    return LlamaForCausalLM(config).eval()


def vit(quick: bool, image: int) -> ViTForImageClassification:
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=8) if quick else {}
    return ViTForImageClassification(ViTConfig(image_size=image, attn_implementation="sdpa", **size)).eval()


def workload(family: str, size: int, quick: bool) -> Tuple[Any, Dict[str, Any]]:
    """The model and what one measurement runs on: a prompt of ``size - 1`` tokens and one token, or an image."""
    if family == "llama":
        model = llama(quick)
        return model, {"input_ids": torch.randint(3, model.config.vocab_size, (1, size - 1)), "continuation": [[7]]}
    model = vit(quick, size)
    return model, {"pixel_values": torch.randn(1, 3, size, size)}


def run(kind: str, model: Any, work: Dict[str, Any]) -> None:
    """One measurement: the SDPA forward + backward of the explained logit, or the explanation."""
    if kind == "sdpa":
        if "continuation" in work:
            ids = work["input_ids"]
            logits = model(input_ids=torch.cat([ids, torch.tensor(work["continuation"], device=ids.device)], 1)).logits
            logits[0, -2, work["continuation"][0][0]].backward()
        else:
            logits = model(pixel_values=work["pixel_values"]).logits
            logits[0, logits[0].argmax()].backward()
        model.zero_grad(set_to_none=True)
        return
    explainer = GenericAttention(model)
    explainer.lean = kind == "lean"
    if "continuation" in work:
        explainer.explain({"input_ids": work["input_ids"]}, continuation=work["continuation"])
    else:
        explainer.explain(work["pixel_values"])


def memory_probe(kind: str, family: str, size: int, quick: bool) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, work = workload(family, size, quick)
    before = resident_kib()
    run(kind, model, work)
    print(json.dumps({"growth_kib": peak_kib() - before}))


def growth_exponent(sizes: List[int], values: List[float]) -> float:
    """The slope of log(value) against log(size), least squares."""
    x, y = torch.tensor(sizes, dtype=torch.float64).log(), torch.tensor(values, dtype=torch.float64).log()
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def measure(family: str, sizes: Tuple[int, ...], quick: bool) -> List[Dict[str, Any]]:
    rows = []
    for size in sizes:
        torch.manual_seed(0)
        model, work = workload(family, size, quick)
        repeats = 3 if size <= 1024 else 1
        times = {kind: median_seconds(lambda: run(kind, model, work), repeats=repeats) for kind in KINDS}
        extra = ["--quick"] if quick else []
        memory = {kind: peak_growth_in_subprocess("benchmarks.bench_long_context", kind, family, str(size), *extra)
                  for kind in KINDS}
        rows.append({"family": family, "size": size, "seconds": times, "peak_kib": memory})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(rows: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    llama_rows = [row for row in rows if row["family"] == "llama"]
    sizes = [row["size"] for row in llama_rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, label in ((axes[0], "seconds", "time (s)"), (axes[1], "peak_kib", "peak memory growth (MiB)")):
        for kind, style in zip(KINDS, ("k--", "C0o-", "C3s-")):
            scale = 1 / 1024 if key == "peak_kib" else 1
            axis.loglog(sizes, [row[key][kind] * scale for row in llama_rows], style, label=
                        {"sdpa": "SDPA forward+backward", "lean": "explain, lean", "eager": "explain, eager"}[kind])
        axis.set_xlabel("tokens N")
        axis.set_ylabel(label)
        axis.set_xticks(sizes, [str(size) for size in sizes])
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    figure.suptitle("GenericAttention on LlamaForCausalLM (hidden 256, 8 layers), one generated token, 1 CPU thread")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    parser.add_argument("--memory-probe", nargs=3, metavar=("KIND", "FAMILY", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        kind, family, size = args.memory_probe
        memory_probe(kind, family, int(size), args.quick)
        return
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    rows = measure("llama", QUICK_LENGTHS if args.quick else LENGTHS, args.quick)
    rows += measure("vit", QUICK_IMAGES if args.quick else IMAGES, args.quick)
    print("family  size   time lean/sdpa  eager/sdpa   memory lean/sdpa  eager/sdpa  eager/lean")
    for row in rows:
        t, m = row["seconds"], row["peak_kib"]
        print(f"{row['family']:6}  {row['size']:5}  {t['lean'] / t['sdpa']:14.2f}  {t['eager'] / t['sdpa']:10.2f}"
              f"  {m['lean'] / m['sdpa']:16.2f}  {m['eager'] / m['sdpa']:10.2f}  {m['eager'] / m['lean']:10.2f}")
    llama_rows = [row for row in rows if row["family"] == "llama"]
    sizes = [row["size"] for row in llama_rows]
    for kind in KINDS:
        print(f"growth exponent of {kind} time: {growth_exponent(sizes, [row['seconds'][kind] for row in llama_rows]):.2f}")
    folder = tempfile.gettempdir() if args.quick else os.path.dirname(__file__)
    with open(os.path.join(folder, "long_context.json"), "w") as results:
        json.dump(rows, results, indent=1)
    plot(rows, os.path.join(folder, "long_context.png"))
    print(f"results and plot: {folder}/long_context.json, .png")


if __name__ == "__main__":
    main()
