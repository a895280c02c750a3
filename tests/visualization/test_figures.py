"""Visualisations return HTML strings and figures, headless."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from captum_mm.visualization import (
    detection_masks_figure,
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
    assert [text.get_text() for text in gallery.axes[0].texts] == tokens


def test_figures_are_built_headless():
    assert isinstance(region_heatmap(IMAGE, [1.0, 0.0, 0.5, 0.2], (2, 2), "patches"), Figure)
    gallery = relevance_gallery(
        [IMAGE, IMAGE], [["a", "b"], ["c"]], {"ours": (torch.rand(2, 2), torch.rand(2, 4))}, (2, 2), ["q1", "q2"]
    )
    assert isinstance(gallery, Figure) and len(gallery.axes) == 2
    masks = detection_masks_figure(IMAGE, [np.random.rand(4, 4)], [np.ones((16, 16), bool)], ["circle"])
    assert len(masks.axes) == 2
