"""The ``captum-mm`` command."""

import argparse
import contextlib
import os
import shlex
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

# Idle OpenMP threads sleep rather than spin (read when torch loads its OpenMP runtime, so before
# ``import torch``): with 2 threads beside a busy process this halved a reduced main job's run time.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from captum_mm import zoo
from captum_mm.attr.catalog import every_method, method_alias, select_methods


def positive_count(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"takes a positive whole number, got {text!r}")
    return value


def method_name(text: str) -> str:
    """An argparse type: a method or ablation of the catalog, by name or alias."""
    try:
        return next(iter(select_methods([text])))
    except ValueError:
        names = ", ".join(method_alias(name) for name in every_method())
        raise argparse.ArgumentTypeError(f"unknown method {text!r}; choose from {names}") from None


def _cpu_times() -> Tuple[int, int, int]:
    """From /proc/stat: jiffies spent busy and in total over all CPUs, and the number of CPUs."""
    with open("/proc/stat") as stat:
        lines = stat.read().splitlines()
    fields = [int(value) for value in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    idle = fields[3] + fields[4]
    cpus = sum(line.startswith("cpu") and line[3:4].isdigit() for line in lines)
    return sum(fields) - idle, sum(fields), cpus


def _busy_cpus(interval: float = 0.5) -> float:
    """CPUs kept busy by other processes right now, from two samples of /proc/stat ``interval`` seconds
    apart (this process is idle meanwhile); the 1-minute load average where there is no /proc/stat
    (it lags: a process that just ended still counts)."""
    try:
        busy, total, cpus = _cpu_times()
        time.sleep(interval)
        busy_after, total_after, _ = _cpu_times()
    except OSError:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return cpus * (busy_after - busy) / max(total_after - total, 1)


def _cpus_and_busy() -> Tuple[int, float]:
    """The CPUs this process may run on, and how many CPUs other work keeps busy."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return available, _busy_cpus()


def automatic_threads(available: int, busy: float) -> int:
    """The CPUs available less those kept busy by other processes, at least 1: more torch threads than
    free cores stall at every parallel region."""
    return max(1, available - round(busy))


def set_threads(requested: Optional[int]) -> int:
    """Run torch on ``requested`` threads (``None``: :func:`automatic_threads`), one inter-op thread; print the choice."""
    if requested:
        threads, how = requested, "as asked"
    else:
        available, busy = _cpus_and_busy()
        threads, how = automatic_threads(available, busy), f"automatic: {available} CPUs available, {busy:.1f} busy with other work"
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # fixed by earlier parallel work in this process (main() called from Python)
            pass
    print(f"torch threads: {threads} ({how})", flush=True)
    return threads


@contextlib.contextmanager
def no_loading_bars() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bars for the duration, then restore their setting."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def demo(args: argparse.Namespace) -> None:
    """Explain the shipped LXMERT's answer to one easy-VQA test question and print the relevance."""
    from captum_mm.attr import GenericAttention
    from captum_mm.datasets.easy_vqa import GRID, EasyVQA, tokenizer

    dataset = EasyVQA("test")
    index = int(torch.randint(len(dataset), (1,), generator=torch.Generator().manual_seed(args.seed)))
    item = dataset[index]
    with no_loading_bars():
        model = zoo.load("lxmert-easyvqa")
    inputs = tuple(item[key][None] for key in ("input_ids", "visual_feats", "visual_pos"))
    explanation = GenericAttention(model).explain(inputs, additional_forward_args=(item["attention_mask"][None],))
    print(f"lxmert-easyvqa, question {index}: {dataset.questions[index]!r} -> {dataset.answers[int(explanation.target)]!r}")
    text, image = (values[0] / values[0].max().clamp(min=1e-12) for values in (explanation.text, explanation.image))
    tokens = tokenizer().convert_ids_to_tokens(item["input_ids"].tolist())
    print("text relevance (max 1):", "  ".join(f"{token} {value:.2f}" for token, value in zip(tokens, text.tolist())))
    print(f"image relevance ({GRID}x{GRID} regions, max 1):")
    for row in image.view(GRID, GRID).tolist():
        print("  " + " ".join(f"{value:4.2f}" for value in row))


def segmentation(args: argparse.Namespace) -> None:
    """DETR weakly-supervised segmentation (supplementary Algorithm 1) on a COCO-format dataset."""
    import json

    from transformers import DetrForObjectDetection
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    from captum_mm.attr.catalog import select_methods
    from captum_mm.metrics.segmentation import SegmentationEvaluator, format_table
    from captum_mm.metrics.distributed import init_distributed

    init_distributed()
    model = DetrForObjectDetection.from_pretrained(args.model).eval()
    processor = DetrImageProcessorPil.from_pretrained(args.processor or args.model)
    evaluator = SegmentationEvaluator(model, processor, args.images, args.annotations, threshold=args.threshold)
    image_ids = evaluator.image_ids(limit=args.limit)
    scores = evaluator.evaluate(select_methods(args.methods), image_ids, batch_size=args.batch_size)
    if scores is not None:
        print(format_table(scores))
        if args.output:
            Path(args.output).write_text(json.dumps(scores, indent=2))


def reproduce(args: argparse.Namespace) -> None:
    """The paper's tables and figures on the shipped models: perturbation tests, segmentation, gallery, report."""
    from captum_mm.study import Options
    from captum_mm.study import reproduce as run

    malformed = [item for item in args.checkpoint or [] if "=" not in item]
    if malformed:
        args.parser.error(f"--checkpoint takes NAME=PATH (e.g. lxmert-easyvqa=my/checkpoint), got {malformed}")
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint or [])
    try:
        options = Options(
            output=Path(args.output), models=args.models, methods=args.methods, samples=args.samples,
            images=args.images, gallery=args.gallery, seed=args.seed, checkpoints=checkpoints,
            images_dir=args.images_dir, annotations=args.annotations,
        )
    except ValueError as error:
        args.parser.error(str(error))
    set_threads(args.threads)
    with no_loading_bars():
        run(options)


