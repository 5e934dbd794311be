"""What compression buys when the model runs: every evaluated model exported in the form that
realises its compression, and its latency, peak memory and bytes on disk measured on the machine
that ran the job, beside the same model dense.

Formats (`export`); the runnable ones are saved as TorchScript, which `torch.jit.load` runs with
torch alone (no harness code):

  dense   the model as evaluated, every compression multiplied into float32 weights (the baseline);
  slim    structured: conv filters and linear neurons that are zero (with their bias) or that no
          weight of the next layer reads, and the input channels of the layers that read them,
          removed: a smaller dense network. Only where the
          producer feeds its consumer through channel-wise ops (ReLU, pooling, flatten) in a
          nn.Sequential, so a channel that is zero stays zero, and in conv-BN-ReLU-conv chains inside
          blocks where the BN channel is zero whatever its input; residual streams keep theirs, and
          a BN reading one (pre-activation blocks) reads only the channels it keeps;
  sparse  unstructured: conv and linear weights in CSR (`torch.sparse_csr`), a conv run as unfold
          and a sparse x dense matmul; the rest dense;
  packed  quantized: per layer the distinct values as a codebook and the weights as packed
          ceil(log2 k)-bit codes, a weights-only dict (`unpack` turns it back into the state dict,
          exactly); it runs decoded, as dense: what it buys is bytes. `int8` beside it where PyTorch
          has a path: its dynamic int8 Linear (weights rounded to int8, so not the same outputs).

Measurements (`measure`) are a benchmark, never a test: median and interquartile range of repeated
timed forwards after warmup; peak memory of one forward (the weights plus the most bytes of tensors
alive at once, counted by a dispatch mode); bytes of the saved file. At paper scale: batch 1 and 64,
on one thread and on all, CPU always and CUDA where the job ran on it. At laptop and smoke scale only
the row's own figure, batch 1 on one CPU thread: the full grid cost LCS's 14-level jobs more than
their evaluation, and the laptop figures are small-model CPU timings either way."""
import contextlib
import copy
import functools
import math
import os
import platform
import time
import warnings
import weakref
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from core.metrics import PRUNABLE_TYPES, prunable_layers
from methods.channel_graph import CHANNELWISE_MODULES, norm_graph
from models import pretrained

BATCHES = (1, 64)


class Effort(NamedTuple):
    repeats: int        # timed forwards per setting, at least ...
    seconds: float      # ... and for at least this long
    grid: bool          # every batch x thread count (and CUDA), or the headline's batch 1, one thread
    torchscript: bool = True   # runnable files (a trace, ~0.45 s an LCS level), or their state dicts


# a smoke run checks the plumbing (its files are state dicts: tracing was two thirds of an LCS smoke
# evaluation), a laptop run gives the row's figure, a paper run waits for steady figures at every setting
EFFORT = {"smoke": Effort(2, 0.0, False, torchscript=False), "laptop": Effort(3, 0.0, False),
          "paper": Effort(20, 1.0, True)}
# what a point of metrics.json gains from `measure`: machine-dependent figures, never compared for
# equality between two runs (`deterministic_part`)
MEASURED_KEYS = ("deploy", "deploy_format", "latency_ms", "dense_latency_ms", "measured_speedup", "model_bytes",
                 "dense_model_bytes", "peak_memory_bytes")
FORMAT_OF_KIND = {"structured": "slim", "unstructured": "sparse", "quantized": "packed", "dense": "dense"}


def deterministic_part(point):
    """A metrics.json point without its measured deployment figures."""
    return {k: v for k, v in point.items() if k not in MEASURED_KEYS}


# -- which compression a model carries -----------------------------------------------------------------
def compression_kind(layers, storage):
    """`quantized` when some layer stores fewer than 32 bits a weight; `structured` when most of the
    zero weights lie in whole zero groups: output groups (filters, neurons) or input groups (the
    columns reading a pruned channel, which LEC and network slimming zero with its norm); `unstructured`
    when some weights are zero otherwise; else `dense`. From `layer_sparsity` rows and the method's
    `storage`."""
    if any(bits < 32 for bits, _ in storage):
        return "quantized"
    zeros = sum(r["params"] - r["nonzero"] for r in layers)
    if not zeros:
        return "dense"
    return "structured" if sum(map(_in_dead_groups, layers)) >= zeros / 2 else "unstructured"


