import os
import re
import subprocess
import sys
import time

import pytest
import torch

from captum_mm import cli
from captum_mm.attr.catalog import ABLATIONS, PAPER_METHODS, method_alias, select_methods
from captum_mm.cli import automatic_threads, main, method_name, set_threads


def test_demo_prints_relevance(capsys):
    main(["demo"])
    printed = capsys.readouterr().out
    assert "text relevance" in printed and "image relevance" in printed


def test_segmentation_command(tmp_path, capsys):
    import json

    from captum_mm.datasets import write_shapes_coco
    from helpers import detr
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    annotations = write_shapes_coco(tmp_path, 2, seed=1, size=64)
    detr(num_queries=4).save_pretrained(tmp_path / "model")
    DetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(tmp_path / "model")
    main([
        "segmentation", "--images", str(tmp_path / "val"), "--annotations", str(annotations), "--model",
        str(tmp_path / "model"), "--methods", "ours", "rollout", "--threshold", "0.0", "--output", str(tmp_path / "out.json"),
    ])
    assert "IoU 0.50:0.05:0.95 (COCO)" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "out.json").read_text())) == {"ours", "rollout"}


def test_demo_hides_the_weight_loading_bars_and_restores_them(capsys):
    from transformers.utils import logging

    main(["demo"])
    assert "Loading weights" not in capsys.readouterr().err
    assert logging.is_progress_bar_enabled()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--samples", "0"], "argument --samples: takes a positive whole number, got '0'"),
        (["--samples", "-3"], "argument --samples: takes a positive whole number, got '-3'"),
        (["--images", "abc"], "argument --images: takes a positive whole number, got 'abc'"),
        (["--gallery", "2.5"], "argument --gallery: takes a positive whole number, got '2.5'"),
        (["--threads", "0"], "argument --threads: takes a positive whole number, got '0'"),
        (["--methods", "ours", "ours-lrp"], "argument --methods: unknown method 'ours-lrp'; choose from ours, ours-with-lrp,"),
        (["--checkpoint", "detr-shapes"], r"--checkpoint takes NAME=PATH"),
        (["--models", "detr-shapes", "--checkpoint", "lxmert-easyvqa=x"], r"Checkpoints given for \['lxmert-easyvqa'\]"),
    ],
)
def test_bad_reproduce_arguments_are_one_line_usage_errors(tmp_path, capsys, arguments, message):
    output = tmp_path / "study"
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--output", str(output), *arguments])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("captum-mm reproduce: error: ") and re.search(message, error[-1])
    assert "Traceback" not in "\n".join(error) and not output.exists()


def test_reproduce_help_shows_defaults_and_method_names(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse would wrap names at their hyphens
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--help"])
    assert exit_info.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    for text in ("(default: 32)", "(default: 100)", "(default: captum_mm_output)", "torch threads (default: automatic",
                 "'ours w/ LRP' (ours-with-lrp)", "'Eq.10 w/o self-att.' (eq10-without-self-att)", "rollout,"):
        assert text in shown
    assert "(default: None)" not in shown


def test_methods_are_taken_by_alias():
    assert list(select_methods(["ours-with-lrp", "Grad-CAM", "without-norm"])) == ["ours w/ LRP", "Grad-CAM", "w/o norm."]
    assert method_name("eq10-without-self-att") == "Eq.10 w/o self-att."
    aliases = [method_alias(name) for name in {**PAPER_METHODS, **ABLATIONS}]
    assert len(set(aliases)) == len(aliases) and all(re.fullmatch(r"[a-z0-9-]+", alias) for alias in aliases)


@pytest.mark.parametrize("cpus, busy, threads", [(4, 0.2, 4), (4, 1.4, 3), (2, 1.6, 1), (2, 7.0, 1)])
def test_automatic_threads_leave_the_cores_busy_elsewhere_alone(cpus, busy, threads):
    assert automatic_threads(cpus, busy) == threads


def test_busy_cpus_from_two_samples_of_proc_stat(monkeypatch):
    samples = iter([(1000, 4000, 2), (1100, 4200, 2)])  # 100 of 200 jiffies busy on 2 CPUs: one CPU busy
    monkeypatch.setattr(cli, "_cpu_times", lambda: next(samples))
    assert cli._busy_cpus(interval=0.0) == pytest.approx(1.0)


def test_busy_cpus_sees_a_busy_process():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert cli._busy_cpus() > 0.6
    finally:
        spinner.kill()
        spinner.wait()


def test_set_threads_prints_its_choice(monkeypatch, capsys):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr(cli, "_busy_cpus", lambda: 1.2)
    try:
        assert set_threads(None) == 2 and torch.get_num_threads() == 2
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)
    assert torch.get_num_interop_threads() == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "torch threads: 2 (automatic: 3 CPUs available, 1.2 busy with other work)"
    assert printed[1] == "torch threads: 1 (as asked)"


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_lets_idle_openmp_threads_sleep(given, expected):
    import subprocess
    import sys

    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if given:
        environment["OMP_WAIT_POLICY"] = given
    code = "import sys, os, captum_mm.cli; print('torch' in sys.modules, os.environ['OMP_WAIT_POLICY'])"
    shown = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True).stdout
    assert shown.split() == ["True", expected]
