"""Every tutorial notebook runs top to bottom (on CPU, offline, with the shipped models)."""

import re
import subprocess
import sysconfig
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))


def test_there_are_tutorials():
    assert len(NOTEBOOKS) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # committed stripped
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors
    for cell in notebook.cells:  # nothing shown twice (Captum's visualize_text displays its table itself)
        shown = [o["data"]["text/html"] for o in cell.get("outputs", []) if "text/html" in o.get("data", {})]
        assert len(shown) == len(set(shown)), f"a cell of {path.name} shows the same HTML twice"


def test_documented_command_runs_notebooks(tmp_path):
    """tutorials/README.md's command: its executable comes with the test extras, runs cells and fails on a cell's error."""
    readme = (ROOT / "tutorials" / "README.md").read_text()
    command = re.search(r'pip install -e "\.\[test\]" && (\S+) (tutorials/\S+\.ipynb)', readme)
    assert command, "tutorials/README.md no longer shows the command that runs a notebook"
    assert (ROOT / command.group(2)).is_file()
    executable = Path(sysconfig.get_path("scripts")) / command.group(1)  # where pip put the extras' console scripts
    assert executable.is_file(), f"{command.group(1)} is not installed with the test extras"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("open('ran', 'w').close()"), nbformat.v4.new_code_cell("1 / 0")]
    nbformat.write(notebook, tmp_path / "failing.ipynb")
    run = subprocess.run([str(executable), str(tmp_path / "failing.ipynb")], capture_output=True, text=True, timeout=300)
    assert (tmp_path / "ran").exists()  # the kernel runs in the notebook's folder
    assert run.returncode != 0 and "ZeroDivisionError" in run.stderr
