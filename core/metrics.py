"""Every metric the harness reports, defined once.

Prunable layers are all Conv2d and Linear modules (first and last layer included, as STR, ADMM and
DeepHoyer count them); only their weights are counted, never biases or norm parameters. A layer's
weight is read through `module.weight`, which under torch parametrizations (masks, soft
thresholds, quantizers) is the effective weight the forward pass uses.

FLOPs are multiply-accumulates (MACs), the unit the papers report (ResNet50: 4.09 G). They are
counted with torch.utils.flop_counter (which counts 2 per MAC, hence the halving); sparse FLOPs
scale each prunable layer's count by its weight density and keep the rest dense."""
import time

import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def prunable_layers(model):
    """(name, module) of every layer whose weight a sparsity method may prune."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


@torch.no_grad()
def layer_sparsity(model):
    """Per prunable layer: weights, nonzeros, sparsity (fraction of zeros), and the structure
    left: output groups (conv filters, linear rows = neurons) and input groups (conv channels,
    linear columns) with at least one nonzero weight."""
    rows = []
    for name, m in prunable_layers(model):
        w = m.weight
        nz = w != 0
        nnz = int(nz.sum())
        rows.append({"layer": name, "params": w.numel(), "nonzero": nnz,
                     "sparsity": 1.0 - nnz / w.numel(),
                     "out_groups": w.shape[0], "out_alive": int(nz.flatten(1).any(1).sum()),
                     "in_groups": w.shape[1], "in_alive": int(nz.transpose(0, 1).flatten(1).any(1).sum())})
    return rows


def sparsity_summary(layers):
    """Overall sparsity over the prunable layers from `layer_sparsity` rows; structured sparsity
    is the fraction of output groups (filters, neurons) that are entirely zero."""
    total = sum(r["params"] for r in layers)
    nnz = sum(r["nonzero"] for r in layers)
    groups = sum(r["out_groups"] for r in layers)
    alive = sum(r["out_alive"] for r in layers)
    return {"sparsity": 1.0 - nnz / total if total else 0.0, "nonzero_params": nnz,
            "prunable_params": total, "structured_sparsity": 1.0 - alive / groups if groups else 0.0}


def model_size(layers, storage):
    """Storage of the prunable weights, as ADMM's paper counts it: `storage` gives per layer
    (bits per stored weight, weights stored); nothing else is counted (no indices of the nonzeros,
    no codebooks, no biases or norms). compression = 32-bit dense size / this size."""
    size = sum(b * k for b, k in storage)
    stored = sum(k for _, k in storage)
    dense = 32.0 * sum(r["params"] for r in layers)
    return {"size_bits": size, "bits": size / stored if stored else 0.0,
            "compression": dense / size if size else float("inf")}


def count_params(model):
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def dense_macs(model, input_shape, device="cpu"):
    """MACs of one forward pass of a single input of `input_shape`: {module path: MACs} and the total.
    Zeroed weights and channels count in full: these depend on the network's shapes only, so one
    count serves every evaluation point of a model (LCS: 7-14 levels, each count a forward pass)."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    per_module = {name: sum(ops.values()) / 2 for name, ops in counter.get_flop_counts().items()}
    return per_module, counter.get_total_flops() / 2


def flops(model, input_shape, layers=None, device="cpu", counted=None):
    """Dense and sparse MACs of one forward pass of a single input of `input_shape`; `counted`: the
    model's `dense_macs`, where the caller has them already."""
    layers = layers if layers is not None else layer_sparsity(model)
    per_module, dense_total = counted or dense_macs(model, input_shape, device)
    root = type(model).__name__
    prunable_dense = sparse = 0.0
    for r in layers:
        macs = per_module.get(f"{root}.{r['layer']}", 0.0)
        r["flops"] = macs
        prunable_dense += macs
        sparse += macs * (1.0 - r["sparsity"])
    return {"dense_flops": dense_total, "flops": dense_total - prunable_dense + sparse}


@torch.no_grad()
def accuracy(model, loader, topk=(1, 5)):
    """Top-k accuracy in percent and mean cross-entropy over a whole loader. Parametrized weights
    (masks, thresholds, subspace points) are computed once for the whole loader, not per batch."""
    model.eval()
    correct = {k: 0 for k in topk}
    n, loss = 0, 0.0
    with parametrize.cached():
        for x, y in loader:
            out = model(x).float()
            loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
            top = out.topk(max(topk), dim=1).indices
            hit = top == y[:, None]
            for k in topk:
                correct[k] += hit[:, :k].any(1).sum().item()
            n += len(y)
    result = {f"top{k}": 100.0 * correct[k] / n for k in topk if k <= out.shape[1]}
    result["loss"] = loss / n
    return result


class Throughput:
    """Samples per second over a timed region; synchronises CUDA so the time is real."""

    def __init__(self, device):
        self.device, self.samples, self.seconds = torch.device(device), 0, 0.0

    def __enter__(self):
        self._sync()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds += time.perf_counter() - self._t

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def per_second(self):
        return self.samples / self.seconds if self.seconds else 0.0
