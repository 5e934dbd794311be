"""The one trainer every method runs in. A method plugs in through the hooks of methods.base.Method;
the trainer owns data, optimisation, mixed precision, checkpoints and resume, and progress output.

A run folder holds spec.json, checkpoint.pt (rolling, every epoch, written atomically), train.json
(the per-epoch history) and model.pt (the trained model with its method's state, and what the
stage it started from handed over: Method.inherited).

Several GPUs: the train rule starts one process per GPU under torchrun (core/scheduling.py:
launcher), which sets RANK, LOCAL_RANK and WORLD_SIZE; each process trains on cuda:LOCAL_RANK (NCCL;
on a machine without CUDA, the CPU with gloo) with DistributedDataParallel, which averages the
gradients. Every rank takes its slice of the same global batch (data/loaders.py), so the global
batch stays train.batch_size; method hooks run on every rank on the unwrapped model, see the same
weights and must act alike (checked by digest every epoch); every rank draws the same random
numbers (a level LCS samples per batch is the whole batch's; dropout masks repeat across ranks). Rank 0 alone logs, evaluates the test set
(all of it, as one process would; the others wait) and writes checkpoint.pt, train.json and model.pt;
every rank resumes from checkpoint.pt. train.json keeps its format: its losses, accuracies and
samples/s are the whole batch's, summed over ranks."""

import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

import methods
import models
from core import io
from harness.building import build_model, channels_last, handed_over, loaders_for, seed_everything, select_device, \
    start_digest, to_channels_last
from harness.distributed import check_replicas, distributed, distributed_env, finish, from_rank0, rank_device, \
    start_distributed, summed
from core.errors import Divergence, HarnessError
from core.metrics import Throughput, accuracy, layer_sparsity, sparsity_summary
from core.schedules import LRSchedule
from core.spec import PRECISIONS, RunSpec

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def training_precision(asked, device):
    """The precision a run really trains in: mixed precision only where CUDA is used (and bf16 only
    where the GPU has it); what tables.csv's `precision` column reports."""
    if asked not in PRECISIONS:
        raise ValueError(f"train.precision {asked!r}: use one of {', '.join(PRECISIONS)}")
    if device.type != "cuda" or asked == "fp32":
        return "fp32"
    if asked == "bf16" and not torch.cuda.is_bf16_supported():
        raise HarnessError(f"train.precision bf16 needs a GPU with bf16 ({torch.cuda.get_device_name(device)} has "
                           f"none); use fp16 or fp32")
    return asked


def make_optimizer(cfg, groups):
    # fused: one kernel per step over every tensor, on the CPU and CUDA alike (the default is a loop
    # of per-tensor calls on the CPU); the same update up to float rounding (order of operations),
    # an Adam step over LeNet-300-100 0.8 -> 0.3 ms, SGD with momentum over LeNet-5 0.5-0.7 -> 0.25 ms
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, fused=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use sgd, adam or adamw")