def train(args: argparse.Namespace) -> None:
    """Retrain a shipped model with its seed; prints and saves the measured quality."""
    torch.set_num_threads(args.threads)
    options = {"epochs": args.epochs} if args.epochs else {}
    if args.limit is not None:
        if args.limit < 1:
            raise SystemExit(f"--limit takes a positive number of questions or scenes, got {args.limit}.")
        options["limit"] = args.limit
    print(zoo.recipe(args.name).train(Path(args.output or f"{args.name}-retrained"), seed=args.seed, **options))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the default of every option that has one."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        return action.help if action.default is None else super()._get_help_string(action)


def _methods_help() -> str:
    names = ", ".join(shlex.quote(name) + (f" ({method_alias(name)})" if method_alias(name) != name else "")
                      for name in every_method())
    return f"methods and ablations, by name (quoted as shown) or alias: {names}; default: all"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="captum-mm", description="Attention-based explanations of multimodal transformers.")
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = _HelpFormatter
    demo_parser = commands.add_parser("demo", help=demo.__doc__, description=demo.__doc__, formatter_class=defaults)
    demo_parser.add_argument("--seed", type=int, default=0, help="picks the question")
    demo_parser.set_defaults(run=demo)
    study = commands.add_parser("reproduce", help=reproduce.__doc__, description=reproduce.__doc__, formatter_class=defaults)
    study.add_argument("--output", default="captum_mm_output", help="folder for the report, JSON, CSV and figures")
    study.add_argument("--models", nargs="+", choices=zoo.NAMES, default=list(zoo.NAMES), help="shipped models to study")
    study.add_argument("--methods", nargs="+", type=method_name, metavar="METHOD", help=_methods_help())
    study.add_argument("--samples", type=positive_count, default=32, help="easy-VQA test questions per VQA model (a quarter for the generative VLM), test reviews for BERT")
    study.add_argument("--images", type=positive_count, default=100, help="validation scenes for DETR")
    study.add_argument("--gallery", type=positive_count, default=4, help="questions (reviews) in the gallery figure (heat maps)")
    study.add_argument("--seed", type=int, default=0, help="picks the questions and scenes")
    study.add_argument("--threads", type=positive_count,
                       help="torch threads (default: automatic, the CPUs available less those other processes keep busy)")
    study.add_argument("--checkpoint", action="append", metavar="NAME=PATH", help="use your own checkpoint for NAME")
    study.add_argument("--images-dir", help="your own COCO-format image folder for the DETR test")
    study.add_argument("--annotations", help="its instances json")
    study.set_defaults(run=reproduce, parser=study)
    trainer = commands.add_parser("train", help=train.__doc__)
    trainer.add_argument("name", choices=zoo.NAMES)
    trainer.add_argument("--output", help="checkpoint folder (default: NAME-retrained)")
    trainer.add_argument("--seed", type=int, default=0)
    trainer.add_argument("--epochs", type=int, help="default: as shipped")
    trainer.add_argument("--threads", type=int, default=1, help="torch threads")
    trainer.add_argument("--limit", type=int, help="use the first N questions/scenes of each split (a quick check)")
    trainer.set_defaults(run=train)
    segment = commands.add_parser("segmentation", help=segmentation.__doc__)
    segment.add_argument("--images", required=True, help="folder of the images (e.g. COCO val2017)")
    segment.add_argument("--annotations", required=True, help="COCO instances json with segmentations")
    segment.add_argument("--model", required=True, help="DetrForObjectDetection checkpoint folder or name")
    segment.add_argument("--processor", help="image processor folder (default: the model's)")
    segment.add_argument("--methods", nargs="+", help="methods and ablations (default: all)")
    segment.add_argument("--limit", type=int, help="evaluate the first N images only")
    segment.add_argument("--batch-size", type=int, default=4)
    segment.add_argument("--threshold", type=float, default=0.5, help="query-keeping threshold")
    segment.add_argument("--output", help="write the scores as JSON here")
    segment.set_defaults(run=segmentation)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
