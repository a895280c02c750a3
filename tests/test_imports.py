"""Every module of the package imports first, on its own (no import cycle depends on import order)."""

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import captum_mm

names = [info.name for info in pkgutil.walk_packages(captum_mm.__path__, "captum_mm.")]
assert len(names) > 40 and "captum_mm.generation" in names, names
failed = {}
for name in names:
    for loaded in [module for module in sys.modules if module.startswith("captum_mm.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ImportError as error:
        failed[name] = str(error)
print(failed)
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_first_on_its_own():
    # in a separate interpreter: dropping the package's modules here would split the test session's classes
    run = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