class Trainer:
    def __init__(self, spec: RunSpec, out_dir, init_path=None, threads=None, log=print, budget_file=None,
                 test_at_end=True):
        self.spec, self.cfg, self.out = spec, spec.train_config, Path(out_dir)
        self.init_path, self.log = init_path, log
        # False where the evaluation follows in this process: it tests the final model anyway, and a
        # second pass over the test set cost about a second a job (recipes with eval_every 0)
        self.test_at_end = test_at_end
        if threads:
            torch.set_num_threads(threads)
        self.rank, self.world, local_rank = distributed_env()
        if self.world > 1:
            self.device = rank_device(spec.device, local_rank, self.world)
            start_distributed(self.device)
            self.log = log if self.rank == 0 else (lambda *_: None)
        else:
            self.device = select_device(spec.device)
        seed_everything(spec.seed, self.device)
        self.train_loader, self.test_loader, self.info = loaders_for(
            spec, self.device, self.cfg.batch_size, self.cfg.eval_batch_size)
        self.train_loader.shard(self.rank, self.world)
        init_state, inherited = handed_over(init_path, self.info) if init_path else (None, {})
        # a checkpoint resumes only the same settings started from the same weights and budget: a
        # re-trained starting model with other weights makes it stale, a model.pt written again
        # with the same weights does not
        self.fingerprint = "-".join([spec.result_fingerprint(),
                                     *([start_digest(init_state, inherited)] if init_path else []),
                                     *([io.file_digest(budget_file)] if budget_file else [])])
        if spec.init == models.TORCHVISION_INIT:
            init_state = models.torchvision_state(spec.model)
        if spec.budget.get("transfer") and budget_file is None:
            raise HarnessError(f"budget transfer from row {spec.budget['transfer']!r} needs that run's budget.csv "
                               f"(--budget-file)")
        self.model, self.method = build_model(spec, self.info, self.device, init_state, budget_file, inherited)
        groups = self.method.param_groups(self.model, self.cfg.weight_decay, self.cfg.norm_decay)
        self.optimizer = make_optimizer(self.cfg, groups)
        self.lr_at = LRSchedule(self.cfg.lr, self.cfg.epochs, self.cfg.schedule, self.cfg.warmup_epochs,
                                tuple(self.cfg.milestones), self.cfg.gamma, self.cfg.lr_per_epoch)
        self.precision = training_precision(self.cfg.precision, self.device)
        amp_dtype = AUTOCAST_DTYPES.get(self.precision)
        self.autocast = (lambda: torch.autocast("cuda", amp_dtype)) if amp_dtype else nullcontext
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.channels_last = channels_last(self.model, self.method, self.device)
        self.forward_model = distributed(self.model, self.device, self.world)
        self.epoch, self.step, self.wall_s, self.history = 0, 0, 0.0, []

    # -- checkpoints ------------------------------------------------------------------------------
    @property
    def checkpoint_path(self):
        return self.out / "checkpoint.pt"

    def save_checkpoint(self):
        if self.rank != 0:
            return
        io.save_torch({"fingerprint": self.fingerprint, "epoch": self.epoch,
                       "step": self.step, "wall_s": self.wall_s, "history": self.history,
                       "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                       "scaler": self.scaler.state_dict(), "method": self.method.state_dict(),
                       "rng": torch.get_rng_state()}, self.checkpoint_path)

    def try_resume(self):
        if not self.checkpoint_path.exists():
            return False
        ck = io.load_torch(self.checkpoint_path)
        if ck["fingerprint"] != self.fingerprint:
            self.log(f"checkpoint {self.checkpoint_path} belongs to other settings or another starting model; starting afresh")
            return False
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        self.method.load_state_dict(ck["method"])
        torch.set_rng_state(ck["rng"])
        self.epoch, self.step, self.wall_s, self.history = ck["epoch"], ck["step"], ck["wall_s"], ck["history"]
        self.log(f"resumed from {self.checkpoint_path} at epoch {self.epoch}/{self.cfg.epochs}")
        return True

    # -- training ---------------------------------------------------------------------------------
    def task_loss(self, outputs, y):
        # label smoothing as STR's LabelSmoothing: (1 - e) nll + e mean(-log p), torch's own form
        return F.cross_entropy(outputs.float(), y, label_smoothing=self.cfg.label_smoothing)

    def in_layout(self, x):
        return to_channels_last(x) if self.channels_last else x

    def scoring_batches(self):
        """Training batches for `before_training`: epoch 0's, on the device, outside any step."""
        self.train_loader.set_epoch(0)
        for x, y in self.train_loader:
            yield self.in_layout(x), y

    def progress(self):
        return methods.Progress(self.epoch, self.step, len(self.train_loader), self.cfg.epochs,
                                self.optimizer.param_groups[0]["lr"])

    def train_epoch(self):
        model, method, opt, cfg = self.model, self.method, self.optimizer, self.cfg
        model.train()
        self.train_loader.set_epoch(self.epoch)
        method.on_epoch_start(model, self.progress())
        steps = len(self.train_loader)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        timer = Throughput(self.device)
        bar = _progress_bar(steps, f"epoch {self.epoch + 1}/{cfg.epochs}")
        with timer:
            for i, (x, y) in enumerate(self.train_loader):
                lr = self.lr_at(self.epoch + i / steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                x = self.in_layout(x)
                opt.zero_grad(set_to_none=True)
                loss = out = None
                for level in method.forward_levels(model, self.progress()):  # one pass unless the method asks for more
                    with level, self.autocast():
                        pass_out = self.forward_model(x)
                        pass_loss = method.loss(model, pass_out, self.task_loss(pass_out, y))
                    self.scaler.scale(self.rank_weighted(pass_loss, i, len(y))).backward()
                    loss = pass_loss.detach() if loss is None else loss + pass_loss.detach()
                    out = pass_out.detach() if out is None else out   # train_acc: the first pass
                if cfg.grad_clip > 0:
                    self.scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, cfg.grad_clip_norm)
                self.scaler.step(opt)
                self.scaler.update()
                self.step += 1
                method.on_step(model, self.progress())
                loss_sum += loss.detach() * len(y)
                correct += (out.argmax(1) == y).sum()
                timer.samples += len(y)
                if i % 50 == 49 or i == steps - 1:
                    self._check_finite(loss_sum, lr)
                if bar:
                    bar.update(1)
        if bar:
            bar.close()
        if self.world > 1:  # the whole batch's figures: summed over ranks
            loss_sum, correct, samples = summed(self.device, loss_sum, correct, timer.samples)
            timer.samples = int(samples)
        n = timer.samples
        return {"loss": loss_sum.item() / n, "train_acc": 100.0 * correct.item() / n, "lr": lr,
                "throughput": timer.per_second, "train_s": timer.seconds}

    def rank_weighted(self, loss, step, n):
        """DDP averages the ranks' gradients; a rank's share of a batch may be a sample short, so
        its loss is weighted by n x world / global batch: the average is then the whole batch's."""
        if self.world == 1:
            return loss
        return loss * (n * self.world / self.train_loader.global_size(step))

    def test_top1(self):
        """Test accuracy of the unwrapped model, as the method's `eval_model` gives it; under DDP on
        rank 0 alone, over the whole test set (the number one process gets), sent to the other ranks
        so that every history is the same."""
        top1 = None
        if self.rank == 0:
            with self.method.eval_model(self.model) as model:   # e.g. ADMM's quantized copy
                top1 = accuracy(model, self.test_loader, topk=(1,))["top1"]
        return from_rank0(top1) if self.world > 1 else top1

    def _check_finite(self, loss_sum, lr):
        if not torch.isfinite(loss_sum):
            raise Divergence(f"loss became non-finite in epoch {self.epoch + 1} (lr {lr:.4g}); "
                             f"lower train.lr or set train.grad_clip in the paper table")

    def run(self):
        self.out.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:   # the settings of the result, and where and on what it ran
            io.save_json({**self.spec.result_dict(), "data_dir": self.spec.data_dir, "device": self.spec.device},
                         self.out / "spec.json")
        if not self.try_resume():
            self.method.before_training(self.model, self.scoring_batches(), self.task_loss)
        while self.epoch < self.cfg.epochs:
            t0 = time.perf_counter()
            stats = self.train_epoch()
            last = self.epoch + 1 == self.cfg.epochs
            if (last and self.test_at_end) or (self.cfg.eval_every and (self.epoch + 1) % self.cfg.eval_every == 0):
                stats["test_top1"] = self.test_top1()
            stats["sparsity"] = sparsity_summary(layer_sparsity(self.model))["sparsity"]
            self.epoch += 1
            self.wall_s += time.perf_counter() - t0
            stats.update(epoch=self.epoch, seconds=time.perf_counter() - t0)
            self.history.append(stats)
            if self.world > 1:
                check_replicas(self.model, self.world, self.epoch)
            self.save_checkpoint()
            self.log(_epoch_line(stats, self.cfg.epochs))
        tested = [h["test_top1"] for h in self.history if "test_top1" in h]
        summary = {"epochs": self.cfg.epochs, "wall_s": self.wall_s, "history": self.history,
                   "best_top1": max(tested) if tested else None,  # as DeepHoyer reports finetuning
                   "throughput": _mean([h["throughput"] for h in self.history]),
                   "device": str(self.device), "precision": self.precision, "threads": torch.get_num_threads()}
        if self.rank == 0:
            io.save_torch({"state_dict": self.model.state_dict(), "method": self.method.state_dict(),
                           "spec": self.spec.result_dict(), "inherited": self.method.inherited}, self.out / "model.pt")
            io.save_json(summary, self.out / "train.json")
        if self.world > 1:
            finish(self.model, self.rank)
        return summary


def _mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


def _epoch_line(s, epochs):
    test = f" test_top1 {s['test_top1']:.2f}" if "test_top1" in s else ""
    return (f"epoch {s['epoch']}/{epochs} loss {s['loss']:.4f} train_acc {s['train_acc']:.2f}{test} "
            f"sparsity {s['sparsity']:.4f} lr {s['lr']:.4g} {s['throughput']:.0f} samples/s "
            f"{s['seconds']:.1f}s")


def _progress_bar(total, desc):
    if not sys.stderr.isatty() or os.environ.get("HARNESS_NO_BAR"):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)