def _in_dead_groups(r):
    """The weights of a layer that lie in a dead output group or a dead input group (rows and
    columns of its (out, in, kernel) weight; those in both are counted once)."""
    rows, cols = r["out_groups"] - r["out_alive"], r["in_groups"] - r["in_alive"]
    kernel = r["params"] // (r["out_groups"] * r["in_groups"])
    return (rows * r["in_groups"] + cols * r["out_groups"] - rows * cols) * kernel


def plain_copy(model):
    """A copy of `model` with every parametrization (masks, thresholds, quantizers) multiplied in:
    the weights the forward pass uses, as ordinary parameters. (torch's remove_parametrizations
    would edit the parametrized class, which a deep copy shares with `model`.)"""
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if "parametrizations" not in m._modules:
            continue
        effective = {name: getattr(m, name).detach().clone() for name in m.parametrizations}
        m.__class__ = m.__class__.__bases__[0]       # the layer's own class again
        del m._modules["parametrizations"]
        for name, value in effective.items():
            setattr(m, name, nn.Parameter(value))
    for p in plain.parameters():
        p.requires_grad_(False)
        p.data = p.data.contiguous()
    return plain.eval()


# -- slim: structured pruning made physical -------------------------------------------------------------
def _dead_outputs(layer):
    w = layer.weight.detach()
    dead = (w.flatten(1) == 0).all(1)
    if layer.bias is not None:
        dead &= layer.bias.detach() == 0
    return dead


def _dead_inputs(layer, channels):
    """The input channels of `layer` (`channels` of them; a flattened feature map gives each several
    columns) that no weight reads: their producer's filters compute nothing used."""
    w = layer.weight.detach()
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        return torch.zeros(channels, dtype=torch.bool)
    return (w.transpose(0, 1).reshape(channels, -1) == 0).all(1)


def slim(model, narrow=contextlib.nullcontext):
    """The smaller network: the weights `narrow()` gives (a method's own narrow network, e.g. LCS's
    width slices), then, in every nn.Sequential, the channels between a conv/linear layer and the
    next conv/linear layer (through zero-preserving ops only) that are zero (a zero filter) or unread
    (zero input columns in the next layer) removed from both. The outputs are those of `model`."""
    with narrow():
        model = plain_copy(model)
    for layer in model.modules():   # sliced weights: the layers' channel counts follow them
        if isinstance(layer, nn.Conv2d):
            layer.out_channels, layer.in_channels = layer.weight.shape[0], layer.weight.shape[1] * layer.groups
        elif isinstance(layer, nn.Linear):
            layer.out_features, layer.in_features = layer.weight.shape
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq)):
            j = i + 1
            while j < len(seq) and isinstance(seq[j], CHANNELWISE_MODULES):
                j += 1
            producer = seq[i]
            if not isinstance(producer, PRUNABLE_TYPES) or j == len(seq) or not isinstance(seq[j], PRUNABLE_TYPES):
                continue
            unused = _dead_outputs(producer) | _dead_inputs(seq[j], producer.weight.shape[0])
            keep = _kept((~unused).nonzero().flatten())
            if len(keep) < producer.weight.shape[0]:
                seq[i] = _rows(producer, keep)
                seq[j] = _columns(seq[j], keep, producer.weight.shape[0])
    return _slim_norm_chains(model)


def _slim_norm_chains(model):
    """conv -> BN -> ReLU -> conv chains inside blocks (a ResNet block's conv1-bn1-relu-conv2, a
    pre-activation block's conv1-bn2-relu-conv2), found in the traced graph (methods/channel_graph.py):
    a BN channel whose output is zero whatever the input goes, with its filter and its consumers'
    input columns. Zero whatever the input: its scale is 0, or its filter is zero (a constant
    β - γ·μ/σ), and that constant is 0, or at most 0 where every path starts with a ReLU (Group-HS,
    Group Lasso and LEC zero channels so). A BN that reads a residual stream (a pre-activation
    block's bn1) loses its zero-scale channels behind a channel selection, as the stream keeps them;
    a BN that also feeds a residual sum keeps its channels."""
    try:
        chains = norm_graph(model)
    except Exception:   # a model fx cannot trace keeps its norms (slim then does what it did above)
        return model
    for name, (producer, consumers, closed, relu_first) in chains.items():
        bn = model.get_submodule(name)
        if not (closed and bn.affine and bn.track_running_stats):
            continue
        gamma, beta = bn.weight.detach(), bn.bias.detach()
        constant = torch.where(gamma == 0, beta, beta - gamma * bn.running_mean / torch.sqrt(bn.running_var + bn.eps))
        silent = constant <= 0 if relu_first else constant == 0
        # with no conv of its own (its input a residual stream) only a zero scale makes a channel constant
        dead = (gamma == 0) | (_dead_outputs(model.get_submodule(producer)) if producer else False)
        keep = _kept((~dead | ~silent).nonzero().flatten())
        if len(keep) == len(gamma):
            continue
        if producer:
            _replace(model, producer, _rows(model.get_submodule(producer), keep))
            _replace(model, name, _norm_rows(bn, keep))
        else:     # the stream keeps its channels: the norm reads the ones it keeps
            _replace(model, name, nn.Sequential(SelectChannels(keep), _norm_rows(bn, keep)))
        for c in consumers:
            _replace(model, c, _columns(model.get_submodule(c), keep, len(gamma)))
    return model


def _kept(keep):
    """The channels to keep, at least one: a layer with every channel dead keeps one (zero) channel."""
    return keep if len(keep) else torch.zeros(1, dtype=torch.long)


class SelectChannels(nn.Module):
    """x[:, keep]: the channels of a tensor that a slimmed layer reads (a residual stream keeps them all)."""

    def __init__(self, keep):
        super().__init__()
        self.register_buffer("keep", keep.clone())

    def forward(self, x):
        return x.index_select(1, self.keep)


def _norm_rows(bn, keep):
    new = nn.BatchNorm2d(len(keep), bn.eps, bn.momentum).eval()
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(new, attr).copy_(getattr(bn, attr)[keep])
    return new.requires_grad_(False)


def _replace(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _rows(layer, keep):
    bias = layer.bias.detach()[keep] if layer.bias is not None else None
    inputs = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
    return _resized(layer, inputs, len(keep), layer.weight.detach()[keep], bias)


def _columns(layer, keep, channels):
    w = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else None
    per = w.shape[1] // channels     # a flattened feature map: each channel is `per` columns (a conv: 1)
    cols = (keep[:, None] * per + torch.arange(per)).flatten()
    return _resized(layer, len(cols), w.shape[0], w[:, cols], bias)


def _resized(layer, inputs, outputs, weight, bias):
    """A layer like `layer` (conv or linear) with `inputs` and `outputs` channels and these tensors."""
    if isinstance(layer, nn.Conv2d):
        new = nn.Conv2d(inputs, outputs, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                        layer.groups, bias is not None, layer.padding_mode)
    else:
        new = nn.Linear(inputs, outputs, bias is not None)
    return _filled(new, weight, bias)


def _filled(layer, weight, bias):
    layer.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.clone(), requires_grad=False)
    return layer


# -- sparse: CSR weights ----------------------------------------------------------------------------------
class _CSR(nn.Module):
    """A weight matrix in CSR, held as three plain buffers (row pointers, column indices, values) so
    that TorchScript can save the layer; the CSR tensor is assembled at each call (no copy). Indices
    are int32: half the bytes of int64, and CSR forwards 5-15 % faster (LeNet-300-100, LeNet-5,
    cPreResNet20 at 90 and 98 %, batch 1 and 64, timed side by side on the CPU)."""

    def __init__(self, matrix, bias):
        super().__init__()
        csr = matrix.detach().to_sparse_csr()
        self.register_buffer("crow", csr.crow_indices().to(torch.int32))
        self.register_buffer("col", csr.col_indices().to(torch.int32))
        self.register_buffer("values", csr.values())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.shape = tuple(matrix.shape)

    def matrix(self):
        return torch.sparse_csr_tensor(self.crow, self.col, self.values, self.shape)


class SparseLinear(_CSR):
    """y = x W^T + b with W in CSR: (W @ x^T)^T, a sparse x dense matmul."""

    def __init__(self, layer):
        super().__init__(layer.weight, layer.bias)

    def forward(self, x):
        y = (self.matrix() @ x.t()).t()
        return y if self.bias is None else y + self.bias


class SparseConv2d(_CSR):
    """A conv with its weight (out, in·kh·kw) in CSR, run as unfold + sparse x dense matmul."""

    def __init__(self, conv):
        super().__init__(conv.weight.flatten(1), conv.bias)
        self.out_channels, self.kernel_size = conv.out_channels, conv.kernel_size
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x):
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)   # n, c·k·k, L
        y = self.matrix() @ cols.transpose(0, 1).reshape(cols.shape[1], -1)            # out, n·L
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        y = y.view(self.out_channels, n, oh, ow).transpose(0, 1)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def _csr_able(conv):
    return conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def sparse(model):
    model = plain_copy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                setattr(parent, name, SparseLinear(child))
            elif isinstance(child, nn.Conv2d) and _csr_able(child):
                setattr(parent, name, SparseConv2d(child))
    return model


# -- packed: low-bit codes and codebooks ------------------------------------------------------------
def codebook_codes(weight):
    """(codebook, codes): the distinct values of `weight` in increasing order and each weight's index
    into them; codebook[codes] is `weight` exactly."""
    codebook, codes = torch.unique(weight.detach().flatten(), sorted=True, return_inverse=True)
    return codebook, codes.view(weight.shape)


def code_bits(k):
    return max(1, math.ceil(math.log2(k))) if k > 1 else 1


def pack_codes(codes, bits):
    """Codes (ints < 2^bits) as a uint8 tensor of ceil(n·bits/8) bytes, little-endian bit order."""
    flat = codes.flatten().to(torch.int64)
    shifts = torch.arange(bits)
    bitplanes = ((flat[:, None] >> shifts) & 1).flatten().to(torch.uint8)
    pad = (-len(bitplanes)) % 8
    bitplanes = torch.cat([bitplanes, bitplanes.new_zeros(pad)]).view(-1, 8)
    return (bitplanes << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)


def unpack_codes(packed, bits, shape):
    n = math.prod(shape)
    bitplanes = ((packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).flatten()[:n * bits]
    return (bitplanes.view(n, bits).to(torch.int64) << torch.arange(bits)).sum(1).view(shape)


def pack(model):
    """The packed file's content, plain tensors only (torch.load(..., weights_only=True) reads it):
    per conv/linear weight its codebook, bit width, shape and packed codes; every other parameter
    and buffer as float."""
    plain = plain_copy(model)
    weights = {f"{name}.weight" for name, _ in prunable_layers(plain)}
    out = {"packed": {}, "float": {}}
    for key, t in plain.state_dict().items():
        if key in weights:
            codebook, codes = codebook_codes(t)
            bits = code_bits(len(codebook))
            out["packed"][key] = {"codebook": codebook, "bits": bits, "shape": list(t.shape),
                                  "codes": pack_codes(codes, bits)}
        else:
            out["float"][key] = t
    return out


def unpack(packed):
    """The state dict a packed file stands for (exactly the weights that were packed)."""
    state = dict(packed["float"])
    for key, p in packed["packed"].items():
        state[key] = p["codebook"][unpack_codes(p["codes"], p["bits"], p["shape"])]
    return state


def int8(model):
    """PyTorch's dynamic int8 Linear (weights int8, activations quantized per batch), or None where
    this PyTorch has no quantized engine."""
    try:
        from torch.ao.quantization import quantize_dynamic
        return quantize_dynamic(plain_copy(model), {nn.Linear}, dtype=torch.qint8)
    except (ImportError, RuntimeError, AssertionError):
        return None


def export(model, kind, narrow=contextlib.nullcontext, dense=True):
    """{format: runnable module} for a model whose compression is `kind` (compression_kind): the
    dense baseline (unless not `dense`) and the format(s) that realise it. `narrow`: the method's
    narrow-network context (Method.narrow) for `slim`."""
    out = {"dense": plain_copy(model)} if dense else {}
    if kind == "structured":
        out["slim"] = slim(model, narrow)
    elif kind == "unstructured":
        out["sparse"] = sparse(model)
    elif kind == "quantized":
        packed = plain_copy(model)
        packed.load_state_dict(unpack(pack(model)))   # runs as the decoded dense model
        out["packed"] = packed
        q = int8(model)
        if q is not None:
            out["int8"] = q
    return out


def save(fmt, model, module, example, path, torchscript=True):
    """Write one format to `path`; returns (bytes on disk, what the file holds). Runnable formats
    are TorchScript (torch.jit.load runs them with torch alone) where the model traces and
    `torchscript`, else their state dict; `packed` is the weights-only dict of `pack`."""
    if fmt == "packed":
        torch.save(pack(model), path)
        return path.stat().st_size, "packed"
    if not torchscript:
        torch.save(module.state_dict(), path)
        return path.stat().st_size, "state_dict"
    try:
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(module, example, check_trace=False), path)
        return path.stat().st_size, "torchscript"
    except Exception:   # a layer TorchScript cannot trace: the weights alone
        torch.save(module.state_dict(), path)
        return path.stat().st_size, "state_dict"


