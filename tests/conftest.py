import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# A suite started in the background of a non-interactive shell (`pytest &`, `nohup`, some CI runners)
# inherits SIGINT ignored, and so would every Snakemake it starts: the Ctrl-C tests would meet a
# Snakemake that cannot be interrupted (it finishes the run, or waits out the test's timeout).
# Handled again here, the Snakemakes start with SIGINT's default, as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Under pytest-xdist the workers share the cores: torch's default of one thread per core in each
# worker (and in each job a workflow test starts) would oversubscribe them, OpenMP's threads spinning
# against each other. One thread each, unless the caller chose.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

WORKFLOW_FILES = ["Snakefile", "config", "rules", "core", "harness", "methods", "models", "data", "profiles", "report",
                  "budgets"]


def copy_workflow_files(dest):
    """The workflow's code and config, without results or downloads, into `dest`."""
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "downloads"))
        else:
            shutil.copy(src, dest / name)
    return dest


@pytest.fixture
def workdir(tmp_path):
    """A copy of the workflow (code and config, no results) to run Snakemake in."""
    return copy_workflow_files(tmp_path)


def snakemake(cwd, *args, check=True, timeout=900):
    """Run the workflow with the interpreter running the tests (the project's venv)."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc
