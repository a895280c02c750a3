"""The lean attention function's own speed against an earlier revision of it, in one process.

    python -m benchmarks.bench_lean_speed                            # N = 2048 and 4096, before = ac9a873
    python -m benchmarks.bench_lean_speed --lengths 2048 4096 8192 --whole --repeats 5
    python -m benchmarks.bench_lean_speed --profile --lengths 4096   # where one call's time goes
    python -m benchmarks.bench_lean_speed --quick                    # small sizes, to check the script runs

"function": one attention call of ``bench_long_context``'s Llama (8 query heads, 2 key/value heads, head dimension
32, batch 1, transformers' additive causal mask) through :func:`~captum_mm.capture.lean.lean_attention`: its forward,
and the backward of a random output gradient that also hands Eq. 5's map, chunk by chunk, to a streaming sink of one
readout row (as streaming ``GenericAttention`` does). "explain": ``GenericAttention.explain`` of one generated token
on that Llama (streaming, the default). Each is timed for this tree's lean function ("after") and for the one at
``--before`` (its ``capture/lean.py`` and ``capture/chunks.py`` loaded from git, "before"), each divided by the SDPA
forward+backward of the same work (``is_causal``; parameter gradients included for "explain"), interleaved, the
median of ``--repeats`` runs.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
import types
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import eager_mask

from benchmarks.bench_long_context import run, workload
from captum_mm.capture import chunks, lean

#: The revision before the lean function's speed-up (issue 26, point 4).
BEFORE = "ac9a873"
HEADS, KEY_HEADS, HEAD_DIM = 8, 2, 32


def module_at(revision: str, path: str, name: str) -> types.ModuleType:
    """``path`` of ``revision``, executed as the module ``name``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=root, check=True, capture_output=True, text=True).stdout
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)
    return module


def lean_at(revision: str) -> types.ModuleType:
    """The lean module of ``revision`` (with its own row chunks), sharing this tree's recording state, so that the
    engine's recording serves it once it is registered under :data:`~captum_mm.capture.lean.LEAN`."""
    old_chunks = module_at(revision, "captum_mm/capture/chunks.py", "_before_chunks")
    sys.modules["captum_mm.capture.chunks"] = old_chunks
    try:
        old = module_at(revision, "captum_mm/capture/lean.py", "_before_lean")
    finally:
        sys.modules["captum_mm.capture.chunks"] = chunks
        AttentionInterface.register(lean.LEAN, lean.lean_attention)  # importing it registered the old function
    old._sites, old_chunks._seen_chunks = lean._sites, chunks._seen_chunks
    return old


class RowSink:
    """Eq. 5's map applied chunk by chunk to one readout row, as a streamed ``GenericAttention`` event is."""

    def __init__(self, size: int) -> None:
        self.row, self.product = torch.rand(1, 1, size), torch.zeros(1, 1, size)

    def add(self, rows: slice, columns: slice, values: Tensor) -> None:
        self.product[:, :, columns] += torch.bmm(self.row[:, :, rows], values)

    def wants(self, rows: slice) -> bool:
        return True

    def close(self) -> None:
        pass


def call_inputs(size: int) -> Dict[str, Tensor]:
    torch.manual_seed(0)
    shapes = {"query": HEADS, "key": KEY_HEADS, "value": KEY_HEADS}
    tensors = {name: torch.randn(1, heads, size, HEAD_DIM, requires_grad=True) for name, heads in shapes.items()}
    tensors["mask"] = eager_mask(1, size, size, dtype=torch.float32)  # causal, as transformers builds it for eager attention
    tensors["grad"] = torch.randn(1, size, HEADS, HEAD_DIM)
    return tensors


def lean_call(module: types.ModuleType, tensors: Dict[str, Tensor], backward: bool = True) -> None:
    """One lean attention call through ``module``'s function, forward and (``backward``) backward, Eq. 5's map to a
    row sink."""
    layer, calls = nn.Module(), []
    site = module.LeanSite(lambda mean, maps, *again: calls.append(maps), None, None, True)  # again: recent revisions
    tokens = module.recording({id(layer): site})
    try:
        output, _ = module.lean_attention(layer, tensors["query"], tensors["key"], tensors["value"], tensors["mask"],
                                          scaling=HEAD_DIM ** -0.5)
        if not backward:
            return
        real = torch.ones(1, tensors["query"].shape[2], dtype=torch.bool)
        request = lean.LeanRequest(calls[0], "gradient_weighted", real, real, RowSink(real.shape[1]))
        inputs = [tensors[name] for name in ("query", "key", "value")]
        module.lean_backward([request], lambda: torch.autograd.grad(output, inputs, tensors["grad"]))
    finally:
        module.stop_recording(tokens)


