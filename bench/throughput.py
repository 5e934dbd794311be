"""Training throughput of the harness's trainer on CPU, against the machine's own ceilings.

    .venv/bin/python bench/throughput.py [--threads 1] [--epochs 1]

Measures, in one run: the matmul FLOP/s of this machine (float32, `threads` threads), the trainer's
samples/s and FLOP/s on LeNet-300-100 and LeNet-5 with Fashion-MNIST, and a naive loop (torchvision
FashionMNIST dataset + DataLoader, per-sample PIL transforms) on the same models. Goals: the trainer
reaches half the matmul FLOP/s on LeNet-300-100 and 3x the naive loop. Prints figures; asserts nothing.
Training FLOPs per sample are counted as 3x the forward MACs x 2 (forward, input and weight gradients)."""
import argparse
import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from data.sources import debian_package_folder  # noqa: E402
from core.metrics import flops  # noqa: E402
from core.spec import RunSpec  # noqa: E402
from harness.trainer import Trainer  # noqa: E402


def matmul_flops(n=1024, seconds=3.0):
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t, reps = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        a @ b
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def train_flops_per_sample(name):
    return 6 * flops(models.create_model(name, 10), (1, 28, 28))["dense_flops"]


def harness_throughput(name, epochs, batch_size, data_dir):
    spec = RunSpec(scale="laptop", paper="bench", row=name, seed=0, method="dense", model=name,
                   dataset="fashion-mnist", data_dir=data_dir, device="cpu",
                   train={"epochs": epochs, "batch_size": batch_size, "lr": 0.01, "eval_every": 0})
    with tempfile.TemporaryDirectory() as out:
        summary = Trainer(spec, out, log=lambda m: None).run()
    return summary["throughput"]


def naive_throughput(name, batch_size, raw_dir, batches=150):
    """The textbook loop: torchvision dataset, DataLoader, per-sample PIL -> tensor transforms."""
    from torchvision import datasets, transforms
    ds = datasets.FashionMNIST(raw_dir, train=True, download=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))]))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0)
    model = models.create_model(name, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n, t = 0, time.perf_counter()
    for i, (x, y) in enumerate(loader):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(y)
        if i + 1 == batches:
            break
    return n / (time.perf_counter() - t)


def unpacked_fashion_mnist(tmp):
    """torchvision's FashionMNIST class wants the unpacked IDX files under <root>/FashionMNIST/raw."""
    src = debian_package_folder("dataset-fashion-mnist") or Path("/usr/share/datasets/fashion-mnist")
    raw = Path(tmp) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in Path(src).glob("*-ubyte.gz"):
        with gzip.open(f) as fin, open(raw / f.name[:-3], "wb") as fout:
            shutil.copyfileobj(fin, fout)
    return tmp


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (Snakemake jobs use 1 each)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_flops()
    print(f"machine: {torch.get_num_threads()} thread(s), float32 matmul {peak / 1e9:.1f} GFLOP/s "
          f"(torch {torch.__version__})")
    print(f"{'model':14s} {'harness/s':>10s} {'GFLOP/s':>8s} {'of matmul':>9s} {'naive/s':>8s} {'speed-up':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        root = unpacked_fashion_mnist(tmp)
        for name in ("lenet300-100", "lenet5-caffe"):
            fast = harness_throughput(name, args.epochs, args.batch_size, root)
            torch.set_num_threads(args.threads)  # the trainer sets threads only when asked; keep ours
            slow = naive_throughput(name, args.batch_size, root)
            gflops = fast * train_flops_per_sample(name) / 1e9
            print(f"{name:14s} {fast:10.0f} {gflops:8.1f} {gflops * 1e9 / peak:9.0%} {slow:8.0f} {fast / slow:7.1f}x")
    print("goals: LeNet-300-100 at >= 50% of matmul FLOP/s; harness >= 3x the naive loop")


if __name__ == "__main__":
    main()
