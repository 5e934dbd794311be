"""The one trainer every method runs in. A method plugs in through the hooks of methods.base.Method;
the trainer owns data, optimisation, mixed precision, checkpoints and resume, and progress output.

A run folder holds spec.json, checkpoint.pt (rolling, every epoch, written atomically), train.json
(the per-epoch history) and model.pt (the trained model with its method's state, and what the
stage it started from handed over: Method.inherited).

Several GPUs: the train rule starts one process per GPU under torchrun (harness/scheduling.py:
launcher), which sets RANK, LOCAL_RANK and WORLD_SIZE; each process trains on cuda:LOCAL_RANK (NCCL;
on a machine without CUDA, the CPU with gloo) with DistributedDataParallel, which averages the
gradients. Every rank takes its slice of the same global batch (data/loaders.py), so the global
batch stays train.batch_size; method hooks run on every rank on the unwrapped model, see the same
weights and must act alike (checked by digest every epoch); every rank draws the same random
numbers (a level LCS samples per batch is the whole batch's; dropout masks repeat across ranks). Rank 0 alone logs, evaluates the test set
(all of it, as one process would; the others wait) and writes checkpoint.pt, train.json and model.pt;
every rank resumes from checkpoint.pt. train.json keeps its format: its losses, accuracies and
samples/s are the whole batch's, summed over ranks."""

import datetime
import hashlib
import json
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
import methods
import models
from harness import io
from harness.errors import CheckpointError, Divergence, HarnessError
from harness.metrics import Throughput, accuracy, layer_sparsity, sparsity_summary
from harness.schedules import LRSchedule
from harness.spec import PRECISIONS, RunSpec


def select_device(name="auto"):
    """The torch device of `device:` (auto: CUDA when present), or one line saying why it cannot be used."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HarnessError(f"device {name!r}: CUDA is not available on this machine; use device=auto or cpu")
        if (device.index or 0) >= torch.cuda.device_count():
            raise HarnessError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                               f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise HarnessError(f"device {name!r}: MPS is not available on this machine; use device=auto or cpu")
    return device


def seed_everything(seed, device):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cpu":
        # = use_deterministic_algorithms(True), which also imports torch._inductor (1-3 s of every job)
        # only to set a torch.compile option; nothing here compiles
        torch.set_deterministic_debug_mode("error")


def build_model(spec: RunSpec, info, device, init_state=None, budget_file=None, inherited=None):
    """Model from the registry, optional starting weights, then the method's changes; `inherited`
    is what the stage it starts from handed over with those weights (Method.handoff)."""
    model = models.create_model(spec.model, num_classes=info.num_classes, in_channels=info.shape[0],
                                **_model_kwargs(spec, info))
    if init_state is not None:
        models.load_mapped(model, init_state, f"the starting weights of {spec.row} ({spec.init})")
    method = methods.get_method(spec.method)
    method = method(method.Args(**spec.method_args), spec.budget, budget_file)
    method.inherited = dict(inherited or {})
    model = method.build(model).to(device)
    if channels_last(model, method, device):
        model = model.to(memory_format=torch.channels_last)
    return model, method


def channels_last(model, method, device):
    """Train in NHWC: convolutions and pooling are faster so on CUDA, and on the CPU for plain conv
    nets (a step 1.35x faster for LeNet-5, 1.9x for ResNet-20), unless the method opts out there."""
    return uses_conv(model) and (torch.device(device).type != "cpu" or method.channels_last_on_cpu)


def distributed_env():
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) for a single process."""
    return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))


