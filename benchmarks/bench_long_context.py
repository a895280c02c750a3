"""GenericAttention on long sequences against a plain SDPA forward+backward: streaming rows and stored maps.

    python -m benchmarks.bench_long_context                       # every size; the table and long_context.png
    python -m benchmarks.bench_long_context --lengths 4096 8192   # some sizes (merged into long_context.json)
    python -m benchmarks.bench_long_context --quick               # small sizes, to check the script runs

A ``LlamaForCausalLM`` of a small random config (hidden 256, 8 layers, 8 heads, 2 key/value heads,
LLaMA's 32,000-token vocabulary) at N = 4096 ... 32768 tokens, batch 1, explaining K = 1 and K = 16
generated tokens (a prompt of N - K tokens). For each size: time and peak memory of
``GenericAttention.explain`` with streaming rows (the default: no map kept), and, up to 8192 tokens and one
token, with stored maps (``streaming=False``: one ``[N, N]`` map per layer), each divided by the model's own
SDPA forward plus ``backward()`` of one explained logit, and the fitted growth exponent of each time in N.
Each measurement runs once in a fresh process, after the model and inputs are built: its wall time, its CPU time
(less disturbed by other jobs on a shared machine) and its peak memory, the growth of the resident set's high-water
mark (VmHWM); sizes up to 1024 also take the median wall time of three runs in one process.
"""

import argparse
import json
import os
import tempfile
import time
from typing import Any, Dict, List, Tuple

import torch
from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTForImageClassification

from benchmarks._measure import median_seconds, peak_kib, probe_in_subprocess, resident_kib
from captum_mm.attr import GenericAttention

LENGTHS, QUICK_LENGTHS = (4096, 8192, 16384, 32768), (64, 128)
TOKENS, QUICK_TOKENS = (1, 16), (1, 4)
#: Stored maps only where ``L`` maps of ``N^2`` floats fit beside the rest (and for one token).
STORED_UP_TO = 8192
IMAGES, QUICK_IMAGES = (224, 448), (32, 64)
KINDS = ("sdpa", "streaming", "stored")


def llama(quick: bool) -> LlamaForCausalLM:
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=1000) if quick else dict(
        hidden_size=256, intermediate_size=688, num_hidden_layers=8, vocab_size=32000)
    config = LlamaConfig(num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32768,
                         attn_implementation="sdpa", **size)
    return LlamaForCausalLM(config).eval()


def vit(quick: bool, image: int) -> ViTForImageClassification:
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=8) if quick else {}
    return ViTForImageClassification(ViTConfig(image_size=image, attn_implementation="sdpa", **size)).eval()


def workload(family: str, size: int, tokens: int, quick: bool) -> Tuple[Any, Dict[str, Any]]:
    """The model and what one measurement runs on: a prompt of ``size - tokens`` tokens and ``tokens`` tokens, or an
    image."""
    if family == "llama":
        model = llama(quick)
        continuation = [list(range(7, 7 + tokens))]
        return model, {"input_ids": torch.randint(3, model.config.vocab_size, (1, size - tokens)), "continuation": continuation}
    model = vit(quick, size)
    return model, {"pixel_values": torch.randn(1, 3, size, size)}


def run(kind: str, model: Any, work: Dict[str, Any]) -> None:
    """One measurement: the SDPA forward + backward of the explained logit, or the explanation."""
    if kind == "sdpa":
        if "continuation" in work:
            ids = work["input_ids"]
            logits = model(input_ids=torch.cat([ids, torch.tensor(work["continuation"], device=ids.device)], 1)).logits
            logits[0, -1 - len(work["continuation"][0]), work["continuation"][0][0]].backward()
        else:
            logits = model(pixel_values=work["pixel_values"]).logits
            logits[0, logits[0].argmax()].backward()
        model.zero_grad(set_to_none=True)
        return
    explainer, streaming = GenericAttention(model), kind == "streaming"
    if "continuation" in work:
        explainer.explain({"input_ids": work["input_ids"]}, continuation=work["continuation"], streaming=streaming)
    else:
        explainer.explain(work["pixel_values"], streaming=streaming)


def memory_probe(kind: str, family: str, size: int, tokens: int, quick: bool) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, work = workload(family, size, tokens, quick)
    before, start, cpu_start = resident_kib(), time.perf_counter(), time.process_time()
    run(kind, model, work)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    print(json.dumps({"growth_kib": peak_kib() - before, "seconds": seconds, "cpu_seconds": cpu_seconds}))


def growth_exponent(sizes: List[int], values: List[float]) -> float:
    """The slope of log(value) against log(size), least squares."""
    x, y = torch.tensor(sizes, dtype=torch.float64).log(), torch.tensor(values, dtype=torch.float64).log()
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def kinds(size: int, tokens: int, quick: bool) -> List[str]:
    """What is measured at a size and token count: SDPA (the baseline of the same run), the streaming explanation,
    and the stored maps only up to :data:`STORED_UP_TO` and one token."""
    return [kind for kind in KINDS if kind != "stored" or (tokens == 1 and (quick or size <= STORED_UP_TO))]


