"""Does ``max_memory``'s estimate cover what one explained element's relevance buffers take? Every method on a
decoder-only (Llama) and an encoder-decoder (T5) model.

    python -m benchmarks.bench_memory_estimate            # 200 generated tokens (about 10 minutes on one thread)
    python -m benchmarks.bench_memory_estimate --quick    # 40 tokens, to check the script runs

Tiny random models (hidden 32, 2 layers, 4 heads, vocabulary 1,000) explain a prompt of 8 tokens and ``C`` generated
tokens (``C`` elements, one backward slot each). Measured per element: the growth of the resident set's high-water
mark (VmHWM) of a fresh process explaining them all at once (``max_memory=None``), less that of one explaining them
one slot at a time (``max_memory=1``), divided by ``C - 1``. Estimated: ``captum_mm.attr._memory.element_bytes``,
which must not be smaller.
"""

import argparse
import json
import os
import subprocess
import sys
import warnings
from typing import Any, Dict, Optional

import torch

from benchmarks._measure import peak_kib

METHODS = ("GenericAttention", "GenericAttention-eager", "GenericAttention-lrp", "AttentionGradCam", "AttentionRollout",
           "RawAttention", "RawAttention-eager", "PartialLRP", "TransformerAttribution")


def model(family: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2)).eval()
    return T5ForConditionalGeneration(T5Config(vocab_size=1000, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                                               num_heads=4, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)).eval()


def explainer(method: str, explained: Any) -> Any:
    import captum_mm.attr as methods

    name, _, variant = method.partition("-")
    made = getattr(methods, name)(explained, **({"head_weighting": "lrp"} if variant == "lrp" else {}))
    made.lean = variant != "eager"
    return made


def probe(family: str, method: str, budget: Optional[int], tokens: int) -> Dict[str, int]:
    """One explanation in this process: its peak growth (bytes) and the estimate per element."""
    from captum_mm.attr import _base, _memory
    from captum_mm.attr._streaming import streamed_modalities

    warnings.simplefilter("ignore")  # max_memory=1 warns
    torch.set_num_threads(1)
    estimate: Dict[str, int] = {}

    def groups(forward: Any, events: Any, needs: Any, vectorized: Any, max_memory: Any, streaming: bool = False) -> Any:
        calls = [forward.record.calls[event.call] for event in events]
        streamed = streamed_modalities(forward.schedule, events, calls, needs) if streaming else frozenset()
        estimate["bytes"] = _memory.element_bytes(forward.schedule, forward.record, events, 4, needs, False, streamed)
        return _memory.slot_groups(forward, events, needs, vectorized, max_memory, streaming)

    _base.slot_groups = groups
    explained = model(family)
    made = explainer(method, explained)
    made.max_memory = budget
    prompt, continuation = {"input_ids": torch.randint(3, 1000, (1, 8))}, torch.randint(3, 1000, (1, tokens))
    before = peak_kib()
    made.explain(prompt, continuation=continuation)
    return {"growth": (peak_kib() - before) * 1024, "estimate": estimate["bytes"]}


def in_fresh_process(family: str, method: str, budget: str, tokens: int) -> Dict[str, int]:
    command = [sys.executable, "-m", "benchmarks.bench_memory_estimate", "--probe", family, method, budget, str(tokens)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=dict(os.environ)).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 tokens, to check the script runs")
    parser.add_argument("--probe", nargs=4, metavar=("FAMILY", "METHOD", "BUDGET", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        family, method, budget, tokens = args.probe
        print(json.dumps(probe(family, method, None if budget == "none" else int(budget), int(tokens))))
        return
    tokens = 40 if args.quick else 200
    print("| model | method | measured per element | estimated | estimated / measured |\n|---|---|---|---|---|")
    for family in ("llama", "t5"):
        for method in METHODS:
            whole, one = (in_fresh_process(family, method, budget, tokens) for budget in ("none", "1"))
            measured = (whole["growth"] - one["growth"]) / (tokens - 1)
            ratio = f"{whole['estimate'] / measured:.2f}" if measured > 0 else "-"
            print(f"| {family} | {method} | {measured / 1e6:.2f} MB | {whole['estimate'] / 1e6:.2f} MB | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
