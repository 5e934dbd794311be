"""Nothing computed is lost, and nothing lost is taken for current (issue #16, items 1, 2, 3, 5).

Settings that decide no result (data folder, device, published values, notes) re-run nothing; a
job that would fail for a reason known in advance stops the workflow, in one line, before any
output is deleted; a job that fails anyway leaves no table that lists what it lost; after a kill of
Snakemake the README's command (the same command again) ends with an uninterrupted run's numbers;
one process at a time trains into a run folder. The workflow tests run a tiny table (a shared dense
model and two runs that start from it) at smoke scale."""
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from core import io
from core.locks import FileLock, run_lock
from core.spec import RunSpec
from harness.trainer import Trainer
from tests.conftest import ROOT, copy_workflow_files, snakemake

TINY = """\
title: "tiny"
source: "tests/test_reliability.py"
scales:
  smoke:
    note: "generated data"
    datasets: {"*": synthetic}
    dataset_args: {train_size: 256, test_size: 128}
  laptop: {note: "unused"}
  paper: {note: "unused"}
pretrain:
  train: {epochs: 1, batch_size: 64, optimizer: adam, lr: 1.0e-3, schedule: constant}
defaults:
  dataset: mnist
  model: lenet300-100
  init: pretrain
  train: {epochs: 8, batch_size: 16, lr: 0.01}   # a few seconds a run: long enough to be killed mid-training
rows:
  dense: {method: dense, published: {top1: 98.4, source: "a paper"}}
  gmp: {method: gmp, budget: {sparsity: 0.5}, method_args: {end_epoch: 0.5}}
"""
COMMAND = ("results/tables.csv", "--config", "scale=smoke", "papers=[tiny]")   # the README's, one table
RUNS = "results/runs/smoke/tiny"
PARENT = f"{RUNS}/pretrain-lenet300-100-synthetic-b8ee99/seed0/model.pt"


def tiny_project(dest):
    copy_workflow_files(dest)
    (dest / "config/papers/tiny.yaml").write_text(TINY)
    return dest


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny table run once to the end: what every test below starts from or compares with."""
    project = tiny_project(tmp_path_factory.mktemp("finished"))
    snakemake(project, *COMMAND)
    return project


@pytest.fixture
def project(finished, tmp_path):
    """A copy of the finished project, file times and Snakemake's records included."""
    return shutil.copytree(finished, tmp_path / "project", symlinks=True)


def errors(proc):
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]


def planned(proc):
    """{rule: jobs} that Snakemake ran, or would run (-n); {} when there is nothing to be done."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    if "Nothing to be done" in text:
        return {}
    jobs = {}
    for line in text.split("Job stats:")[1].splitlines()[3:]:
        if not line.split() or line.split()[0] == "total":
            return jobs
        jobs[line.split()[0]] = int(line.split()[1])


def files(project):
    """Every file under results/ with its modification time and size."""
    return {str(p.relative_to(project)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in (project / "results").rglob("*") if p.is_file()}


def numbers(project):
    with open(project / "results/tables.csv") as f:
        return {(r["row"], r["seed"]): (r["top1"], r["sparsity"], r["nonzero_params"], r["flops"])
                for r in csv.DictReader(f)}


@pytest.mark.slow
def test_settings_that_decide_no_result_rerun_nothing(project):
    assert planned(snakemake(project, "-n", *COMMAND, "data_dir=/elsewhere", "device=cpu")) == {}
    runs = {k: v for k, v in files(project).items() if k.startswith(RUNS)}
    table = project / "config/papers/tiny.yaml"
    table.write_text(table.read_text().replace("top1: 98.4", "top1: 98.5")
                     .replace('note: "generated data"', 'note: "generated data, 1 epoch"'))
    assert planned(snakemake(project, *COMMAND)) == {"aggregate": 1}
    assert {k: v for k, v in files(project).items() if k.startswith(RUNS)} == runs
    with open(project / "results/tables.csv") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    assert rows["dense"]["published_top1"] == "98.5" and rows["gmp"]["notes"] == "generated data, 1 epoch"


@pytest.mark.slow
def test_a_parent_written_again_with_the_same_weights_keeps_its_childrens_checkpoints(tmp_path):
    """A run's checkpoint names the weights it started from, not the bytes of their file."""
    common = dict(scale="smoke", paper="t", seed=0, model="lenet300-100", dataset="synthetic", device="cpu",
                  dataset_args={"train_size": 256, "test_size": 128}, train={"epochs": 1, "batch_size": 64})
    Trainer(RunSpec(row="parent", method="dense", **common), tmp_path / "parent", log=lambda m: None).run()
    child = RunSpec(row="child", method="gmp", budget={"sparsity": 0.5}, init="parent", **common)
    Trainer(child, tmp_path / "child", init_path=tmp_path / "parent/model.pt", log=lambda m: None).run()
    saved = torch.load(tmp_path / "parent/model.pt", weights_only=False)
    saved["spec"].update(notes="a corrected note", data_dir="/elsewhere")       # another file, same weights
    io.save_torch(saved, tmp_path / "parent/model.pt")
    lines = []
    Trainer(child, tmp_path / "child", init_path=tmp_path / "parent/model.pt", log=lines.append).run()
    assert any(line.startswith("resumed from") for line in lines)


