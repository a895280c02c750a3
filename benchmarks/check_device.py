"""Every method on an accelerator: the same relevance as on CPU, and cost ratios measured there.

    python -m benchmarks.check_device [--device cuda] [--quick]

1. For every family of ``tests/helpers.py`` and every method of ``tests/methods_under_test.py``:
   relevance computed on the device equals relevance computed on CPU (float32, TF32 off).
2. DETR: the vectorised backward (the default on an accelerator) equals one backward per query.
3. Released-size LXMERT (random weights, batch 16): peak device memory and time of
   ``GenericAttention.explain`` against a plain forward+backward of the same batch; DETR
   explaining 10 queries, vectorised backward against one backward per query.
4. ``bench_long_context``'s Llama at N = 4096 ... 131072 (on CPU its lengths up to 32768): time and peak device
   memory (``torch.cuda.max_memory_allocated``) of the streaming explanation of 1 and 16 generated tokens, and of the
   stored-map explanation of one token up to ``STORED_UP_TO``, against the SDPA forward+backward.
5. Big models (``benchmarks/_check_big_models.py``): every method on a Llama, LLaVA and BERT split over CPU and the
   device by a device map, against CPU alone (results on the inputs' device); bitsandbytes 4- and 8-bit layers on the
   device against their dequantized weights; bfloat16 and float16 on the device against float32; the real-size
   Qwen2-VL-2B (``bench_real_size``, all layers) in bfloat16 with SDPA: time and peak memory of explaining 8 tokens
   over the model's forward + backward, plain, device-mapped and 4-bit.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchmarks import _check_big_models as big  # noqa: E402
from benchmarks._measure import median_seconds  # noqa: E402
from benchmarks.bench_generic import detr, forward_backward, lxmert, lxmert_inputs  # noqa: E402
from benchmarks.bench_long_context import LENGTHS, QUICK_LENGTHS, QUICK_TOKENS, TOKENS, kinds, run, workload  # noqa: E402
from captum_mm.attr import GenericAttention  # noqa: E402
from helpers import CASES  # noqa: E402
from methods_under_test import METHODS, REFUSED  # noqa: E402


def _to(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _relevance(method, case, target):
    explanation = METHODS[method](case.forward, case.model).explain(case.inputs, target, case.additional, threshold=0.0)
    return {name: getattr(explanation, name).detach().cpu() for name in case.outputs}


def same_as_cpu(device: str) -> dict:
    worst = {}
    for family, make in sorted(CASES.items()):
        torch.manual_seed(0)
        case = make()
        target = case.target(case.inputs[0].shape[0])
        methods = sorted(key for key in METHODS if family not in REFUSED.get(key, set()))  # AttnLRP refuses some
        on_cpu = {method: _relevance(method, case, target) for method in methods}
        case.model.to(device)
        case.inputs = tuple(_to(t, device) for t in case.inputs)
        case.additional = tuple(_to(t, device) for t in case.additional)
        for method in methods:
            on_device = _relevance(method, case, _to(target, device))
            for name, expected in on_cpu[method].items():
                scale = expected.abs().max().clamp(min=1e-12)
                error = float((on_device[name] - expected).abs().max() / scale)
                worst[f"{family}/{method}/{name}"] = error
    return worst


def detr_vectorized_equals_looped(device: str, quick: bool) -> dict:
    torch.manual_seed(0)
    model = detr(quick).to(device)
    pixels = torch.randn(2, 3, 256, 256, device=device)
    target = [list(range(10))] * 2
    looped, vectorized = GenericAttention(model), GenericAttention(model)
    looped.vectorized_backward, vectorized.vectorized_backward = False, None  # None: vectorised on an accelerator
    expected = looped.explain(pixels, target).image
    found = vectorized.explain(pixels, target).image
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(explainer):
        def run():
            explainer.explain(pixels, target)
            sync()
        return median_seconds(run, repeats=5)

    return {
        "max relative difference": float((found - expected).abs().max() / expected.abs().max()),
        "looped / vectorised time": timed(looped) / timed(vectorized),
    }


def _peak(run) -> int:
    """Peak device memory (bytes) one run allocates beyond what is allocated before it, after a warm-up run
    (kernels, workspaces, transformers' own hooks)."""
    run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start


def _timed(run, cuda: bool, repeats: int = 5) -> float:
    def synced():
        run()
        if cuda:
            torch.cuda.synchronize()
    return median_seconds(synced, repeats=repeats)


def lxmert_cost(device: str, quick: bool, batch: int = 16) -> dict:
    torch.manual_seed(0)
    model = lxmert(quick).to(device)
    inputs, additional = lxmert_inputs(model, batch)
    inputs, additional = tuple(t.to(device) for t in inputs), tuple(t.to(device) for t in additional)
    explainer = GenericAttention(model)
    cuda = device.startswith("cuda")

    def plain():
        forward_backward(model, inputs, additional)

    def explain():
        explainer.explain(inputs, None, additional)

    result = {"explain / forward+backward time": _timed(explain, cuda) / _timed(plain, cuda)}
    if cuda:
        result["explain / forward+backward peak memory"] = _peak(explain) / _peak(plain)
    return result


#: Lengths on an accelerator beyond ``bench_long_context``'s CPU lengths.
DEVICE_LENGTHS = LENGTHS + (65536, 131072)


def long_context(device: str, quick: bool) -> dict:
    """``bench_long_context``'s Llama on the device: time and peak memory of each explanation (streaming, 1 and 16
    tokens; stored maps, 1 token, up to ``STORED_UP_TO``) over the SDPA forward+backward of one logit, per length."""
    cuda, results = device.startswith("cuda"), {}
    lengths = QUICK_LENGTHS if quick else DEVICE_LENGTHS if cuda else LENGTHS
    for size in lengths:
        for count in QUICK_TOKENS if quick else TOKENS:
            torch.manual_seed(0)
            model, work = workload("llama", size, count, quick)
            model.to(device)
            work["input_ids"] = work["input_ids"].to(device)
            measured = ["sdpa", *(kind for kind in kinds(size, count, quick) if kind != "sdpa")]
            runs = {kind: (lambda kind=kind: run(kind, model, work)) for kind in measured}
            seconds = {kind: _timed(runs[kind], cuda, repeats=3) for kind in measured}
            row = {f"{kind} / sdpa time": seconds[kind] / seconds["sdpa"] for kind in measured[1:]}
            if cuda:
                peaks = {kind: _peak(runs[kind]) for kind in measured}
                row.update({f"{kind} / sdpa peak memory": peaks[kind] / peaks["sdpa"] for kind in measured[1:]})
                row["sdpa peak memory (MiB)"] = peaks["sdpa"] / 2**20
            results[f"N = {size}, {count} token(s)"] = row
            print(f"long context, N = {size}, {count} token(s):", row, flush=True)
            runs.clear()  # the model and inputs go with the closures before the next size
            if cuda:
                torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small LXMERT and DETR")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {device_name}, torch {torch.__version__}")
    worst = same_as_cpu(args.device)
    largest = max(worst, key=worst.get)
    print(f"device vs CPU: {len(worst)} relevance maps, largest relative difference {worst[largest]:.2e} ({largest})")
    results = {"device": device_name, "device vs CPU": worst}
    results["detr"] = detr_vectorized_equals_looped(args.device, args.quick)
    print("DETR, 10 queries x 2 images:", results["detr"])
    results["lxmert"] = lxmert_cost(args.device, args.quick)
    print("LXMERT, batch 16:", results["lxmert"])
    results["long context"] = long_context(args.device, args.quick)
    for name, check in (("device map", big.device_mapped), ("bitsandbytes", big.bitsandbytes_on_device),
                        ("half precision", big.half_precision_on_device)):
        results[name] = check(args.device)
        values = results[name]
        largest = max(values, key=lambda key: float("inf") if values[key] != values[key] else values[key])  # NaN first
        print(f"{name}: {len(values)} explanations, largest relative difference {values[largest]:.2e} ({largest}; NaN: "
              "a result not on the inputs' device)")
    results["real size"] = big.real_size_on_device(args.device, args.quick)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
