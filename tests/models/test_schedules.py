"""Each adapter's schedule (count, order, kind and modalities of events) against docs/METHOD.md."""

import pytest
import torch

from captum_mm.attr import GenericAttention
from captum_mm.attr.engine import forward_pass
from captum_mm.models import TargetOptions
from helpers import detr_case, lxmert_case, visual_bert_case


def schedule_of(case, target_options=TargetOptions()):
    with forward_pass(case.model, case.forward, case.inputs, case.additional, target_options=target_options) as forward:
        forward.record.extras["logits"] = forward.logits
        return forward.schedule, forward.record


def kinds(schedule):
    return [tuple((event.query, event.key) for event in step) for step in schedule.steps]


TT, II, TI, IT = ("text", "text"), ("image", "image"), ("text", "image"), ("image", "text")


@pytest.mark.parametrize("l_layers, r_layers, x_layers", [(1, 1, 1), (2, 1, 2), (3, 2, 3), (0, 1, 2)])
def test_lxmert_schedule(l_layers, r_layers, x_layers):
    case = lxmert_case(l_layers=l_layers, r_layers=r_layers, x_layers=x_layers)
    schedule, record = schedule_of(case)
    expected = [(TT,)] * l_layers + [(II,)] * r_layers
    expected += [(TI, IT), (TT,), (II,)] * (x_layers - 1) + [(TI,), (TT,)]
    assert kinds(schedule) == expected
    # every attention call was recorded, the shared cross-attention module once per direction
    assert len(record.calls) == l_layers + r_layers + 4 * x_layers
    cross = [call for call in record.calls if ".visual_attention." in call.site]
    assert [call.count for call in cross] == [0, 1] * x_layers
    text_length, regions = case.inputs[0].shape[1], case.inputs[1].shape[1]
    for event in schedule.events:
        probs = record.calls[event.call].probs
        sizes = {"text": text_length, "image": regions}
        assert probs.shape == (3, 4, sizes[event.query], sizes[event.key])
    # events keep forward order
    calls = [event.call for event in schedule.events]
    assert calls == sorted(calls)
    assert {name: (spec.row, spec.key) for name, spec in schedule.outputs.items()} == {"text": TT, "image": TI}
    assert schedule.outputs["image"].rows.tolist() == [0, 0, 0]  # the [CLS] row
    assert schedule.masks["text"][1].tolist() == [True] * 4 + [False] * 2


@pytest.mark.parametrize("layers", [1, 3])
def test_visual_bert_schedule(layers):
    case = visual_bert_case(layers=layers)
    schedule, record = schedule_of(case)
    assert kinds(schedule) == [(("joint", "joint"),)] * layers
    assert schedule.sizes == {"joint": 6 + 5}
    # question answering reads the last question token before [SEP]: attention_mask.sum() - 2
    assert schedule.outputs["text"].rows.tolist() == [4, 2, 4] and schedule.outputs["image"].rows.tolist() == [4, 2, 4]
    assert schedule.outputs["text"].columns == slice(0, 6)
    assert schedule.outputs["image"].columns == slice(6, 11)


def test_visual_bert_pooler_heads_read_cls():
    from transformers import VisualBertForVisualReasoning

    case = visual_bert_case(cls=VisualBertForVisualReasoning)
    schedule, _ = schedule_of(case)
    assert schedule.outputs["text"].rows.tolist() == [0, 0, 0]


@pytest.mark.parametrize("encoder_layers, decoder_layers", [(1, 1), (2, 3)])
def test_detr_schedule(encoder_layers, decoder_layers):
    case = detr_case(encoder_layers=encoder_layers, decoder_layers=decoder_layers)
    schedule, record = schedule_of(case, TargetOptions(single=True))
    qq, qi = ("query", "query"), ("query", "image")
    assert kinds(schedule) == [(II,)] * encoder_layers + [(qq,), (qi,)] * decoder_layers
    height, width = 2, 3  # a 64 x 96 image through a stride-32 backbone
    assert schedule.sizes == {"image": height * width, "query": 6}
    assert schedule.outputs["image"].grid == (height, width)
    assert schedule.outputs["image"].pair == ("query", "image")
    best = record.extras["logits"].softmax(-1)[..., :-1].max(-1).values.argmax(-1)
    assert torch.equal(schedule.outputs["image"].rows, best)