def torchvision_state(model, model_name, num_classes):
    """The dense export's weights (every compression multiplied in) under torchvision's parameter
    names, for the networks torchvision also has (models/pretrained.py RENAMES: AlexNet, ResNet18,
    ResNet50) at torchvision's shapes: `torchvision.models.get_model(model_name,
    num_classes=num_classes).load_state_dict(state)` loads it as it is. None for any other model
    (or width, or input channels)."""
    if not pretrained.has_torchvision_weights(model_name):
        return None
    theirs = _torchvision_shapes(model_name, num_classes)
    own = plain_copy(model).state_dict()
    if set(theirs) != set(own) or any(own[k].shape != shape for k, (_, shape) in theirs.items()):
        return None
    return {name: own[k] for k, (name, _) in theirs.items()}


@functools.lru_cache(maxsize=None)
def _torchvision_shapes(model_name, num_classes):
    """{harness name: (torchvision name, shape)} of torchvision's `model_name` (built once per job,
    not once per evaluation point)."""
    import torchvision
    theirs = torchvision.models.get_model(model_name, weights=None, num_classes=num_classes).state_dict()
    return {pretrained.rename(model_name, k): (k, v.shape) for k, v in theirs.items()}


# -- measurement ------------------------------------------------------------------------------------
class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensors alive at once among those created inside the mode (each storage once)."""

    def __init__(self, existing=()):
        super().__init__()
        self.live = self.peak = 0
        self.seen = {t.untyped_storage().data_ptr() for t in existing}   # weights, input: not new

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key in self.seen:
                    continue
                self.seen.add(key)
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key, storage.nbytes())
        return out

    def _free(self, key, nbytes):
        self.seen.discard(key)
        self.live -= nbytes


def stored_weights(module):
    """Conv/linear weights the format stores: all of a dense layer's, a CSR layer's nonzeros."""
    dense = sum(m.weight.numel() for m in module.modules() if isinstance(m, PRUNABLE_TYPES))
    return dense + sum(m.values.numel() for m in module.modules() if isinstance(m, _CSR))


def state_bytes(module):
    """Bytes of the module's parameters and buffers (the CSR layers' indices and values included)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@torch.no_grad()
def peak_memory(module, x):
    """Weights plus the most activation bytes alive at once during one forward of `x`."""
    existing = [t for t in (*module.parameters(), *module.buffers(), x) if t.layout == torch.strided]
    with LiveBytes(existing) as live:
        module(x)
    return state_bytes(module) + live.peak


@torch.no_grad()
def latency(module, x, min_repeats=5, min_seconds=0.2, warmup=1):
    """(median, interquartile range) in milliseconds of repeated forwards of `x`."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(warmup):
        module(x)
    sync()
    times, start = [], time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        module(x)
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    q = torch.tensor(times).quantile(torch.tensor([0.25, 0.5, 0.75])).tolist()
    return q[1], q[2] - q[0]


def machine():
    """Where the figures were measured."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"cpu": cpu, "cores": all_threads(),
            "load_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "torch": torch.__version__}


