"""`python -m harness train` through the warm server (harness/warm.py) is the same job as one run in
its own process: same output, files, exit status and run lock; a stopped or killed client stops
its job; an edit to the code starts a new server."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from harness import warm
from harness.deploy import deterministic_part
from core.locks import FileLock
from core.spec import RunSpec
from tests.conftest import ROOT

SPEC = RunSpec(scale="smoke", paper="t", row="r", seed=3, method="gmp", model="lenet300-100",
               dataset="synthetic", dataset_args={"train_size": 600, "test_size": 200},
               train={"epochs": 2, "batch_size": 50, "lr": 0.05}, budget={"sparsity": 0.5}, device="cpu")


@pytest.fixture(scope="module")
def sockets():
    """A temporary folder short enough for a socket's path (pytest's own can be too deep for one
    under pytest-xdist, where the server would then use /tmp, shared with other runs). One for the
    module: its tests share one server (7 s of imports to start) instead of starting one each; the
    server exits once the folder is gone."""
    with tempfile.TemporaryDirectory(prefix="hw-", dir="/tmp") as folder:
        yield Path(folder)


def harness_cmd(sockets, *argv, warm_on=True, **popen):
    """`python -m harness ARGV` with the module's own server (sockets under `sockets`)."""
    env = {**os.environ, "TMPDIR": str(sockets), "HARNESS_WARM": "1" if warm_on else "0",
           "HARNESS_WARM_IDLE_S": "60", "HARNESS_NO_BAR": "1"}
    for k in ("RANK", "SLURM_JOB_ID", "HARNESS_WARM_CHILD"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, "-m", "harness", *argv], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def servers(sockets):
    return list(sockets.glob(f"harness-warm-{os.getuid()}/*.sock"))


def train_argv(out):
    return ["train", "--spec", SPEC.result_json(), "--out", str(out), "--threads", "1",
            "--evaluate", str(out / "metrics.json")]


def test_wanted_only_for_training_and_evaluation_in_a_process_of_its_own():
    assert warm.wanted(["train", "--spec", "{}"], {}) and warm.wanted(["evaluate"], {})
    assert not warm.wanted(["aggregate"], {}) and not warm.wanted([], {})
    for env in ({"HARNESS_WARM": "0"}, {"RANK": "0"}, {"SLURM_JOB_ID": "7"}, {"HARNESS_WARM_CHILD": "1"}):
        assert not warm.wanted(["train"], env), env


def test_an_edit_to_the_code_keys_a_new_server(tmp_path, monkeypatch):
    for pkg in warm.PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(warm, "ROOT", tmp_path)
    before = warm.socket_path()
    assert warm.socket_path() == before
    os.utime(tmp_path / "methods" / "a.py", ns=(1, 1))
    assert warm.socket_path() != before


def test_a_temporary_folder_too_deep_for_a_socket_puts_it_under_tmp(monkeypatch, sockets):
    monkeypatch.setattr(tempfile, "tempdir", str(sockets / ("d" * 100)))
    assert warm.socket_path().parent == Path("/tmp") / f"harness-warm-{os.getuid()}"
    monkeypatch.setattr(tempfile, "tempdir", str(sockets))
    assert warm.socket_path().parent == sockets / f"harness-warm-{os.getuid()}"


@pytest.mark.slow
def test_a_job_through_the_server_is_the_job_in_its_own_process(tmp_path, sockets):
    before = servers(sockets)
    own = harness_cmd(sockets, *train_argv(tmp_path / "own"), warm_on=False)
    out_own, err_own = own.communicate(timeout=300)
    assert own.returncode == 0, err_own
    assert servers(sockets) == before        # a job in its own process starts no server
    for name in ("cold", "warm"):   # the first starts the server, the second finds it
        job = harness_cmd(sockets, *train_argv(tmp_path / name))
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
        assert len(servers(sockets)) == 1
        assert [l for l in out.splitlines() if not l.startswith("epoch")] == \
               [l for l in out_own.splitlines() if not l.startswith("epoch")]
        hist = [json.loads((tmp_path / d / "train.json").read_text())["history"] for d in ("own", name)]
        assert [{k: h[k] for k in ("loss", "test_top1", "sparsity")} for h in hist[0]] == \
               [{k: h[k] for k in ("loss", "test_top1", "sparsity")} for h in hist[1]]
        points = [json.loads((tmp_path / d / "metrics.json").read_text())["points"] for d in (name, "own")]
        assert [deterministic_part(p) for p in points[0]] == [deterministic_part(p) for p in points[1]]
    bad = harness_cmd(sockets, "train", "--spec", "{not json", "--out", str(tmp_path / "bad"))
    out, err = bad.communicate(timeout=120)
    assert bad.returncode == 1 and err.startswith("error: --spec: not valid JSON") and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_stopped_client_stops_its_job_and_frees_the_run_folder(tmp_path, sockets, how):
    out = tmp_path / "run"
    long = replace(SPEC, train={**SPEC.train, "epochs": 200})
    argv = ["train", "--spec", long.result_json(), "--out", str(out), "--threads", "1"]
    job = harness_cmd(sockets, *argv)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (out / ".lock").exists()
    job.send_signal(getattr(signal, how))
    job.wait(timeout=60)
    assert job.returncode != 0
    deadline = time.time() + 5          # the server stops the job within a select period
    lock = FileLock(out / ".lock")
    while not lock.acquire() and time.time() < deadline:
        time.sleep(0.05)
    assert lock.fd is not None, "the job still holds its run folder"
    lock.release()


REUSE_PROBE = """
import ctypes, resource
from harness import warm
warm.reuse_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_void_p,)
def buffer(n=4 << 20):                   # 4 MiB, above glibc's default mmap threshold (torch's
    p = libc.malloc(n)                   # CPU tensors come from the same malloc)
    ctypes.memset(p, 1, n)
    libc.free(p)
for _ in range(5):                       # warm up: the first buffer's pages fault in once
    buffer()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    buffer()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_faulting_its_pages_in_again():
    """A 4 MiB buffer (1,024 pages) made 100 times after reuse_freed_memory: glibc hands the freed
    memory back (a page fault or so), not an mmap per buffer (~102,000, as the 4 GiB thresholds
    once asked for gave: C ints, 0)."""
    faults = int(subprocess.run([sys.executable, "-c", REUSE_PROBE], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout)
    assert faults < 10 * 1024, faults