def sdpa_call(tensors: Dict[str, Tensor]) -> None:
    inputs = [tensors[name] for name in ("query", "key", "value")]
    output = nn.functional.scaled_dot_product_attention(*inputs, is_causal=True, scale=HEAD_DIM ** -0.5, enable_gqa=True)
    torch.autograd.grad(output, inputs, tensors["grad"].transpose(1, 2))


def registered(function: Callable[..., Any], work: Callable[[], None]) -> Callable[[], None]:
    """``work`` with ``function`` registered as the lean attention function."""
    def measured() -> None:
        AttentionInterface.register(lean.LEAN, function)
        try:
            work()
        finally:
            AttentionInterface.register(lean.LEAN, lean.lean_attention)
    return measured


def interleaved(runs: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, float]:
    """The median seconds of each run, the runs interleaved (after one warm-up each)."""
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for work in runs.values():
        work()
    for _ in range(repeats):
        for name, work in runs.items():
            start = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(kind: str, size: int, before: types.ModuleType, repeats: int, quick: bool) -> Dict[str, float]:
    if kind == "function":
        tensors = call_inputs(size)
        runs = {"sdpa": lambda: sdpa_call(tensors), "before": lambda: lean_call(before, tensors),
                "after": lambda: lean_call(lean, tensors)}
    else:
        torch.manual_seed(0)
        model, work = workload("llama", size, 1, quick)
        runs = {"sdpa": lambda: run("sdpa", model, work),
                "before": registered(before.lean_attention, lambda: run("streaming", model, work)),
                "after": lambda: run("streaming", model, work)}
    return interleaved(runs, repeats)


#: Operations by what they do in the lean call (the rest: elementwise work, copies, the autograd machinery).
CATEGORIES = {"matrix products": ("aten::bmm", "aten::mm"), "SDPA kernel": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
              "softmax": ("aten::_softmax",), "row chunks' keys (mask scan)": ("aten::any", "aten::gt", "aten::nonzero")}


def categorized(work: Callable[[], None]) -> Dict[str, float]:
    """Milliseconds of ``work``'s operations' self time by :data:`CATEGORIES`, and the total."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    with profiler(activities=[ProfilerActivity.CPU]) as result:
        work()
    times = {name: 0.0 for name in (*CATEGORIES, "other")}
    for event in result.key_averages():
        name = next((name for name, ops in CATEGORIES.items() if event.key in ops), "other")
        times[name] += event.self_cpu_time_total / 1e3
    times["total"] = sum(times.values())
    return times


def profile(size: int, before: types.ModuleType) -> None:
    """Where one lean call's time goes, forward and backward, before and after (profiler self times)."""
    tensors = call_inputs(size)
    columns = {}
    for name, module in (("before", before), ("after", lean)):
        lean_call(module, tensors)
        forward = categorized(lambda: lean_call(module, tensors, backward=False))
        both = categorized(lambda: lean_call(module, tensors))
        columns[f"{name} forward"] = forward
        columns[f"{name} backward"] = {key: both[key] - forward[key] for key in both}
    print(f"N = {size}, ms: " + " | ".join(columns))
    for key in (*CATEGORIES, "other", "total"):
        print(f"{key:30} " + " ".join(f"{values[key]:9.0f}" for values in columns.values()))


def computed_fraction(module: types.ModuleType, size: int) -> Tuple[float, int]:
    """The share of the ``N^2`` scores the row chunks of ``module`` (a lean module) compute, and a chunk's rows."""
    tensors = call_inputs(size)
    spans = module.row_chunks(tensors["query"], size, tensors["mask"])
    heights = [min(rows.stop, size) - rows.start for rows, _ in spans]
    return sum(height * columns.stop for height, (_, columns) in zip(heights, spans)) / size ** 2, heights[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096], help="sequence lengths N")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (median)")
    parser.add_argument("--before", default=BEFORE, help=f"the git revision compared with (default {BEFORE})")
    parser.add_argument("--whole", action="store_true", help="also time the whole explanation")
    parser.add_argument("--profile", action="store_true", help="print one call's operations instead of timing")
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    before = lean_at(args.before)
    lengths = [128, 256] if args.quick else args.lengths
    if args.profile:
        for size in lengths:
            profile(size, before)
        return
    print("kind      N     before/sdpa  after/sdpa  after/before  sdpa (s)  scores computed  rows a chunk (before, after)")
    for kind in ("function", "explain") if args.whole or args.quick else ("function",):
        for size in lengths:
            seconds = measure(kind, size, before, args.repeats, args.quick)
            spans = [computed_fraction(module, size) for module in (before, lean)]
            print(f"{kind:8}  {size:5}  {seconds['before'] / seconds['sdpa']:11.2f}  {seconds['after'] / seconds['sdpa']:10.2f}"
                  f"  {seconds['after'] / seconds['before']:12.2f}  {seconds['sdpa']:8.3f}  "
                  + ", ".join(f"{fraction:.3f}" for fraction, _ in spans) + "  " + ", ".join(str(rows) for _, rows in spans), flush=True)


if __name__ == "__main__":
    main()