@pytest.mark.slow
def test_what_would_fail_a_job_stops_the_workflow_before_anything_is_deleted(project, finished):
    with open(project / PARENT, "r+b") as f:    # a shared dense model cut short: its children would fail
        f.truncate(1000)
    before = files(project)
    proc = snakemake(project, *COMMAND, check=False)
    assert proc.returncode == 1 and errors(proc) == [
        f"error: {PARENT} is unreadable (cut short, or not a model file), and 2 run(s) to be trained start from "
        f"it (dense, gmp); retrain it and them: add --forcerun {PARENT}"]
    assert "Traceback" not in proc.stderr and files(project) == before
    if not torch.cuda.is_available():
        proc = snakemake(project, *COMMAND, "device=cuda:0", "--forcerun", f"{RUNS}/dense/seed0/metrics.json",
                         check=False)
        assert proc.returncode == 1 and errors(proc) == [
            "error: device 'cuda:0': CUDA is not available on this machine; use device=auto or cpu"]
        assert files(project) == before
    snakemake(project, *COMMAND, "--forcerun", PARENT)     # the advice works
    assert numbers(project) == numbers(finished)


@pytest.mark.slow
def test_a_failed_job_leaves_no_table_that_lists_what_it_lost(project):
    table = project / "config/papers/tiny.yaml"
    good = table.read_text()
    table.write_text(good.replace("end_epoch: 0.5}", "end_epoch: 0.5}, train: {lr: 1.0e+12}"))  # gmp diverges
    proc = snakemake(project, *COMMAND, check=False)
    assert proc.returncode == 1 and not (project / f"{RUNS}/gmp/seed0/metrics.json").exists()
    assert not (project / "results/tables.csv").exists()     # no table still listing gmp's old numbers
    table.write_text(good)
    assert planned(snakemake(project, "-n", *COMMAND)) == {"train": 1, "aggregate": 1}


@pytest.mark.slow
def test_seeds_from_the_command_line(finished):
    assert planned(snakemake(finished, "-n", *COMMAND, "seeds=[0,1]")) == {"train": 3, "aggregate": 1}
    for seeds, error in [("[-1]", "-1 is less than the minimum of 0"), ("[a]", "'a' is not of type 'integer'")]:
        proc = snakemake(finished, "-n", *COMMAND, f"seeds={seeds}", check=False)
        assert proc.returncode == 1 and errors(proc) == [f"error: config/config.yaml (or --config) ['seeds'][0]: {error}"]


@pytest.mark.slow
def test_a_second_process_does_not_train_into_a_run_folder_in_use(tmp_path):
    run = tmp_path / "run"
    holder = FileLock(run / ".lock")
    assert holder.acquire()
    spec = RunSpec(scale="smoke", paper="t", row="r", seed=0, method="dense", model="lenet300-100",
                   dataset="synthetic", train={"epochs": 1})
    proc = subprocess.run([sys.executable, "-m", "harness", "train", "--spec", spec.result_json(), "--out", str(run)],
                          cwd=ROOT, capture_output=True, text=True)
    holder.release()
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: {run} is being trained by PID {os.getpid()} on host {socket.gethostname()}")
    assert not (run / "spec.json").exists()


def test_a_killed_holder_leaves_neither_its_lock_nor_its_temporary_files(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"kept")
    hold = ("import sys, time; from core.locks import run_lock\n"
            "with run_lock(sys.argv[1]):\n"
            "    open(sys.argv[1] + '/.checkpoint.pt.tmp-x1y2z3w4', 'w').write('half')\n"   # killed mid-write
            "    print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    (tmp_path / ".model.pt.k3j4h5g6").write_bytes(b"half")    # the name before the .tmp- mark
    proc.kill()
    proc.wait()
    with run_lock(tmp_path):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "checkpoint.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["ctrl-c", "sigkill-snakemake"])
def test_killed_snakemake_then_the_same_command_gives_the_uninterrupted_numbers(kill, project, finished):
    """Ctrl-C (SIGINT to Snakemake and its jobs), or SIGKILL to Snakemake alone: its lock stays
    behind and its running training jobs go on, orphaned, until they end. The shared dense model
    is there already; the two runs that start from it are trained when Snakemake is killed."""
    import psutil
    for run in ("dense", "gmp"):
        shutil.rmtree(project / f"{RUNS}/{run}")
    (project / "results/tables.csv").unlink()
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *COMMAND]
    sm = subprocess.Popen(cmd, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    started = project / f"{RUNS}/gmp/seed0/train.log"
    deadline = time.time() + 300
    while not started.exists() and sm.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert sm.poll() is None, "the workflow ended before the kill"
    jobs = psutil.Process(sm.pid).children(recursive=True)
    if kill == "ctrl-c":
        os.killpg(sm.pid, signal.SIGINT)
    else:
        sm.kill()
    sm.wait()
    psutil.wait_procs(jobs, timeout=300)     # orphans end by themselves (or would say so: run lock)
    assert not (project / "results/tables.csv").exists()
    proc = snakemake(project, *COMMAND)
    if kill == "sigkill-snakemake":
        assert "note: removed the lock of a Snakemake that is no longer running" in proc.stderr
    assert numbers(project) == numbers(finished)
