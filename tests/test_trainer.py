import itertools
import json
import subprocess
import sys

import pytest
import torch

from core.schedules import LRSchedule
from core.spec import RunSpec
from harness.trainer import Divergence, Trainer
from methods.base import Method, register_method
from tests.conftest import ROOT


def spec(**over):
    base = dict(scale="smoke", paper="t", row="r", seed=0, method="dense", model="lenet300-100",
                dataset="synthetic", dataset_args={"train_size": 512, "test_size": 256},
                train={"epochs": 2, "batch_size": 64, "lr": 0.05}, device="cpu")
    base.update(over)
    return RunSpec(**base)


@pytest.mark.parametrize("epoch, lr", [(0, 0.0512), (1, 0.1024), (4, 0.256), (5, 0.256), (6, 0.25593002),
                                       (50, 0.13857016), (99, 6.998e-05), (50.7, 0.13857016)])
def test_str_reference_lr_schedule(epoch, lr):
    """STR's cosine_lr with 5 warmup epochs, set once per epoch (str.md check 5)."""
    schedule = LRSchedule(0.256, 100, "cosine", warmup_epochs=5, per_epoch=True)
    assert schedule(epoch) == pytest.approx(lr, rel=1e-4)  # the notes give 4-8 digits


def test_step_schedule_and_smooth_warmup():
    s = LRSchedule(0.1, 10, "step", warmup_epochs=2, milestones=(5, 8), gamma=0.1)
    assert s(1.0) == pytest.approx(0.05) and s(4) == 0.1 and s(6) == pytest.approx(0.01) and s(9) == pytest.approx(0.001)


def test_dense_training_learns_and_writes_its_run_folder(tmp_path):
    summary = Trainer(spec(), tmp_path, log=lambda m: None).run()
    assert summary["history"][-1]["test_top1"] > 60.0
    assert {p.name for p in tmp_path.iterdir()} >= {"spec.json", "checkpoint.pt", "model.pt", "train.json"}
    assert json.loads((tmp_path / "spec.json").read_text())["model"] == "lenet300-100"


def test_divergence_is_a_clear_error(tmp_path):
    with pytest.raises(Divergence, match="lower train.lr"):
        Trainer(spec(train={"epochs": 1, "lr": 1e12, "batch_size": 64}), tmp_path, log=lambda m: None).run()


