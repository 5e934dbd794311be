"""What a run trains, and a trained run read back: its device and seeds, data loaders, the model
built from the registry with its method's changes and starting weights, and model.pt rebuilt."""
import hashlib
import inspect
import json
import random

import numpy as np
import torch
import torch.utils.deterministic

import data
import methods
import models
from core import io
from core.errors import CheckpointError, HarnessError
from core.spec import RunSpec


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
        # deterministic mode also fills every new tensor with NaN before its kernel writes it, a debug
        # aid that cost an LCS training step 10 % (900 fills a step); the results are the same
        torch.utils.deterministic.fill_uninitialized_memory = False


def build_model(spec: RunSpec, info, device, init_state=None, budget_file=None, inherited=None):
    """Model from the registry, optional starting weights, then the method's changes; `inherited`
    is what the stage it starts from handed over with those weights (Method.handoff)."""
    model = models.create_model(spec.model, num_classes=info.num_classes, in_channels=info.shape[0],
                                **_model_kwargs(spec, info)).to(device)   # the method builds on its device
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


def to_channels_last(x):
    """`x` in NHWC. A one-channel batch is the same memory in both layouts, and PyTorch keeps its
    NCHW strides; convolutions read the strides to choose their output layout, so such an input
    under a computed weight (STR's soft threshold, whose unary ops drop the NHWC strides of a
    one-channel weight) came out NCHW and every later layer converted (STR's step 1.5x slower)."""
    x = x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    return x.as_strided(x.shape, (c * h * w, 1, w * c, c)) if c == 1 else x


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
    """The table's model_args, and the image size for a model whose layers depend on it (the
    LeNets' first linear layer), from the data set."""
    kwargs = dict(spec.model_args)
    if "input_size" in inspect.signature(models.check_model(spec.model)).parameters:
        kwargs.setdefault("input_size", info.shape[-1])
    return kwargs


def loaders_for(spec, device, batch_size, eval_batch_size=0, workers=4):
    return data.make_loaders(spec.dataset, spec.data_dir, batch_size, device, seed=spec.seed,
                             eval_batch_size=eval_batch_size or None, workers=workers,
                             **spec.dataset_args)
