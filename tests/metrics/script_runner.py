"""Run a test script alone or under ``torchrun`` (2 CPU ranks), showing its output when it fails."""

import os
import subprocess
import sys
from pathlib import Path

# Failures of the local rendezvous itself (a port taken between torchrun choosing it and binding it),
# not of the code under test: such a run is started once more.
NETWORK_FAILURES = ("DistNetworkError", "EADDRINUSE", "Address already in use", "Connection refused", "RendezvousError")


def run_script(script: Path, *arguments: str, cwd: Path, ranks: int = 1) -> None:
    environment = dict(os.environ, PYTHONPATH=str(script.parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={ranks}"]
    for attempt in range(2):
        done = subprocess.run([*launcher, str(script), *arguments], cwd=cwd, env=environment, capture_output=True,
                              text=True, timeout=300)
        if done.returncode == 0:
            return
        if attempt or ranks == 1 or not any(failure in done.stderr for failure in NETWORK_FAILURES):
            raise AssertionError(f"{script.name} on {ranks} rank(s) exited with {done.returncode}:\n{done.stderr[-6000:]}")