@pytest.mark.slow
def test_training_from_a_dense_model_starts_from_its_weights(tmp_path):
    Trainer(spec(), tmp_path / "dense", log=lambda m: None).run()
    t = Trainer(spec(method="gmp", budget={"sparsity": 0.5}, train={"epochs": 0}), tmp_path / "gmp",
                init_path=tmp_path / "dense" / "model.pt", log=lambda m: None)
    dense = torch.load(tmp_path / "dense" / "model.pt")["state_dict"]
    assert torch.equal(t.model[1].parametrizations.weight.original, dense["1.weight"])


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    bad = spec(dataset="imagenet", dataset_args={}, data_dir=str(tmp_path)).to_json()
    proc = subprocess.run([sys.executable, "-m", "harness", "train", "--spec", bad, "--out", str(tmp_path / "r")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ImageNet not found")


@pytest.mark.slow
def test_broken_checkpoint_is_a_one_line_error_that_says_what_to_do(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "harness", "train", "--spec", spec().to_json(),
                           "--out", str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "checkpoint.pt is unreadable" in proc.stderr and "delete it" in proc.stderr


@pytest.mark.slow
def test_a_checkpoint_started_from_another_init_model_is_not_resumed(tmp_path):
    """Re-running the row a run starts from makes the run's old checkpoint stale, even though the
    run's own settings did not change."""
    for seed in (0, 1):
        Trainer(spec(seed=seed, train={"epochs": 1, "batch_size": 64, "lr": 0.05}), tmp_path / f"init{seed}",
                log=lambda *_: None).run()
    child = spec(method="finetune", init="parent")
    Trainer(child, tmp_path / "child", init_path=tmp_path / "init0/model.pt", log=lambda *_: None).run()
    lines = []
    Trainer(child, tmp_path / "child", init_path=tmp_path / "init0/model.pt", log=lines.append).run()
    assert any(line.startswith("resumed from") for line in lines)          # same init: resumes
    lines.clear()
    Trainer(child, tmp_path / "child", init_path=tmp_path / "init1/model.pt", log=lines.append).run()
    assert not any(line.startswith("resumed from") for line in lines)
    assert any("belongs to other settings" in line for line in lines)


class LooksBeforeTraining(Method):
    """A method that scores weights on training batches before the first epoch (as SNIP does) and
    records what the hook got, changing nothing."""
    name = "test-looks-before-training"
    calls = []

    def before_training(self, model, batches, task_loss):
        model.zero_grad()
        for x, y in itertools.islice(batches, 2):
            task_loss(model(x), y).backward()
        scores = [(p.grad * p).abs().sum().item() for p in model.parameters()]
        model.zero_grad()
        LooksBeforeTraining.calls.append({"shape": tuple(x.shape), "device": x.device.type, "scores": scores})


register_method(LooksBeforeTraining)


@pytest.mark.slow
def test_before_training_gets_batches_once_and_changes_nothing_of_the_training(tmp_path):
    LooksBeforeTraining.calls.clear()
    plain = Trainer(spec(), tmp_path / "plain", log=lambda m: None)
    plain.run()
    looked = Trainer(spec(method=LooksBeforeTraining.name), tmp_path / "looked", log=lambda m: None)
    looked.run()
    (call,) = LooksBeforeTraining.calls
    assert call["shape"] == (64, 1, 28, 28) and call["device"] == "cpu" and all(s > 0 for s in call["scores"])
    # no optimizer step, lr change, loss logged or batch order moved: the same run, bit for bit
    assert [h["loss"] for h in looked.history] == [h["loss"] for h in plain.history]
    assert all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(), looked.model.state_dict().values()))
    resumed = Trainer(spec(method=LooksBeforeTraining.name), tmp_path / "looked", log=lambda m: None)
    resumed.run()                      # finished run: resumes from its checkpoint, no second look
    assert len(LooksBeforeTraining.calls) == 1


def test_nhwc_for_conv_nets_except_where_a_method_mixes_layouts_on_the_cpu():
    """LCS's layers come out NCHW, so NHWC made its CPU steps 2-4x slower: it opts out there only."""
    from harness.building import channels_last
    from methods import get_method
    from models import create_model
    lenet5, lenet300 = create_model("lenet5", 10, input_size=28), create_model("lenet300-100", 10, input_size=28)
    gmp, lcs = get_method("gmp")(budget={"sparsity": 0.5}), get_method("us")()
    assert channels_last(lenet5, gmp, "cpu") and not channels_last(lenet300, gmp, "cpu")
    assert not channels_last(lenet5, lcs, "cpu") and channels_last(lenet5, lcs, torch.device("cuda"))


def test_one_channel_input_keeps_str_convolutions_nhwc():
    """A one-channel batch has NCHW strides after .contiguous(channels_last); under STR's computed
    weight (NCHW strides too) the first conv then answered NCHW and every later layer converted."""
    from harness.building import to_channels_last
    from methods import get_method
    from models import create_model
    model = create_model("lenet5-caffe", 10, input_size=28)
    model = get_method("str")().build(model).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 28, 28)
    nhwc = to_channels_last(x)
    assert torch.equal(nhwc, x)
    assert model[0](nhwc).is_contiguous(memory_format=torch.channels_last)
    assert not model[0](x.contiguous(memory_format=torch.channels_last)).is_contiguous(memory_format=torch.channels_last)
    three = torch.randn(2, 3, 8, 8)
    assert to_channels_last(three).stride() == three.contiguous(memory_format=torch.channels_last).stride()
