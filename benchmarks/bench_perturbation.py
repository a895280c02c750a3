"""The batched perturbation test against a one-sample-at-a-time loop doing the same work.

    python -m benchmarks.bench_perturbation [--quick]

Same model, same samples, same relevance, all steps of the negative image test: the loop
runs one forward per sample and step with the tokens dropped (as the reference scripts do),
the batched test packs samples x steps into forwards of 64 rows.
"""


import torch
from transformers import LxmertConfig, LxmertForQuestionAnswering

from benchmarks._measure import benchmark_arguments, median_seconds
from captum_mm.metrics import DEFAULT_STEPS, LXMERT_IMAGE, perturbation_curve
from captum_mm.metrics.perturbation import kept_tokens

SIZES = {
    "small (hidden 128, 2/1/2 layers)": dict(hidden_size=128, num_attention_heads=4, intermediate_size=256, l_layers=2, r_layers=1, x_layers=2),
    "released (hidden 768, 9/5/5 layers)": {},
}


def inputs_for(config, samples):
    return {
        "input_ids": torch.randint(1000, config.vocab_size, (samples, 20)),
        "attention_mask": torch.ones(samples, 20, dtype=torch.long),
        "visual_feats": torch.randn(samples, 36, config.visual_feat_dim),
        "visual_pos": torch.rand(samples, 36, 4),
    }


def looped(forward, inputs, relevance):
    with torch.no_grad():
        for index in range(relevance.shape[0]):
            alone = {name: value[index:index + 1] for name, value in inputs.items()}
            for step in DEFAULT_STEPS:
                keep = kept_tokens(relevance[index:index + 1], torch.ones(1, relevance.shape[1]), step, False, False)[0]
                positions = torch.nonzero(keep).flatten()
                if positions.numel() == 0:
                    positions = torch.zeros(1, dtype=torch.long)  # HF LXMERT needs one region
                forward(**{**alone, "visual_feats": alone["visual_feats"][:, positions], "visual_pos": alone["visual_pos"][:, positions]})


def shipped_case(samples):
    """The shipped lxmert-easyvqa on easy-VQA test questions (64 regions of 23 features)."""
    from captum_mm import zoo
    from captum_mm.datasets.easy_vqa import EasyVQA
    from captum_mm.metrics.study import pad_collate

    dataset = EasyVQA("test")
    batch, _ = pad_collate([dataset[i] for i in range(samples)])
    return zoo.load("lxmert-easyvqa"), batch


def main() -> None:
    args = benchmark_arguments(__doc__.splitlines()[0], "small model only, few samples")
    print(f"{'model':40s} samples  batched/s  looped/s  ratio (goal >= 10)")
    cases = list(SIZES.items())[: 1 if args.quick else None] + ([] if args.quick else [("shipped lxmert-easyvqa (64 regions)", None)])
    for name, size in cases:
        samples = 8 if args.quick else (16 if "released" in name else 128)
        if size is None:
            model, inputs = shipped_case(samples)
        else:
            config = LxmertConfig(num_qa_labels=100, **size)
            model, inputs = LxmertForQuestionAnswering(config).eval(), inputs_for(config, samples)
        regions = inputs["visual_feats"].shape[1]
        relevance = torch.rand(samples, regions)

        def forward(**kwargs):
            return model(**kwargs).question_answering_score

        score = lambda logits, rows: logits.argmax(-1).double()  # noqa: E731
        batched = median_seconds(lambda: perturbation_curve(forward, inputs, relevance, LXMERT_IMAGE, score, False, batch_size=64), repeats=2)
        loop = median_seconds(lambda: looped(forward, inputs, relevance), repeats=2)
        print(f"{name:40s} {samples:7d}  {samples / batched:9.1f}  {samples / loop:8.1f}  {loop / batched:5.1f}")


if __name__ == "__main__":
    main()
