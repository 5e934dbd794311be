"""A training job killed with SIGKILL and started again finishes with the same result as one that
was never interrupted: same per-epoch losses and accuracies, same final weights and masks."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from core.spec import RunSpec
from tests.conftest import ROOT

SPEC = RunSpec(scale="smoke", paper="t", row="r", seed=1, method="gmp", model="lenet5-caffe",
               dataset="synthetic", dataset_args={"train_size": 1500, "test_size": 300},
               train={"epochs": 6, "batch_size": 50, "lr": 0.02, "weight_decay": 1e-4},
               method_args={"end_epoch": 4}, budget={"sparsity": 0.9}, device="cpu")


def train(out):
    return subprocess.Popen([sys.executable, "-m", "harness", "train", "--spec", SPEC.to_json(), "--out", str(out),
                             "--threads", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def comparable(history):
    return [{k: h[k] for k in ("epoch", "loss", "train_acc", "test_top1", "sparsity", "lr")} for h in history]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path):
    whole = train(tmp_path / "whole")
    assert whole.wait(timeout=600) == 0, whole.stdout.read()

    killed = train(tmp_path / "killed")
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model.pt").exists(), "training finished before the kill"

    resumed = train(tmp_path / "killed")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resumed from" in out

    a = json.loads((tmp_path / "whole" / "train.json").read_text())
    b = json.loads((tmp_path / "killed" / "train.json").read_text())
    assert comparable(a["history"]) == comparable(b["history"])
    sa = torch.load(tmp_path / "whole" / "model.pt")["state_dict"]
    sb = torch.load(tmp_path / "killed" / "model.pt")["state_dict"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
