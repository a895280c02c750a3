"""The study runner: seeded selection, JSON, and torchrun sharding giving what one process gives."""

import json
from pathlib import Path

import pytest
import torch

from captum_mm.datasets.batches import pad_collate
from captum_mm.metrics.study import select_samples

from script_runner import run_script

SCRIPT = Path(__file__).with_name("study_script.py")


def test_one_process_and_two_torchrun_ranks_give_the_same_study(tmp_path):
    run_script(SCRIPT, str(tmp_path / "one.json"), cwd=tmp_path)
    run_script(SCRIPT, str(tmp_path / "two.json"), cwd=tmp_path, ranks=2)
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert one == two
    assert len(one["samples"]) == 9 and set(one["methods"]) == {"generic", "raw"}
    curve = one["methods"]["generic"]["negative image"]
    assert len(curve["accuracy"]) == 4 and 0.0 <= curve["auc"] <= 100.0
    assert list(one["methods"]["raw"]) == ["negative image", "positive image", "negative text", "positive text"]


def test_seeded_selection():
    assert select_samples(10, 4, seed=1) == select_samples(10, 4, seed=1)
    assert select_samples(10, 4, seed=1) != select_samples(10, 4, seed=2)
    assert sorted(select_samples(5, None, seed=0)) == list(range(5))
    with pytest.raises(ValueError, match="empty"):
        select_samples(0, 3, seed=0)


def test_pad_collate_right_pads_tokens():
    items = [
        {"input_ids": torch.tensor([5, 6, 7]), "attention_mask": torch.ones(3, dtype=torch.long), "answer_scores": torch.tensor([1.0, 0.0])},
        {"input_ids": torch.tensor([8]), "attention_mask": torch.ones(1, dtype=torch.long), "answer_scores": torch.tensor([0.0, 1.0])},
    ]
    batch, scores = pad_collate(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert scores.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_without_a_process_group_one_rank_keeps_every_item_and_gathers_them_in_order():
    from captum_mm.metrics.distributed import gather, init_distributed, is_main_process, shard

    assert not init_distributed() and is_main_process()
    assert shard(["a", "b", "c"]) == [(0, "a"), (1, "b"), (2, "c")]
    assert gather({2: "c", 0: "a", 1: "b"}) == ["a", "b", "c"]
