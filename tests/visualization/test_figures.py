"""Visualisations return HTML strings and figures, headless."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from captum_mm.metrics.study import StudyResult
from captum_mm.visualization import (
    detection_masks_figure,
    plot_perturbation_curves,
    region_heatmap,
    region_relevance_image,
    relevance_gallery,
    text_records_html,
    text_relevance_html,
    text_relevance_record,
)

IMAGE = np.full((16, 16, 3), 200, dtype=np.uint8)


def test_text_relevance_in_shades_of_red():
    html = text_relevance_html(["[CLS]", "red", "shape"], torch.tensor([0.0, 1.0, 0.5]))
    assert "hsl(0, 75%, 60%)" in html  # the most relevant token: Captum's strongest red
    assert "hsl(0, 75%, 100%)" in html  # no relevance: white
    record = text_relevance_record(["what", "color"], [0.2, 0.4], predicted="red", probability=0.9)
    assert "what" in text_records_html([record]) and "hsl(0" in text_records_html([record])


def test_region_relevance_multiplies_the_image():
    relevance = torch.tensor([1.0, 0.0, 0.5, 0.0])  # a 2 x 2 grid
    weighted = region_relevance_image(IMAGE, relevance, (2, 2))
    assert weighted.shape == (16, 16, 3)
    assert np.allclose(weighted[:8, :8], 200 / 255) and np.allclose(weighted[:8, 8:], 0)
    assert np.allclose(weighted[8:, :8], 100 / 255)


def test_regions_need_not_divide_the_image():
    relevance = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.25, 0.0])  # a 2 x 3 grid over 10 x 10 pixels
    weighted = region_relevance_image(np.full((10, 10, 3), 255, dtype=np.uint8), relevance, (2, 3))
    assert weighted.shape == (10, 10, 3)
    assert np.allclose(weighted[:5, :4], 1) and np.allclose(weighted[:5, 4:7], 0) and np.allclose(weighted[:5, 7:], 0.5)
    assert np.allclose(weighted[5:, :4], 0) and np.allclose(weighted[5:, 4:7], 0.25)


def test_relevance_must_fill_the_grid():
    with pytest.raises(ValueError, match="relevance has 4 values; a 3x3 grid needs 9"):
        region_relevance_image(IMAGE, torch.rand(4), (3, 3))


def test_gallery_draws_every_token_of_a_long_question():
    tokens = ["[CLS]", "does", "the", "image", "not", "contain", "a", "blue", "shape", "?", "[SEP]"]
    gallery = relevance_gallery([IMAGE], [tokens], {"ours": (torch.rand(1, 11), torch.rand(1, 4))}, (2, 2))
    assert [text.get_text() for text in gallery.axes[1].texts] == tokens  # below the original image's row


def test_figures_are_built_headless():
    assert isinstance(region_heatmap(IMAGE, [1.0, 0.0, 0.5, 0.2], (2, 2), "patches"), Figure)
    gallery = relevance_gallery(
        [IMAGE, IMAGE], [["a", "b"], ["c"]], {"ours": (torch.rand(2, 2), torch.rand(2, 4))}, (2, 2), ["q1", "q2"]
    )
    assert isinstance(gallery, Figure) and len(gallery.axes) == 4  # the originals, then a row per method
    assert [axis.get_ylabel() for axis in gallery.axes[::2]] == ["image", "ours"]
    assert gallery.axes[0].images[0].get_array().tolist() == IMAGE.tolist()
    masks = detection_masks_figure(IMAGE, [np.random.rand(4, 4)], [np.ones((16, 16), bool)], ["circle"])
    assert len(masks.axes) == 4  # relevance and mask, each with a colour bar
    assert [masks.axes[0].get_ylabel(), masks.axes[1].get_ylabel()] == ["relevance", "mask (Algorithm 1)"]
    assert [axis.get_ylabel() for axis in masks.axes[2:]] == ["relevance / max", "mask"]


def test_curve_legends_sit_below_their_panels():
    result = StudyResult([0, 1], {name: [0.0, 0.5, 1.0] for name in ("negative image", "positive image", "positive text")})
    result.scores = {method: {setting: torch.rand(2, 3).round() for setting in result.steps} for method in ("ours", "rollout")}
    figure = plot_perturbation_curves(result)
    figure.canvas.draw()
    panels = [axis for axis in figure.axes if axis.get_visible()]
    assert len(panels) == 3 and [axis.get_title() for axis in panels] == [
        "negative image (higher is better)", "positive image (lower is better)", "positive text (lower is better)"]
    for axis in panels:
        legend, box = axis.get_legend().get_window_extent(), axis.get_window_extent()
        assert legend.y1 < box.y0 and legend.x0 >= box.x0 - 30 and legend.x1 <= box.x1 + 30


def test_identical_curves_share_one_line_and_a_method_keeps_its_colour():
    result = StudyResult([0, 1], {"negative image": [0.0, 0.5, 1.0], "positive image": [0.0, 0.5, 1.0]})
    same, other = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    result.scores = {"ours": {"negative image": same, "positive image": same},
                     "rollout": {"negative image": same, "positive image": other},
                     "Grad-CAM": {"negative image": other, "positive image": same}}
    negative, positive = plot_perturbation_curves(result).axes
    assert [line.get_label() for line in negative.lines] == ["ours = rollout (50.00)", "Grad-CAM (12.50)"]  # trapezoids of 50, 0, 0
    assert [line.get_label() for line in positive.lines] == ["ours = Grad-CAM (50.00)", "rollout (12.50)"]
    assert [line.get_color() for line in positive.lines] == ["C0", "C1"] and negative.lines[1].get_color() == "C2"
    assert negative.lines[0].get_ydata().tolist() == [100.0, 50.0, 0.0]
