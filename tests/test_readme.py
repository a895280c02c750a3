"""The README's usage example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    namespace = {}  # the README reads top to bottom: later examples use earlier names
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README.read_text() and ci.rstrip().endswith("python -m pytest -q")


def test_contributing_worked_example_is_the_vit_adapter():
    contributing = (README.parent / "CONTRIBUTING.md").read_text()
    vit = (README.parent / "captum_mm" / "models" / "vit.py").read_text()
    lines = re.search(r"`captum_mm/models/vit.py`, (\d+) lines", contributing)
    assert lines and int(lines.group(1)) == len(vit.splitlines())
    example = re.search(r"```python\n(@register_adapter.*?)```", contributing, flags=re.S).group(1)
    assert example == vit[vit.index("@register_adapter"):]
