"""BLIP-2: generated tokens explained over the image through the LM's query tokens, the Q-Former's
cross-attention to the image (Eq. 10) and its queries' self-attention (docs/METHOD.md)."""

import pytest
import torch

from captum_mm.attr import GenericAttention, PartialLRP, RawAttention
from captum_mm.attr.engine import forward_pass
from captum_mm.generation import generation_forward
from captum_mm.models.capture import use_eager_attention
from helpers import IMAGE_GRID, IMAGE_TOKEN, assert_each_sample_as_alone, assert_same_state, blip2, model_state, vlm_prompts
from methods_under_test import METHODS

CONTINUATION = [[5, 6], [7], [8, 9]]
#: The LRP methods wait for the vision tower's fused q/k/v projection (see the adapter).
ATTENTION_METHODS = sorted(name for name in METHODS if "lrp" not in name and "transformer" not in name)


def test_schedule_vision_then_queries_then_the_lm():
    model = blip2(vision_layers=2, qformer_layers=2, layers=2)
    forward, arguments, target = generation_forward(model, vlm_prompts(), CONTINUATION, False, None)
    with forward_pass(model, forward, arguments, target=target, needs=RawAttention.needs) as run:
        schedule = run.schedule
    assert [(e.query, e.key) for e in schedule.events] == (
        [("vision", "vision")] * 2 + [("query", "query"), ("query", "vision")] * 2 + [("sequence", "sequence")] * 2
    )
    image = schedule.outputs["image"]
    assert image.through.pair == ("query", "vision") and image.through.columns == slice(1, None)
    assert schedule.sizes == {"sequence": 24, "vision": 17, "query": 16}


def test_raw_attention_image_is_the_lm_row_times_the_last_cross_attention():
    model = blip2()
    batch = vlm_prompts(batch=1)
    explanation = RawAttention(model).explain(batch, continuation=[[5]])
    ids = torch.cat([batch["input_ids"], torch.tensor([[5]])], dim=1)
    cross = {}
    last = model.qformer.encoder.layer[-1].crossattention.attention
    handle = last.register_forward_hook(lambda module, args, output: cross.__setitem__("map", output[1]))
    restore = use_eager_attention(model)
    try:
        language = model(input_ids=ids, pixel_values=batch["pixel_values"], output_attentions=True).language_model_outputs
    finally:
        restore.remove()
        handle.remove()
    row = language.attentions[-1][0].mean(0)[ids.shape[1] - 2]
    expected = row[2:18] @ cross["map"][0].mean(0)[:, 1:]  # query token i is image token i; patches without [CLS]
    torch.testing.assert_close(explanation.image[0, 0].flatten(), expected)


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_batched_with_left_padding_equals_each_sample_alone(method):
    model = blip2()
    explanation = assert_each_sample_as_alone(lambda: METHODS[method](model), vlm_prompts(), CONTINUATION)
    assert explanation.image.shape == (3, 2, *IMAGE_GRID)


def test_generate_then_explain_and_the_model_left_as_it_was():
    model = blip2()
    batch = vlm_prompts()
    with torch.no_grad():
        model(**batch)  # HF installs its own output-capture hooks on a model's first forward
    before = model_state(model)
    arguments = {"max_new_tokens": 3, "do_sample": False, "suppress_tokens": [IMAGE_TOKEN]}
    generated = GenericAttention(model).explain(batch, generate=True, generation_args=arguments)
    with torch.no_grad():
        tokens = model.generate(**batch, **arguments)[:, batch["input_ids"].shape[1]:]
    assert torch.equal(generated.target, tokens)
    with pytest.raises(NotImplementedError, match="fused linear layer"):
        PartialLRP(model).explain(batch, continuation=CONTINUATION)
    with pytest.raises(ValueError, match=r"needs 8 image tokens \(id 3\), one per image feature; samples \[0, 1, 2\] have \[16, 16, 16\]"):
        GenericAttention(blip2(queries=8)).explain(batch, continuation=CONTINUATION)  # 8 queries, 16 image tokens
    assert_same_state(before, model_state(model))
