"""The ``captum-mm`` command."""

import argparse
from typing import List, Optional

import torch


def demo(args: argparse.Namespace) -> None:
    """Explain one answer of a small random-init LXMERT and print the relevance (no trained model yet)."""
    from transformers import LxmertConfig, LxmertForQuestionAnswering

    from captum_mm.attr import GenericAttention

    torch.manual_seed(args.seed)
    config = LxmertConfig(
        vocab_size=100, hidden_size=64, num_attention_heads=4, intermediate_size=128, l_layers=2, r_layers=1,
        x_layers=2, visual_feat_dim=16, num_qa_labels=5,
    )
    model = LxmertForQuestionAnswering(config).eval()
    input_ids = torch.randint(1, 100, (1, 8))
    visual_feats, visual_pos = torch.randn(1, 6, 16), torch.rand(1, 6, 4)
    explanation = GenericAttention(model).explain((input_ids, visual_feats, visual_pos))
    print("Random-init LXMERT (hidden 64, 2/1/2 layers): GenericAttention of its predicted answer "
          f"{explanation.target.item()}")
    print("text relevance :", " ".join(f"{value:.3g}" for value in explanation.text[0].tolist()))
    print("image relevance:", " ".join(f"{value:.3g}" for value in explanation.image[0].tolist()))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="captum-mm", description="Attention-based explanations of multimodal transformers.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help=demo.__doc__)
    demo_parser.add_argument("--seed", type=int, default=0)
    demo_parser.set_defaults(run=demo)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
