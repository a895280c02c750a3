"""The README's Python examples each run on their own, as pasted, and print what the README shows."""

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
#: A ```python block, optionally followed by a sentence starting "It prints" and a plain ``` block of its output.
EXAMPLE = re.compile(r"```python\n(?P<code>.*?)```\n(?:\nIt prints[^`]*?:\n\n```\n(?P<output>.*?)```)?", re.S)
NUMBER = re.compile(r"-?\d+(\.\d+)?")


def readme_examples() -> List[Tuple[int, str, Optional[str]]]:
    """``(line, code, shown output or None)`` of every Python block of the README."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group("code"), m.group("output")) for m in EXAMPLE.finditer(text)]


def same_printout(shown: str, printed: str) -> bool:
    """Equal word by word; numbers may differ by one unit of the last digit shown (float rounding across CPUs)."""
    shown_words, printed_words = shown.split(), printed.split()
    if len(shown_words) != len(printed_words):
        return False
    for expected, actual in zip(shown_words, printed_words):
        if expected == actual:
            continue
        if not (NUMBER.fullmatch(expected) and NUMBER.fullmatch(actual)):
            return False
        if abs(float(expected) - float(actual)) > 1.01 * 10 ** -len(expected.partition(".")[2]):
            return False
    return True


def test_readme_has_python_examples():
    assert len(readme_examples()) == README.read_text().count("```python") >= 3


def test_same_printout():
    assert same_printout("ours  84.22  1.0232", "ours 84.23 1.0231")
    assert not same_printout("ours  84.22", "ours 84.25")
    assert not same_printout("ours  84.22", "rollout 84.22")
    assert not same_printout("ours  84.22", "ours 84.22 1.0")


@pytest.mark.parametrize("line, code, shown", [pytest.param(*example, id=f"line{example[0]}") for example in readme_examples()])
def test_readme_example_runs_alone(line, code, shown, tmp_path):
    # A fresh interpreter in an empty folder, offline, one thread: only what the block itself sets up.
    # The three blocks take about 50 s of CPU together, 35 s of it the evaluation example's.
    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(README.parent), os.environ.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"README example at line {line} failed:\n{run.stderr[-3000:]}"
    if shown is not None:
        assert same_printout(shown, run.stdout), f"README example at line {line} printed\n{run.stdout}\ninstead of\n{shown}"


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README.read_text() and "\npython -m pytest -q\n" in ci
    assert "smoke_wheel.py" in ci.splitlines()[-1]  # then the built wheel, installed apart, from outside the tree


def test_docs_getting_started_shows_the_readme_commands():
    commands = [line for line in README.read_text().splitlines() if line.startswith("python3 -m venv .venv")]
    index = (README.parent / "docs" / "index.md").read_text()
    assert len(commands) == 2 and all(command in index for command in commands)


def test_contributing_worked_example_is_the_vit_adapter():
    contributing = (README.parent / "CONTRIBUTING.md").read_text()
    vit = (README.parent / "captum_mm" / "adapters" / "vit.py").read_text()
    lines = re.search(r"`captum_mm/adapters/vit.py`, (\d+) lines", contributing)
    assert lines and int(lines.group(1)) == len(vit.splitlines())
    example = re.search(r"```python\n(@register_adapter.*?)```", contributing, flags=re.S).group(1)
    assert example == vit[vit.index("@register_adapter"):]
