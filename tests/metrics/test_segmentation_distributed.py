"""The segmentation evaluator under torchrun (2 CPU ranks, gloo) gives what one process gives."""

import json
import os
import subprocess
import sys
from pathlib import Path

from captum_mm.datasets import write_shapes_coco

SCRIPT = Path(__file__).with_name("segmentation_script.py")


def run(*command, cwd):
    environment = dict(os.environ, PYTHONPATH=str(SCRIPT.parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(command, check=True, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def test_two_ranks_equal_one_process(tmp_path):
    write_shapes_coco(tmp_path, 5, seed=7, size=64)
    run(sys.executable, str(SCRIPT), str(tmp_path), str(tmp_path / "one.json"), cwd=tmp_path)
    run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT), str(tmp_path),
        str(tmp_path / "two.json"), cwd=tmp_path)
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert one == two and set(one["ours"]) == {"coco", "paper"}
