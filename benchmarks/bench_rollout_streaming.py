"""Rollout and raw attention: head means recomputed after the forward and applied to the readout rows (streaming, the
default) against head means kept by the forward (``streaming=False``), in one run.

    python -m benchmarks.bench_rollout_streaming                  # N = 1024, 2048, 4096
    python -m benchmarks.bench_rollout_streaming --quick          # small sizes, to check the script runs

The Llama of ``bench_long_context`` (hidden 256, 8 layers, 8 heads, 2 key/value heads), batch 1, one explained
generated token after a prompt of N - 1 tokens, one CPU thread. For each size and method: the time of ``explain``
(median of 3 after a warm-up at N <= 1024, else one run) and its peak memory (the growth of the resident set's
high-water mark, VmHWM, of a fresh process running one explanation after the model and inputs are built), streaming
divided by stored, and the model's own SDPA forward (no backward: neither method runs one) for scale.
"""

import argparse
import json
import os
from typing import Any, Dict, List

import torch

from benchmarks._measure import median_seconds, peak_growth_in_subprocess, peak_kib, resident_kib
from benchmarks.bench_long_context import workload
from captum_mm.attr import AttentionRollout, RawAttention

LENGTHS, QUICK_LENGTHS = (1024, 2048, 4096), (64, 128)
METHODS = {"rollout": AttentionRollout, "raw": RawAttention}
KINDS = ("sdpa", "rollout-streaming", "rollout-stored", "raw-streaming", "raw-stored")


def run(kind: str, model: Any, work: Dict[str, Any]) -> None:
    """One measurement: the SDPA forward, or one explanation."""
    ids = work["input_ids"]
    if kind == "sdpa":
        with torch.no_grad():
            model(input_ids=torch.cat([ids, torch.tensor(work["continuation"], device=ids.device)], 1))
        return
    method, mode = kind.split("-")
    METHODS[method](model).explain({"input_ids": ids}, continuation=work["continuation"], streaming=mode == "streaming")


def memory_probe(kind: str, size: int, quick: bool) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, work = workload("llama", size, 1, quick)
    before = resident_kib()
    run(kind, model, work)
    print(json.dumps({"growth_kib": peak_kib() - before}))


def measure(sizes: List[int], quick: bool) -> List[Dict[str, Any]]:
    rows = []
    for size in sizes:
        torch.manual_seed(0)
        model, work = workload("llama", size, 1, quick)
        repeats, warmup = (3, 1) if size <= 1024 else (1, 0)
        times = {kind: median_seconds(lambda: run(kind, model, work), repeats=repeats, warmup=warmup) for kind in KINDS}
        extra = ["--quick"] if quick else []
        memory = {kind: peak_growth_in_subprocess("benchmarks.bench_rollout_streaming", kind, str(size), *extra) for kind in KINDS}
        rows.append({"size": size, "seconds": times, "peak_kib": memory})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: List[Dict[str, Any]]) -> None:
    print("size  method   time stream/stored  stored/sdpa-fwd  stream/sdpa-fwd   memory stream/stored  stored MiB  stream MiB")
    for row in rows:
        t, m = row["seconds"], row["peak_kib"]
        for method in METHODS:
            stream, stored = f"{method}-streaming", f"{method}-stored"
            print(f"{row['size']:5} {method:8} {t[stream] / t[stored]:19.2f} {t[stored] / t['sdpa']:16.2f} {t[stream] / t['sdpa']:16.2f}"
                  f" {m[stream] / m[stored]:22.2f} {m[stored] / 1024:11.0f} {m[stream] / 1024:11.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    parser.add_argument("--lengths", type=int, nargs="+", help="the sizes (default: 1024 2048 4096)")
    parser.add_argument("--memory-probe", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe[0], int(args.memory_probe[1]), args.quick)
        return
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    table(measure(list(args.lengths or (QUICK_LENGTHS if args.quick else LENGTHS)), args.quick))


if __name__ == "__main__":
    main()
