"""Timing and peak-memory helpers shared by the benchmarks (ratios within one run, never absolute claims)."""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict


def median_seconds(run: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def resident_kib() -> int:
    return _status_kib("VmRSS")


def peak_kib() -> int:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    return _status_kib("VmHWM")


def probe_in_subprocess(module: str, *args: str) -> Dict[str, float]:
    """The JSON line that ``python -m module --memory-probe args`` prints last, run in a fresh process."""
    output = subprocess.run(
        [sys.executable, "-m", module, "--memory-probe", *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def peak_growth_in_subprocess(module: str, *args: str) -> int:
    """Peak resident-memory growth (KiB) of ``python -m module --memory-probe args`` in a fresh process."""
    return int(probe_in_subprocess(module, *args)["growth_kib"])


def benchmark_arguments(description: str, quick_help: str) -> argparse.Namespace:
    """``--quick``; torch on ``BENCH_THREADS`` threads (default 1), seeded."""
    import torch

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    torch.manual_seed(0)
    return args