def measure(model, kind, input_shape, device, folder, name, effort=EFFORT["laptop"], dense=None,
            narrow=contextlib.nullcontext):
    """Export `model` (compression `kind`) into `folder`/<name>-<format>.pt and measure every format:
    {format: {bytes, file, weights, peak_bytes, latency: {"<device>/b<batch>/t<threads>": [median ms,
    IQR ms]}}}. `effort` (an Effort): how long each setting is timed and which settings: batch 1 on
    one CPU thread, or with `grid` batch 1 and 64 at 1 and all threads, and on CUDA where `device`
    is. `dense`: the dense record of another point of the same network (its dense form is the same
    network at every level: measured once per job). `narrow`: the method's narrow-network context
    (Method.narrow), for `slim`. A format that runs as dense (packed codes, decoded at load; slim of
    a network whose zero channels cannot go) takes dense's timings and says so (`same_as`)."""
    folder.mkdir(parents=True, exist_ok=True)
    with _known_warnings_silenced():
        return _measure(model, kind, input_shape, device, folder, name, effort, dense, narrow)


@contextlib.contextmanager
def _known_warnings_silenced():
    """PyTorch's notes on what deployment uses on purpose (CSR in beta, torch.jit deprecated,
    CSR tensors constant in a trace; a traced shape test fixed, such as LCS's norms comparing their
    live channels with the input's: an exported network is one level, its channel counts fixed): in
    every job's log they hid what matters (an LCS job's log had 39)."""
    with warnings.catch_warnings():
        for message in ("Sparse CSR tensor support is in beta", "Sparse invariant checks are implicitly disabled",
                        r"`torch\.jit\.\w+` is deprecated", "torch.sparse_csr_tensor results are registered as constants"):
            warnings.filterwarnings("ignore", message=message)
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean",
                                category=torch.jit.TracerWarning)
        yield


def _measure(model, kind, input_shape, device, folder, name, effort, dense, narrow):
    out = {} if dense is None else {"dense": dense}
    for fmt, module in export(model, kind, narrow, dense=dense is None).items():   # copies: `model` stays
        if fmt == "slim" and stored_weights(module) == out["dense"]["weights"]:
            out[fmt] = {**out["dense"], "same_as": "dense"}
        elif fmt == "packed":   # runs decoded: dense's network and timings, its own bytes
            path = folder / f"{name}-{fmt}.pt"
            out[fmt] = {**out["dense"], "bytes": save(fmt, model, module, None, path)[0], "file": "packed",
                        "same_as": "dense"}
        else:
            out[fmt] = _figures(fmt, model, module, input_shape, device, folder / f"{name}-{fmt}.pt", effort)
    return out


def _figures(fmt, model, module, input_shape, device, path, effort):
    module = module.cpu()
    example = torch.randn(1, *input_shape)
    size, holds = save(fmt, model, module, example, path, effort.torchscript)
    rec = {"bytes": size, "file": holds, "weights": stored_weights(module),
           "peak_bytes": peak_memory(module, example), "latency": {}}
    threads = torch.get_num_threads()
    settings = [(b, t) for t in sorted({1, all_threads()}) for b in BATCHES] if effort.grid else [(1, 1)]
    try:
        for b, t in settings:
            torch.set_num_threads(t)
            x = torch.randn(b, *input_shape)
            rec["latency"][f"cpu/b{b}/t{t}"] = list(latency(module, x, effort.repeats, effort.seconds))
    finally:
        torch.set_num_threads(threads)
    if effort.grid and device.type == "cuda" and fmt != "int8":
        gpu = module.to(device)
        for b in BATCHES:
            x = torch.randn(b, *input_shape, device=device)
            rec["latency"][f"cuda/b{b}"] = list(latency(gpu, x, effort.repeats, effort.seconds))
    return rec


def all_threads():
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def headline(formats, kind):
    """The row's figures: the format that realises its compression against dense, at batch 1 on one
    CPU thread: latency_ms, measured_speedup (dense latency / its latency), model_bytes, and the
    dense latency and bytes beside them."""
    fmt = FORMAT_OF_KIND[kind]
    rec, dense = formats[fmt], formats["dense"]
    lat, dense_lat = rec["latency"]["cpu/b1/t1"][0], dense["latency"]["cpu/b1/t1"][0]
    return {"deploy_format": fmt, "latency_ms": lat, "dense_latency_ms": dense_lat,
            "measured_speedup": dense_lat / lat if lat else float("nan"), "model_bytes": rec["bytes"],
            "dense_model_bytes": dense["bytes"], "peak_memory_bytes": rec["peak_bytes"]}
