"""``check_device``'s big-model checks (issue 25): a model split over CPU and the device by a device map,
bitsandbytes' 8- and 4-bit layers, bfloat16 and float16 on the device, and the real-size VLM with SDPA (plain,
device-mapped, 4-bit). Each check also runs with ``--device cpu`` (a CPU-only map), which is how it was tried before
any accelerator ran it."""

import copy
import time
from typing import Any, Callable, Dict

import torch
from torch import nn

from big_models import EXPLAINED, KINDS, bitsandbytes_layers, dequantized_copy, relative_error
from methods_under_test import LRP_BASED, METHODS


def _on(value: Any, device: str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _on(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on(item, device) for item in value)
    return value


def _explainer_inputs(kind: str, device: str) -> Callable[[Any], Any]:
    """How ``kind``'s methods explain, with every input on ``device`` (the KINDS' inputs rebuilt with the same seed)."""
    torch.manual_seed(0)
    family = KINDS[kind]()
    captured: Dict[str, Any] = {}

    class Spy:
        def explain(self, *args: Any, **kwargs: Any) -> None:
            captured.update(args=args, kwargs=kwargs)

    family.explain(Spy())
    args, kwargs = _on(captured["args"], device), _on(captured["kwargs"], device)
    return lambda explainer: explainer.explain(*args, **kwargs)


def split_device_map(model: nn.Module, device: str) -> Dict[str, Any]:
    """Every module holding parameters of its own: on CPU within the first half of the entries of a ModuleList (the
    layers), on ``device`` elsewhere (embeddings, heads, the second half), so the forward crosses devices both ways."""
    first_half = [f"{name}.{index}." for name, module in model.named_modules() if isinstance(module, nn.ModuleList)
                  for index in range(max(len(module) // 2, 1))]
    device_map: Dict[str, Any] = {}
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)) and not any(name.startswith(f"{owner}.") for owner in device_map):
            device_map[name] = "cpu" if any(f"{name}.".startswith(prefix) for prefix in first_half) else device
    return device_map


def device_mapped(device: str) -> Dict[str, float]:
    """Every method on a model dispatched over CPU and ``device`` (accelerate's ``dispatch_model``): relevance
    against the same model on CPU alone (NaN: a result not on the inputs' device)."""
    from accelerate import dispatch_model

    worst: Dict[str, float] = {}
    for kind in sorted(KINDS):
        torch.manual_seed(0)
        model = KINDS[kind]().model
        on_cpu = _explainer_inputs(kind, "cpu")
        references = {method: on_cpu(METHODS[method](model)).relevance for method in EXPLAINED}
        dispatched = dispatch_model(copy.deepcopy(model), split_device_map(model, device))
        explain = _explainer_inputs(kind, device)
        for method in EXPLAINED:
            relevance = explain(METHODS[method](dispatched)).relevance
            on_inputs_device = all(value.device.type == torch.device(device).type for value in relevance.values())
            worst[f"{kind}/{method}"] = relative_error(_on(relevance, "cpu"), references[method]) if on_inputs_device else float("nan")
    return worst


def bitsandbytes_on_device(device: str) -> Dict[str, float]:
    """Every method on a Llama whose linears are bitsandbytes' 4-bit (NF4) and 8-bit layers on ``device``, against
    the same model holding the dequantized weights (LRP reads those)."""
    from captum_mm.lrp.quantized import dense_weight

    worst: Dict[str, float] = {}
    torch.manual_seed(0)
    llama = KINDS["llama"]()
    explain = _explainer_inputs("llama", device)
    for bits in (4, 8):
        quantized = bitsandbytes_layers(llama.model, bits, device)
        plain = dequantized_copy(quantized, lambda module: dense_weight(module, module.weight))
        for method in EXPLAINED:
            got, expected = explain(METHODS[method](quantized)).relevance, explain(METHODS[method](plain)).relevance
            worst[f"{bits}-bit/{method}"] = relative_error(_on(got, "cpu"), _on(expected, "cpu"))
    return worst


def half_precision_on_device(device: str) -> Dict[str, float]:
    """Every method on the three kinds in bfloat16 and float16 on ``device``, against float32 on the same device
    (methods without LRP: bounded by a few epsilons of the half dtype; LRP-based ones, which run the model in float32,
    against the float32 model holding the rounded weights)."""
    worst: Dict[str, float] = {}
    for kind in sorted(KINDS):
        torch.manual_seed(0)
        model = KINDS[kind]().model.to(device)
        explain = _explainer_inputs(kind, device)
        for dtype in (torch.bfloat16, torch.float16):
            half = copy.deepcopy(model).to(dtype)
            rounded = copy.deepcopy(half).float()
            for method in EXPLAINED:
                got = explain(METHODS[method](half)).relevance
                assert all(value.dtype == torch.float32 for value in got.values()), (kind, method, dtype)
                expected = explain(METHODS[method](rounded if method in LRP_BASED else model)).relevance
                worst[f"{kind}/{dtype}/{method}"] = relative_error(_on(got, "cpu"), _on(expected, "cpu"))
    return worst


def real_size_on_device(device: str, quick: bool) -> Dict[str, Dict[str, float]]:
    """``bench_real_size``'s Qwen2-VL-2B (all 28 + 32 layers; tiny widths with ``--quick``) in bfloat16 with SDPA on
    ``device``: time and peak device memory of GenericAttention (lean) and RawAttention explaining 8 tokens over the
    model's forward + backward of one logit; plain, device-mapped (first half of the layers on CPU) and 4-bit."""
    import argparse

    from accelerate import dispatch_model

    from benchmarks.bench_real_size import KINDS as RUNS
    from benchmarks.bench_real_size import build, run

    cuda = device.startswith("cuda")
    layers = (2, 2) if quick else (28, 32)
    args = argparse.Namespace(layers=layers[0], vision_layers=layers[1], quick=quick, dtype="bfloat16")
    rows: Dict[str, Dict[str, float]] = {}
    for variant in ("plain", "device_map", "4-bit"):
        model, work = build(args)
        if variant == "device_map":
            model = dispatch_model(model, split_device_map(model, device))
        elif variant == "4-bit":
            model = bitsandbytes_layers(model, 4, device, compute_dtype=torch.bfloat16)
        else:
            model.to(device)
        work = _on(work, device)
        seconds, peaks = {}, {}
        for kind in RUNS:
            run(kind, model, work)  # warm-up
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start, allocated = time.perf_counter(), torch.cuda.memory_allocated() if cuda else 0
            run(kind, model, work)
            if cuda:
                torch.cuda.synchronize()
                peaks[kind] = torch.cuda.max_memory_allocated() - allocated
            seconds[kind] = time.perf_counter() - start
        row = {f"{kind} / model time": seconds[kind] / seconds["model"] for kind in RUNS[1:]}
        row.update({f"{kind} / model peak memory": peaks[kind] / peaks["model"] for kind in RUNS[1:] if cuda})
        rows[variant] = row
        print(f"real size ({variant}):", row, flush=True)
        del model
    return rows