def measure(family: str, sizes: Tuple[int, ...], tokens: Tuple[int, ...], quick: bool) -> List[Dict[str, Any]]:
    rows = []
    for size in sizes:
        for count in tokens if family == "llama" else (1,):
            measured = kinds(size, count, quick)
            extra = ["--quick"] if quick else []
            probes = {kind: probe_in_subprocess("benchmarks.bench_long_context", kind, family, str(size), str(count), *extra)
                      for kind in measured}
            row = {"family": family, "size": size, "tokens": count}
            for key in ("seconds", "cpu_seconds"):
                row[key] = {kind: probe[key] for kind, probe in probes.items()}
            if size <= 1024:  # short runs: the median of three in this process, after a warm-up
                torch.manual_seed(0)
                model, work = workload(family, size, count, quick)
                row["seconds"] = {kind: median_seconds(lambda: run(kind, model, work), repeats=3) for kind in measured}
            row["peak_kib"] = {kind: probe["growth_kib"] for kind, probe in probes.items()}
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    return rows


def merged(path: str, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The rows of ``path`` (if any) with those of ``rows`` replacing the same family, size and token count."""
    key = lambda row: (row["family"], row["size"], row.get("tokens", 1))  # noqa: E731
    old = json.load(open(path)) if os.path.exists(path) else []
    new = {key(row) for row in rows}
    return sorted([row for row in old if key(row) not in new and "streaming" in row["seconds"]] + rows, key=key)


def cpu_ratio(row: Dict[str, Any], base: Dict[str, Any]) -> str:
    """The streaming explanation's CPU time over SDPA's, where both were recorded (rows measured before 2026-12-07
    evening have wall times only)."""
    if "cpu_seconds" not in row or "cpu_seconds" not in base:
        return "-"
    return f"{row['cpu_seconds']['streaming'] / base['cpu_seconds']['sdpa']:.2f}"


def ratios(rows: List[Dict[str, Any]]) -> None:
    """The table: each explanation's time and memory divided by SDPA's at the same size, and the growth exponents."""
    sdpa = {(row["family"], row["size"]): row for row in rows if "sdpa" in row["seconds"] and row.get("tokens", 1) == 1}
    print("family  size  tokens   time streaming/sdpa  stored/sdpa   memory streaming/sdpa  stored/sdpa   CPU time streaming/sdpa")
    for row in rows:
        base = row if "sdpa" in row["seconds"] else sdpa[(row["family"], row["size"])]  # SDPA of the same run, if any
        t, m = row["seconds"], row["peak_kib"]
        stored = (f"{t['stored'] / base['seconds']['sdpa']:11.2f}", f"{m['stored'] / base['peak_kib']['sdpa']:11.2f}") if "stored" in t else ("-", "-")
        print(f"{row['family']:6}  {row['size']:5}  {row.get('tokens', 1):6}  {t['streaming'] / base['seconds']['sdpa']:20.2f}  {stored[0]:>11}"
              f"  {m['streaming'] / base['peak_kib']['sdpa']:22.2f}  {stored[1]:>11}  {cpu_ratio(row, base):>24}")
    for count in sorted({row.get("tokens", 1) for row in rows if row["family"] == "llama"}):
        chosen = [row for row in rows if row["family"] == "llama" and row.get("tokens", 1) == count]
        if len(chosen) > 1:
            exponent = growth_exponent([row["size"] for row in chosen], [row["seconds"]["streaming"] for row in chosen])
            print(f"growth exponent of the streaming time, {count} token(s): {exponent:.2f}")


def plot(rows: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    llama_rows = [row for row in rows if row["family"] == "llama"]
    curves = [("sdpa", 1, "k--", "SDPA forward+backward"), ("streaming", 1, "C0o-", "explain, streaming, 1 token"),
              ("streaming", 16, "C2^-", "explain, streaming, 16 tokens"), ("stored", 1, "C3s-", "explain, stored maps, 1 token")]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    sizes = sorted({row["size"] for row in llama_rows})
    for axis, key, label in ((axes[0], "seconds", "time (s)"), (axes[1], "peak_kib", "peak memory growth (MiB)")):
        scale = 1 / 1024 if key == "peak_kib" else 1
        for kind, count, style, name in curves:
            points = [(row["size"], row[key][kind] * scale) for row in llama_rows
                      if kind in row[key] and row.get("tokens", 1) == count]
            if points:
                axis.loglog(*zip(*points), style, label=name)
        axis.set_xlabel("tokens N")
        axis.set_ylabel(label)
        axis.set_xticks(sizes, [str(size) for size in sizes])
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    figure.suptitle("GenericAttention on LlamaForCausalLM (hidden 256, 8 layers), 1 CPU thread")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    parser.add_argument("--lengths", type=int, nargs="+", help="the Llama sizes (default: all)")
    parser.add_argument("--tokens", type=int, nargs="+", help="the explained token counts (default: 1 and 16)")
    parser.add_argument("--vit", action="store_true", help="also ViT-Base at 224^2 and 448^2")
    parser.add_argument("--memory-probe", nargs=4, metavar=("KIND", "FAMILY", "SIZE", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        kind, family, size, tokens = args.memory_probe
        memory_probe(kind, family, int(size), int(tokens), args.quick)
        return
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    lengths = tuple(args.lengths or (QUICK_LENGTHS if args.quick else LENGTHS))
    rows = measure("llama", lengths, tuple(args.tokens or (QUICK_TOKENS if args.quick else TOKENS)), args.quick)
    if args.vit:
        rows += measure("vit", QUICK_IMAGES if args.quick else IMAGES, (1,), args.quick)
    folder = tempfile.gettempdir() if args.quick else os.path.dirname(__file__)
    rows = merged(os.path.join(folder, "long_context.json"), rows)
    ratios(rows)
    with open(os.path.join(folder, "long_context.json"), "w") as results:
        json.dump(rows, results, indent=1)
    plot(rows, os.path.join(folder, "long_context.png"))
    print(f"results and plot: {folder}/long_context.json, .png")


if __name__ == "__main__":
    main()
