"""Training with DistributedDataParallel: two processes on the CPU with gloo, started the way the
train rule starts them (core/scheduling.py: launcher, i.e. torchrun). Both ranks end with the
same weights, the run folder has a single process's format, the result is a single process's up
to rounding (same global batch), and a killed two-process run resumes from its checkpoint."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from data.loaders import TensorLoader
from data.registry import DataInfo
from core import scheduling
from core.spec import RunSpec
from harness.building import state_digest
from harness.trainer import Trainer
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available in this torch build")

EPOCHS = 4
# GMP (its masks follow the weights: every rank must compute the same ones); a batch of 75 splits
# 38 + 37, so the ranks' shares differ by a sample; 2000 samples leave a last batch of 50.
SPEC = RunSpec(scale="smoke", paper="t", row="r", seed=0, method="gmp", model="lenet300-100",
               dataset="synthetic", dataset_args={"train_size": 2000, "test_size": 500},
               train={"epochs": EPOCHS, "batch_size": 75, "lr": 0.05, "processes": 2},
               method_args={"end_epoch": 3}, budget={"sparsity": 0.8}, device="cpu")
FIELDS = ("epoch", "loss", "train_acc", "test_top1", "sparsity", "lr")


def start(spec, out, digests=None):
    """The train rule's command line for this spec, in its own session (killed as a whole)."""
    nproc = scheduling.processes(spec)
    cmd = (f"{scheduling.launcher(shlex.quote(sys.executable), nproc)} train --spec {shlex.quote(spec.to_json())} "
           f"--out {shlex.quote(str(out))} --threads 1")
    env = dict(os.environ, HARNESS_NO_BAR="1")
    if digests:
        env["HARNESS_RANK_DIGESTS"] = str(digests)
    return subprocess.Popen(cmd, shell=True, cwd=ROOT, env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kill_job(pid):
    """SIGKILL a process and all below it, as SLURM ends a job (torchrun starts each worker in a
    session of its own, so its process group alone would leave them running)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    job, todo = [], [pid]
    while todo:
        job.append(todo.pop())
        todo += children.get(job[-1], [])
    for p in job:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def finish(proc, timeout=120):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted two-process run, and the same spec in a single process."""
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "digests").mkdir()
    ddp = start(SPEC, tmp / "ddp", tmp / "digests")
    single = Trainer(RunSpec(**{**SPEC.__dict__, "train": {**SPEC.train, "processes": 0}}), tmp / "single",
                     log=lambda *_: None).run()
    log = finish(ddp)
    return tmp, log, single


def history(run_dir):
    return json.loads((run_dir / "train.json").read_text())


def test_the_rule_starts_one_process_per_gpu_under_torchrun():
    paper = RunSpec(**{**SPEC.__dict__, "scale": "paper", "train": {"gpus": 4}})
    assert scheduling.processes(paper) == 4 and scheduling.processes(paper, gpus_granted=2) == 2
    assert scheduling.processes(RunSpec(**{**SPEC.__dict__, "train": {"gpus": 4}})) == 1   # smoke: no GPU
    assert scheduling.launcher("py", 4) == "py -m torch.distributed.run --standalone --nproc_per_node=4 -m harness"
    assert scheduling.launcher("py", 1) == "py -m harness"
    assert scheduling.cpus_per_task(RunSpec(**{**paper.__dict__, "dataset": "imagenet"})) == 20


def test_ranks_split_every_batch_of_a_single_process():
    """Each rank keeps its slice of the same permuted, augmented global batch."""
    info = DataInfo("t", 10, (3, 8, 8), (0.5,) * 3, (0.25,) * 3, "crop_flip", True)
    x, y = torch.randint(0, 256, (103, 3, 8, 8), dtype=torch.uint8), torch.arange(103) % 10

    def batches(rank, world):
        loader = TensorLoader(x, y, info, 10, "cpu", seed=3)
        loader.shard(rank, world)
        loader.set_epoch(2)
        return list(loader), len(loader)

    whole, steps = batches(0, 1)
    parts = [batches(r, 3) for r in range(3)]
    assert steps == 11 and all(n == 11 for _, n in parts)   # the last batch (3 samples) is kept ...
    for i, (xb, yb) in enumerate(whole):
        assert torch.equal(torch.cat([p[0][i][0] for p in parts]), xb)
        assert torch.equal(torch.cat([p[0][i][1] for p in parts]), yb)
    assert [len(b[1]) for b in parts[0][0]][:1] == [4] and len(batches(0, 4)[0]) == 10  # ... one of 3 < 4 ranks is not


@pytest.mark.slow
def test_two_processes_end_with_identical_weights_in_a_single_process_format(runs):
    tmp, log, single = runs
    ddp = history(tmp / "ddp")
    assert ddp.keys() == single.keys() and [h.keys() for h in ddp["history"]] == [h.keys() for h in single["history"]]
    assert ddp["epochs"] == EPOCHS and ddp["device"] == "cpu"
    saved = torch.load(tmp / "ddp" / "model.pt")
    reference = torch.load(tmp / "single" / "model.pt")
    assert saved.keys() == reference.keys() and saved["state_dict"].keys() == reference["state_dict"].keys()
    assert {p.name for p in (tmp / "ddp").iterdir()} == {p.name for p in (tmp / "single").iterdir()}
    # each rank wrote the digest of its final weights; both are those of model.pt
    digests = {p.name: p.read_text() for p in (tmp / "digests").iterdir()}
    assert set(digests) == {"rank0.txt", "rank1.txt"}
    assert set(digests.values()) == {state_digest(saved["state_dict"])}
    assert log.count("epoch 1/") == 1          # rank 0 alone logs


@pytest.mark.slow
def test_two_processes_give_a_single_process_result(runs):
    """Same global batch, same samples and order: only the summation order differs."""
    tmp, _, single = runs
    for a, b in zip(history(tmp / "ddp")["history"], single["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert abs(a["test_top1"] - b["test_top1"]) <= 1.0 and abs(a["train_acc"] - b["train_acc"]) <= 1.0
        assert a["sparsity"] == pytest.approx(b["sparsity"], abs=1e-3) and a["lr"] == b["lr"]
    sa = torch.load(tmp / "ddp" / "model.pt")["state_dict"]
    sb = torch.load(tmp / "single" / "model.pt")["state_dict"]
    assert all(torch.allclose(sa[k], sb[k], atol=1e-4) for k in sa)   # about 1e-6 here
    masks = [k for k in sa if k.endswith("mask")]
    assert masks and all((sa[k] == sb[k]).float().mean() > 0.999 for k in masks)


@pytest.mark.slow
def test_killed_two_process_run_resumes_from_its_checkpoint(runs):
    tmp = runs[0]
    killed = start(SPEC, tmp / "killed")
    checkpoint = tmp / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.01)
    kill_job(killed.pid)                          # the whole job: torchrun and both ranks
    killed.communicate()
    assert not (tmp / "killed" / "model.pt").exists(), "training finished before the kill"

    log = finish(start(SPEC, tmp / "killed"))
    assert "resumed from" in log
    a, b = history(tmp / "ddp")["history"], history(tmp / "killed")["history"]
    assert [{k: h[k] for k in FIELDS} for h in a] == [{k: h[k] for k in FIELDS} for h in b]
    sa = torch.load(tmp / "ddp" / "model.pt")["state_dict"]
    sb = torch.load(tmp / "killed" / "model.pt")["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
