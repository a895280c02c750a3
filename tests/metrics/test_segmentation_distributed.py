"""The segmentation evaluator under torchrun (2 CPU ranks, gloo) gives what one process gives."""

import json
from pathlib import Path

from captum_mm.datasets import write_shapes_coco

from script_runner import run_script

SCRIPT = Path(__file__).with_name("segmentation_script.py")


def test_two_ranks_equal_one_process(tmp_path):
    write_shapes_coco(tmp_path, 5, seed=7, size=64)
    run_script(SCRIPT, str(tmp_path), str(tmp_path / "one.json"), cwd=tmp_path)
    run_script(SCRIPT, str(tmp_path), str(tmp_path / "two.json"), cwd=tmp_path, ranks=2)
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert one == two and set(one["ours"]) == {"coco", "paper"}
