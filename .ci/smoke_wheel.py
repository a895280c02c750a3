"""The installed wheel, run from outside the source tree: it imports, loads every shipped checkpoint offline and
explains one input of each, and explains one input of every supported family (tiny random models from
``helpers.py``, copied beside this script)."""

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

import captum_mm  # noqa: E402
from captum_mm import zoo  # noqa: E402
from captum_mm.attr import GenericAttention  # noqa: E402

torch.set_num_threads(1)
installed = Path(captum_mm.__file__).resolve()
assert "site-packages" in installed.parts and not (Path.cwd() / "captum_mm").exists(), installed
print(f"captum_mm {captum_mm.__version__} from {installed.parent}")


def shipped() -> None:
    from captum_mm.datasets.easy_vqa import EasyVQA, for_visual_bert
    from captum_mm.datasets.reviews import SyntheticReviews
    from captum_mm.metrics.study import attention_method, pad_collate
    from captum_mm.zoo.train_llava import prompts

    questions = EasyVQA("test")
    batch, _ = pad_collate([questions[i] for i in range(2)])
    for name in zoo.NAMES:
        model = zoo.load(name)
        if name == "detr-shapes":
            explanation = GenericAttention(model).explain(torch.rand(1, 3, 128, 128), threshold=0.0).outputs()
        elif name == "bert-reviews":
            reviews, _ = pad_collate([SyntheticReviews("test")[i] for i in range(2)])
            explanation = attention_method(GenericAttention, model)(reviews, None)
        elif name == "llava-easyvqa":
            explanation = GenericAttention(model).explain(prompts(questions, [0, 1]), generate=True,
                                                          generation_args={"max_new_tokens": 3, "do_sample": False}).outputs()
        else:  # the VQA models, called with their keyword arguments
            inputs = for_visual_bert(batch) if name == "visualbert-easyvqa" else batch
            explanation = attention_method(GenericAttention, model)(inputs, None)
        print(f"shipped {name}: {sorted(explanation)}, quality {zoo.quality(name)}")


def families() -> None:
    import helpers

    for name, make in helpers.CASES.items():
        case = make()
        options = {"threshold": 0.0} if name == "detr" else {}
        explained = GenericAttention(case.forward, case.model).explain(case.inputs, additional_forward_args=case.additional, **options)
        print(f"family {name}: {sorted(explained.outputs())}")
    continuation = [[5, 6], [7], [8, 9]]
    ids, mask = helpers.prompt_batch()
    generative = {name: (helpers.language_model(name), {"input_ids": ids, "attention_mask": mask}) for name in helpers.LANGUAGE_MODELS}
    generative.update({name: (helpers.encoder_decoder_model(name), {"input_ids": ids, "attention_mask": mask})
                       for name in helpers.ENCODER_DECODERS})
    generative.update({name: (make(), helpers.family_prompts(name)) for name, make in helpers.VLMS.items()})
    generative.update({f"blip2-{lm}": (helpers.blip2(language=lm), helpers.vlm_prompts()) for lm in ("llama", "opt", "t5")})
    generative["blip-vqa"] = (helpers.blip_vqa(), helpers.blip_questions())
    generative["whisper"] = (helpers.whisper(), helpers.whisper_features())
    generative["mllama"] = (helpers.mllama(), helpers.mllama_prompts())
    generative["qwen3_vl_moe"] = (helpers.qwen3_vl(moe=True), helpers.family_prompts("qwen3_vl"))
    for name, (model, prompt) in generative.items():
        explained = GenericAttention(model).explain(prompt, continuation=continuation)
        print(f"family {name}: {sorted(explained.outputs())}")


def interactive_view() -> None:
    """The view's script and style ship in the wheel (package data)."""
    from captum_mm.datasets.easy_vqa import EasyVQA
    from captum_mm.visualization import view
    from captum_mm.zoo.train_llava import prompts

    explanation = GenericAttention(zoo.load("llava-easyvqa")).explain(
        prompts(EasyVQA("test"), [0]), generate=True, generation_args={"max_new_tokens": 3, "do_sample": False})
    page = view(explanation).html(full_page=True)
    assert 'class="cmm-data"' in page and "getElementById(" in page and ".cmm-view .cmm-token" in page, page[:300]
    print(f"interactive view: {len(page)} characters")


shipped()
families()
interactive_view()
print("wheel smoke test passed")
