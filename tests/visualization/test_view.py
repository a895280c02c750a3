"""The interactive view's page: its data, its escaping, its checks (the browser test runs it)."""

import json
import re
from dataclasses import replace

import helpers
import pytest
import torch
from view_cases import DETR_BOXES, GENERATED, HOSTILE

from captum_mm.attr import RawAttention
from captum_mm.visualization import view


def page_data(html: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" class="cmm-data">(.*?)</script>', html, re.S).group(1))


def test_generation_data_holds_each_tokens_relevance(generation):
    runs, page = generation
    data = page.data
    assert data["kind"] == "generation" and data["methods"] == list(runs)
    strips = {strip["name"]: strip for strip in data["strips"]}
    assert strips["generated"]["labels"] == GENERATED and strips["generated"]["causal"]
    assert strips["text"]["labels"][1] == HOSTILE and len(strips["text"]["labels"]) == 22
    for name, explanation in runs.items():
        for token in range(4):
            shown = data["values"][name][token]
            assert shown["strips"]["text"] == explanation.text[0, token].double().tolist()
            assert shown["strips"]["generated"] == explanation.generated[0, token].double().tolist()
            assert shown["images"] == [explanation.image[0, token].double().flatten().tolist()]
    assert data["images"][0]["grid"] == [4, 4] and data["images"][0]["src"].startswith("data:image/png;base64,")
    assert [element["score"] for element in data["elements"]] == pytest.approx(runs["AttentionRollout"].scores[0].tolist())


def test_user_text_cannot_end_the_data_script(generation):
    html = generation[1].html()
    data_script = re.search(r'class="cmm-data">(.*?)</script>', html, re.S).group(1)
    assert "<" not in data_script and ">" not in data_script and "&" not in data_script
    assert page_data(html) == json.loads(json.dumps(generation[1].data))  # the escapes decode to the same data
    assert "http://" not in html.replace('xmlns="http://', "") and "https://" not in html  # nothing fetched


def test_saved_page_and_notebook_fragment(generation, tmp_path):
    page = generation[1]
    path = page.save_html(tmp_path / "view.html")
    saved = path.read_text(encoding="utf-8")
    assert saved.startswith("<!DOCTYPE html>") and page_data(saved) == page_data(page._repr_html_())
    assert not page._repr_html_().startswith("<!DOCTYPE")
    ids = re.findall(r'id="(cmm-view-[0-9a-f]+)"', page._repr_html_() + page._repr_html_())
    assert len(set(ids)) == 2  # two views in one notebook do not share an element id
    assert f'getElementById("{ids[0]}")' not in saved


def test_silent_repeated_tokens_show_as_one(generation):
    runs = generation[0]
    tokens = ["<s>", "a"] + ["<image>"] * 16 + ["b", "c", "d", "e"]
    data = view(runs, tokens=tokens).data
    text = next(strip for strip in data["strips"] if strip["name"] == "text")
    assert text["labels"] == ["<s>", "a", "<image> \u00d716", "b", "c", "d", "e"]
    relevance = runs["TransformerAttribution"].text[0, 2].double()
    assert relevance[2:18].abs().max() == 0  # the image placeholders: no text relevance
    assert data["values"]["TransformerAttribution"][2]["strips"]["text"] == relevance[[0, 1, 2, 18, 19, 20, 21]].tolist()


def test_detection_data_boxes_and_masks(detection):
    runs, page = detection
    data = page.data
    assert data["kind"] == "detection" and len(data["elements"]) == 6
    assert data["elements"][1]["box"] == pytest.approx([0.4, 0.1, 0.6, 0.4])
    assert data["elements"][0]["label"].endswith("(query 0)")
    masks = data["masks"]["TransformerAttribution"]
    assert len(masks) == 6 and all(mask.startswith("data:image/png;base64,") for mask in masks)
    assert data["values"]["AttentionRollout"][3]["images"] == [runs["AttentionRollout"].image[0, 3].double().flatten().tolist()]


def test_classification_data(classification):
    explanation, page = classification
    data = page.data
    assert data["kind"] == "classification" and data["methods"] == ["ours"]
    assert data["elements"][0]["label"] == ["a", "b", "c"][int(explanation.target[0])]
    assert [strip["name"] for strip in data["strips"]] == ["text"] and data["images"][0]["grid"] == [4, 4]


def test_bad_arguments_say_what_is_accepted(generation, detection):
    runs = generation[0]
    with pytest.raises(ValueError, match="5 labels given for output 'text'.*22 tokens"):
        view(runs, tokens=["a"] * 5)
    with pytest.raises(ValueError, match="2 generated tokens given; sample 0 has 4"):
        view(runs, generated=["a", "b"])
    with pytest.raises(ValueError, match="2 images given for 1 image heat maps: give one image a map, or none"):
        view(runs, images=[torch.zeros(3, 8, 8)] * 2)
    with pytest.raises(ValueError, match=r"float image must lie in \[0, 1\], got values in \[-1, 2\]: pass uint8"):
        view(runs, images=[torch.linspace(-1, 2, 48).reshape(3, 4, 4)])
    with pytest.raises(ValueError, match="outside the batch of 2"):
        view(runs, sample=2)
    with pytest.raises(ValueError, match="has outputs .*view explanations of one batch"):
        view({"a": runs["AttentionRollout"], "b": detection[0]["AttentionRollout"]})
    other = replace(runs["AttentionRollout"], target=runs["AttentionRollout"].target + 1)
    with pytest.raises(ValueError, match="explains other classes or tokens"):
        view({"a": runs["AttentionRollout"], "b": other})
    with pytest.raises(ValueError, match="distinct names"):
        view(list(runs.values()), names=["same", "same"])
    with pytest.raises(TypeError, match="dict {method name: Explanation}"):
        view([torch.zeros(2)])
    with pytest.raises(ValueError, match="boxes are drawn for DETR explanations only"):
        view(runs, boxes=DETR_BOXES)
    with pytest.raises(ValueError, match=r"pred_boxes \[num_queries, 4\] \(at least 6 queries\), got shape \(3, 4\)"):
        view(detection[0], boxes=DETR_BOXES[:3])
    assert view(list(runs.values())).data["methods"] == ["method 1", "method 2"]
    assert view(detection[0], boxes=DETR_BOXES).data["masks"] is not None  # no image: a mask per 16-pixel cell


def test_a_shorter_continuation_shows_its_own_tokens_only():
    torch.manual_seed(0)
    explanation = RawAttention(helpers.llava()).explain(helpers.vlm_prompts(batch=2), continuation=[[5, 6, 7, 8], [9, 10]])
    data = view(explanation, sample=1).data
    generated = next(strip for strip in data["strips"] if strip["name"] == "generated")
    assert generated["labels"] == ["#9", "#10"] and len(data["elements"]) == 2
    assert data["values"]["method 1"][1]["strips"]["generated"] == explanation.generated[1, 1, :2].double().tolist()


def test_region_relevance_is_a_strip_on_its_own_scale():
    case = helpers.lxmert_case()
    explanation = RawAttention(case.forward, case.model).explain(case.inputs, additional_forward_args=case.additional)
    data = view(explanation, sample=2, tokens={"image": [f"box {index}" for index in range(5)]}).data
    strips = {strip["name"]: strip for strip in data["strips"]}
    assert strips["image"]["labels"] == [f"box {index}" for index in range(5)] and strips["image"]["scale"] == "image"
    assert strips["text"]["labels"][0] == "text 0" and strips["text"]["scale"] == "text" and data["images"] == []
    assert data["values"]["method 1"][0]["strips"]["image"] == explanation.image[2].double().tolist()


def test_a_prompt_holding_fewer_images_than_the_batch_shows_its_own(several_images):
    explanation, page = several_images
    assert explanation.image.shape[2] == 2 and explanation.image[1, :, 1].abs().max() == 0  # its missing second image
    assert [image["scale"] for image in page.data["images"]] == ["image", "image"]
    picture = torch.rand(3, 32, 32)
    data = view(explanation, sample=1, images=[picture]).data
    assert len(data["images"]) == 1 and data["values"]["method 1"][0]["images"] == [explanation.image[1, 0, 0].double().flatten().tolist()]
    with pytest.raises(ValueError, match="1 images given for 2 image heat maps.*fewer only where the maps past them are all zero"):
        view(explanation, sample=0, images=[picture])