def rank_device(name, local_rank, world):
    """A DDP process's device: cuda:LOCAL_RANK where CUDA is used, else the CPU (gloo)."""
    device = select_device(name)
    if device.type != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise HarnessError(f"this run trains with {world} processes, one per GPU, but {torch.cuda.device_count()} "
                           f"GPU(s) are visible; give the job {world} GPUs, or fewer processes with "
                           f"--set-resources train:gpu=N (the global batch stays train.batch_size)")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def start_distributed(device):
    """The process group of one run: NCCL between GPUs, gloo on the CPU. The timeout leaves time
    for rank 0 to evaluate and write a checkpoint while the others wait."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=60))


def distributed(model, device, world):
    """DistributedDataParallel for several processes (it averages gradients in backward); hooks,
    metrics and checkpoints keep using the unwrapped model."""
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def state_digest(state):
    """sha256 of a model's state_dict (parameters and buffers, masks included): every DDP rank's is
    the same."""
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def start_digest(state, inherited):
    """What a run starts from: the handed-over weights and facts of the stage before it."""
    facts = hashlib.sha256(json.dumps(inherited, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{state_digest(state)}{facts}"


def uses_conv(model):
    return any(p.dim() == 4 for p in model.parameters())


def load_trained(path, info, device="cpu"):
    """A trained model.pt rebuilt with the method that trained it, its state restored."""
    saved = io.load_torch(path, "trained model")
    spec = RunSpec(**saved["spec"])
    model, method = build_model(spec, info, torch.device(device), inherited=saved.get("inherited"))
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit model {spec.model!r} with method {spec.method!r} "
                              f"({str(err).splitlines()[0]}); delete it to retrain") from None
    method.load_state_dict(saved["method"])
    return model, method


def handed_over(path, info):
    """What a following stage (finetune, the next compression rate) starts from: the plain weights
    of a trained model after its method's `handoff` (by default `finalize`: masks baked, values
    quantized), and the facts handed over with them (e.g. ADMM's bit widths)."""
    model, method = load_trained(path, info)
    facts = method.handoff(model)
    return {k: v.contiguous() for k, v in model.state_dict().items()}, dict(facts or {})


def _model_kwargs(spec, info):
    kwargs = dict(spec.model_args)
    if spec.model.startswith("lenet"):
        kwargs.setdefault("input_size", info.shape[-1])
    return kwargs


def loaders_for(spec, device, batch_size, eval_batch_size=0, workers=4):
    return data.make_loaders(spec.dataset, spec.data_dir, batch_size, device, seed=spec.seed,
                             eval_batch_size=eval_batch_size or None, workers=workers,
                             **spec.dataset_args)


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
    # foreach: one fused call per group rather than one per tensor, which CUDA gets by default and
    # the CPU does not; the same numbers bit for bit (SGD, Adam, AdamW), a third to half the step
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, foreach=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use sgd, adam or adamw")


class Trainer:
    def __init__(self, spec: RunSpec, out_dir, init_path=None, threads=None, log=print, budget_file=None):
        self.spec, self.cfg, self.out = spec, spec.train_config, Path(out_dir)
        self.init_path, self.log = init_path, log
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
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

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
            loss_sum, correct, samples = self.summed(loss_sum, correct, timer.samples)
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

    def summed(self, *values):
        t = torch.stack([torch.as_tensor(v, device=self.device).double() for v in values])
        dist.all_reduce(t)
        return t.unbind()

    def test_top1(self):
        """Test accuracy of the unwrapped model, as the method's `eval_model` gives it; under DDP on
        rank 0 alone, over the whole test set (the number one process gets), sent to the other ranks
        so that every history is the same."""
        top1 = None
        if self.rank == 0:
            with self.method.eval_model(self.model) as model:   # e.g. ADMM's quantized copy
                top1 = accuracy(model, self.test_loader, topk=(1,))["top1"]
        if self.world > 1:
            box = [top1]
            dist.broadcast_object_list(box, src=0)
            top1 = box[0]
        return top1

    def check_replicas(self):
        """DDP keeps the ranks' weights equal only if every method hook acts alike on every rank:
        compare their digests after each epoch and stop with an error where they differ. Buffers
        that forward passes update on each rank's own data (norm statistics) are rank 0's first,
        as DDP makes them before every forward pass."""
        if self.world == 1:
            return
        for buffer in self.model.buffers():
            sent = buffer.to(torch.uint8) if buffer.dtype == torch.bool else buffer   # gloo sends no bool
            dist.broadcast(sent, src=0)
            if sent is not buffer:
                buffer.copy_(sent.bool())
        digests = [None] * self.world
        dist.all_gather_object(digests, state_digest(self.model.state_dict()))
        if len(set(digests)) > 1:
            raise HarnessError(f"the {self.world} DDP processes hold different weights after epoch {self.epoch} "
                               f"({', '.join(digests)}): a method hook acts differently per rank")

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
            if last or (self.cfg.eval_every and (self.epoch + 1) % self.cfg.eval_every == 0):
                stats["test_top1"] = self.test_top1()
            stats["sparsity"] = sparsity_summary(layer_sparsity(self.model))["sparsity"]
            self.epoch += 1
            self.wall_s += time.perf_counter() - t0
            stats.update(epoch=self.epoch, seconds=time.perf_counter() - t0)
            self.history.append(stats)
            self.check_replicas()
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
            digests = os.environ.get("HARNESS_RANK_DIGESTS")  # for tests: each rank's final weights
            if digests:
                Path(digests, f"rank{self.rank}.txt").write_text(state_digest(self.model.state_dict()))
            dist.barrier()  # every rank ends once rank 0's files are written
            dist.destroy_process_group()
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