@pytest.mark.parametrize("layers", [1, 3])
def test_vit_and_bert_schedules(layers):
    from helpers import bert_case, vit_case

    vit_schedule, _ = schedule_of(vit_case(layers=layers))
    assert kinds(vit_schedule) == [(II,)] * layers and vit_schedule.sizes == {"image": 1 + 16}
    readout = vit_schedule.outputs["image"]
    assert readout.pair == ("image", "image") and readout.columns == slice(1, None) and readout.grid == (4, 4)
    assert readout.rows.tolist() == [0, 0, 0]
    bert_schedule, _ = schedule_of(bert_case(layers=layers))
    assert kinds(bert_schedule) == [(TT,)] * layers and bert_schedule.outputs["text"].rows.tolist() == [0, 0, 0]
    assert bert_schedule.masks["text"][1].tolist() == [True] * 4 + [False] * 2


@pytest.mark.parametrize("layers", [1, 2])
def test_clip_schedule_has_both_towers_read_at_class_and_end_of_text(layers):
    from helpers import clip_case

    case = clip_case(layers=layers)
    schedule, record = schedule_of(case)
    assert sorted(kinds(schedule)) == sorted([(II,)] * layers + [(TT,)] * layers)
    assert schedule.outputs["image"].pair == ("image", "image") and schedule.outputs["image"].grid == (4, 4)
    assert schedule.outputs["text"].pair == ("text", "text")
    assert schedule.outputs["text"].rows.tolist() == (case.additional[0].sum(1) - 1).tolist()  # end of text
    assert record.extras["logits"].shape == (3, 3)


@pytest.mark.parametrize("layers", [1, 2])
def test_vilt_schedule_maps_sampled_patches_to_the_grid(layers):
    from helpers import vilt_case

    case = vilt_case(layers=layers)
    schedule, record = schedule_of(case)
    assert kinds(schedule) == [(("joint", "joint"),)] * layers
    assert schedule.sizes == {"joint": 6 + 1 + 16}
    image = schedule.outputs["image"]
    assert image.columns == slice(7, 23) and image.grid == (4, 4)
    assert sorted(image.positions[0].tolist()) == list(range(16))  # every patch once, in ViLT's random order
    assert schedule.outputs["text"].columns == slice(0, 6) and schedule.outputs["text"].rows.tolist() == [0, 0, 0]


@pytest.mark.parametrize("image_size, patch_size, grid", [((32, 48), 8, (4, 6)), (32, 16, (2, 2))])
def test_vit_grid_follows_image_and_patch_size(image_size, patch_size, grid):
    from helpers import Case, vit

    model = vit(image_size=image_size, patch_size=patch_size)
    size = image_size if isinstance(image_size, tuple) else (image_size, image_size)
    pixels = torch.randn(2, 3, *size)
    schedule, _ = schedule_of(Case("vit", model, model, (pixels,), (), None, {}))
    assert schedule.sizes == {"image": 1 + grid[0] * grid[1]} and schedule.outputs["image"].grid == grid
    assert GenericAttention(model).explain(pixels).image.shape == (2, *grid)


def test_clip_towers_of_different_depths():
    from helpers import clip_case

    schedule, _ = schedule_of(clip_case(layers=1, vision_layers=3))
    assert sorted(kinds(schedule)) == sorted([(II,)] * 3 + [(TT,)])


def test_vilt_with_fewer_sampled_patches_than_the_grid():
    from helpers import vilt_case

    case = vilt_case()
    case.model.config.max_image_length = 8
    schedule, _ = schedule_of(case)
    image = schedule.outputs["image"]
    assert schedule.sizes == {"joint": 6 + 1 + 8} and image.columns == slice(7, 15) and image.grid == (4, 4)
    for positions in image.positions:
        assert len(set(positions.tolist())) == 8 and all(0 <= p < 16 for p in positions.tolist())
