"""The ``captum-mm`` command."""

import argparse
from pathlib import Path
from typing import List, Optional

import torch

from captum_mm import zoo


def demo(args: argparse.Namespace) -> None:
    """Explain the shipped LXMERT's answer to one easy-VQA test question and print the relevance."""
    from captum_mm.attr import GenericAttention
    from captum_mm.datasets.easy_vqa import GRID, EasyVQA, tokenizer

    dataset = EasyVQA("test")
    index = int(torch.randint(len(dataset), (1,), generator=torch.Generator().manual_seed(args.seed)))
    item = dataset[index]
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
    from captum_mm.metrics.study import init_distributed

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
    from captum_mm.reproduce import Options
    from captum_mm.reproduce import reproduce as run

    malformed = [item for item in args.checkpoint or [] if "=" not in item]
    if malformed:
        raise SystemExit(f"--checkpoint takes NAME=PATH (e.g. lxmert-easyvqa=my/checkpoint), got {malformed}.")
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint or [])
    run(Options(
        output=Path(args.output), models=args.models, methods=args.methods, samples=args.samples, images=args.images,
        gallery=args.gallery, seed=args.seed, checkpoints=checkpoints, images_dir=args.images_dir,
        annotations=args.annotations,
    ))


def train(args: argparse.Namespace) -> None:
    """Retrain a shipped model with its seed; prints and saves the measured quality."""
    import torch

    from captum_mm.zoo.train import train as run

    torch.set_num_threads(args.threads)
    options = {"epochs": args.epochs} if args.epochs else {}
    if args.limit is not None:
        if args.limit < 1:
            raise SystemExit(f"--limit takes a positive number of questions or scenes, got {args.limit}.")
        options["limit"] = args.limit
    print(run(args.name, Path(args.output or f"{args.name}-retrained"), seed=args.seed, **options))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="captum-mm", description="Attention-based explanations of multimodal transformers.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help=demo.__doc__)
    demo_parser.add_argument("--seed", type=int, default=0)
    demo_parser.set_defaults(run=demo)
    study = commands.add_parser("reproduce", help=reproduce.__doc__)
    study.add_argument("--output", default="captum_mm_output", help="folder for the report, JSON, CSV and figures")
    study.add_argument("--models", nargs="+", choices=zoo.NAMES, default=list(zoo.NAMES))
    study.add_argument("--methods", nargs="+", help="methods and ablations (default: all)")
    study.add_argument("--samples", type=int, default=256, help="easy-VQA test questions per VQA model")
    study.add_argument("--images", type=int, default=100, help="validation scenes for DETR")
    study.add_argument("--gallery", type=int, default=4, help="questions in the gallery figure")
    study.add_argument("--seed", type=int, default=0)
    study.add_argument("--checkpoint", action="append", metavar="NAME=PATH", help="use your own checkpoint for NAME")
    study.add_argument("--images-dir", help="your own COCO-format image folder for the DETR test")
    study.add_argument("--annotations", help="its instances json")
    study.set_defaults(run=reproduce)
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
