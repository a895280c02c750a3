"""A vision-language model of real size in bfloat16 on CPU: explaining generated tokens against the model's own
forward + backward.

    python -m benchmarks.bench_real_size                  # Qwen2-VL-2B's widths, 4 of 28 LM and 4 of 32 vision layers
    python -m benchmarks.bench_real_size --layers 28 --vision-layers 32      # the whole model (hours on one thread)
    python -m benchmarks.bench_real_size --quick          # tiny widths, to check the script runs
    python -m benchmarks.bench_real_size --dtype float32  # where bfloat16 matmuls are slow (CPUs without AVX512-BF16)

``Qwen2VLForConditionalGeneration`` with Qwen2-VL-2B-Instruct's configuration (hidden 1536, 12 heads, 2 key/value
heads, MLP 8960, vocabulary 151,936, tied embeddings; vision tower 1280 wide, 16 heads, patches 14, merged 2 x 2),
random weights, in bfloat16, fewer layers where stated (time and memory per layer are the same in every layer, so the
ratios hold for the whole depth up to the fixed embedding and head). One 448 x 448 image (1,024 vision patches, 256
image tokens in the LM) and a 50-token prompt; 8 generated tokens (random ids: the cost does not depend on them).

Measured, each as a ratio to the model's own SDPA forward + ``backward()`` of one explained logit (parameters frozen,
the gradient taken at the input embeddings -- the cheapest backward there is; the logit of the first generated
token): ``GenericAttention`` (lean capture, the default) and ``RawAttention`` explaining the 8 tokens. Time: one run
each after a warm-up. Peak memory: the growth of the resident set's high-water mark (VmHWM) of a fresh process
running one measurement, after the model and inputs are built.
"""

import argparse
import json
import os
import time
from typing import Any, Dict

import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from benchmarks._measure import peak_growth_in_subprocess, peak_kib, resident_kib
from captum_mm.attr import GenericAttention, RawAttention

KINDS = ("model", "generic-lean", "raw-attention")
IMAGE, PATCH, MERGE, PROMPT, GENERATED = 448, 14, 2, 50, 8
IMAGE_TOKEN, VISION_START, VISION_END = 151655, 151652, 151653


def qwen2_vl_2b(layers: int, vision_layers: int, quick: bool, dtype: torch.dtype) -> Qwen2VLForConditionalGeneration:
    """Qwen2-VL-2B-Instruct's configuration with ``layers`` LM and ``vision_layers`` vision layers, random, in ``dtype``."""
    vision = dict(depth=vision_layers, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=PATCH,
                  spatial_merge_size=MERGE, temporal_patch_size=2, in_channels=3)
    text = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=layers, num_attention_heads=12,
                num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings=True)
    if quick:
        vision.update(embed_dim=64, hidden_size=64, num_heads=4)
        text.update(hidden_size=64, intermediate_size=128, num_attention_heads=4, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    config = Qwen2VLConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, vision_start_token_id=VISION_START,
                           vision_end_token_id=VISION_END, tie_word_embeddings=True, attn_implementation="sdpa")
    torch.set_default_dtype(dtype)
    try:
        return Qwen2VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(torch.float32)


def workload(image: int, dtype: torch.dtype) -> Dict[str, Any]:
    """``[vision start | image tokens | vision end | prompt]``, the flattened patches, and the 8 generated tokens."""
    grid = image // PATCH
    image_tokens = grid * grid // MERGE**2
    ids = torch.cat([torch.tensor([VISION_START]), torch.full((image_tokens,), IMAGE_TOKEN), torch.tensor([VISION_END]),
                     torch.randint(1000, 100000, (PROMPT,))])[None]
    pixels = torch.randn(grid * grid, 3 * 2 * PATCH * PATCH, dtype=dtype)
    prompt = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
              "image_grid_thw": torch.tensor([[1, grid, grid]]), "mm_token_type_ids": (ids == IMAGE_TOKEN).long()}
    return {"prompt": prompt, "continuation": torch.randint(1000, 100000, (1, GENERATED))}


def run(kind: str, model: Qwen2VLForConditionalGeneration, work: Dict[str, Any]) -> None:
    """One measurement: the model's forward + backward of one explained logit, or an explanation of the 8 tokens."""
    prompt, continuation = work["prompt"], work["continuation"]
    if kind == "model":
        ids = torch.cat([prompt["input_ids"], continuation], 1)
        handle = model.get_input_embeddings().register_forward_hook(lambda module, args, output: output.requires_grad_())
        try:
            arguments = dict(prompt, input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == IMAGE_TOKEN).long())
            logits = model(**arguments).logits
            logits[0, prompt["input_ids"].shape[1] - 1, continuation[0, 0]].backward()
        finally:
            handle.remove()
        return
    explainer = GenericAttention(model) if kind == "generic-lean" else RawAttention(model)
    explainer.explain(prompt, continuation=continuation)


def build(args: argparse.Namespace) -> Any:
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = qwen2_vl_2b(args.layers, args.vision_layers, args.quick, dtype).requires_grad_(False)
    return model, workload(56 if args.quick else IMAGE, dtype)


def memory_probe(kind: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    model, work = build(args)
    before = resident_kib()
    run(kind, model, work)
    print(json.dumps({"growth_kib": peak_kib() - before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="LM layers (Qwen2-VL-2B: 28)")
    parser.add_argument("--vision-layers", type=int, default=4, help="vision layers (Qwen2-VL-2B: 32)")
    parser.add_argument("--quick", action="store_true", help="tiny widths, to check the script runs")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--memory-probe", metavar="KIND", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe, args)
        return
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    model, work = build(args)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters in {args.dtype}, {work['prompt']['input_ids'].shape[1]} "
          f"prompt tokens, {GENERATED} generated, {torch.get_num_threads()} thread(s)", flush=True)
    seconds = {}
    for kind in KINDS:
        run(kind, model, work)  # warm-up
        start = time.perf_counter()
        run(kind, model, work)
        seconds[kind] = time.perf_counter() - start
        print(kind, f"{seconds[kind]:.1f} s", flush=True)
    flags = ["--layers", str(args.layers), "--vision-layers", str(args.vision_layers), "--dtype", args.dtype]
    flags += ["--quick"] if args.quick else []
    memory = {kind: peak_growth_in_subprocess("benchmarks.bench_real_size", kind, *flags) for kind in KINDS}
    print(json.dumps({"seconds": seconds, "peak_growth_kib": memory}))
    for kind in KINDS[1:]:
        print(f"{kind}: time {seconds[kind] / seconds['model']:.2f}x, peak memory {memory[kind] / memory['model']:.2f}x "
              "the model's forward + backward")


if __name__ == "__main__":
    main()
