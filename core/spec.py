"""A run spec: everything one training or evaluation job needs, resolved from a paper table.

Specs travel as JSON. Snakemake passes a run's `result_json` as a rule parameter, so a changed
setting re-runs that run only if it can change its result: the published values and notes (joined
in by harness/aggregate.py from the current table), the data folder and the device are not part
of it and travel as their own command-line options."""
import hashlib
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields

from core.registry import check_choice

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant", "admm_cosine")


@dataclass
class TrainConfig:
    """The one trainer's hyperparameters; every paper row sets some of these under `train:`."""
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"            # sgd | adam | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    norm_decay: bool = True           # weight decay on norm weights and biases too (the references' default)
    schedule: str = "cosine"          # cosine | step | constant | admm_cosine (core/schedules.py)
    warmup_epochs: float = 0.0
    milestones: list = field(default_factory=list)
    gamma: float = 0.1
    lr_per_epoch: bool = False        # STR and LCS update the lr once per epoch
    label_smoothing: float = 0.0
    grad_clip: float = 0.0            # max gradient norm; 0 = off
    grad_clip_norm: float = 2.0       # the norm it is measured in: 2, or inf (ADMM's train.py --gclip)
    precision: str = "fp32"           # fp32 (every reference's numerics) | bf16 | fp16: autocast on CUDA, an
                                      # explicit choice of a table or row; the CPU always trains in fp32
    eval_every: int = 1               # test accuracy every N epochs (0: only at the end)
    eval_batch_size: int = 0          # 0: the loader's default
    gpus: int = 1                     # GPUs one run asks its scheduler for (paper scale); one DDP process each
    processes: int = 0                # DDP processes (torchrun); 0: one per GPU the job gets. Set >1 on a
                                      # machine without CUDA to train on CPU with gloo (tests)

    def __post_init__(self):
        check_field_types(self, "train")
        check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        check_choice("train.schedule", self.schedule, SCHEDULES)
        check_choice("train.precision", self.precision, PRECISIONS)
        at_least = {"epochs": 0, "batch_size": 1, "momentum": 0, "weight_decay": 0, "warmup_epochs": 0,
                    "grad_clip": 0, "eval_every": 0, "eval_batch_size": 0, "gpus": 1, "processes": 0}
        for key, low in at_least.items():
            if getattr(self, key) < low:
                raise ValueError(f"train.{key}={getattr(self, key)!r} should be >= {low}")
        for key in ("lr", "gamma", "grad_clip_norm"):
            if not getattr(self, key) > 0:
                raise ValueError(f"train.{key}={getattr(self, key)!r} should be > 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"train.label_smoothing={self.label_smoothing!r} should be in [0, 1)")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("train.nesterov needs optimizer sgd with momentum > 0; set train.momentum or remove nesterov")
        if not all(isinstance(m, (int, float)) and not isinstance(m, bool) and m >= 0 for m in self.milestones):
            raise ValueError(f"train.milestones={self.milestones!r} should be a list of epochs (numbers >= 0)")
        # per epoch, warmup is the reference form lr*(e+1)/warmup, which a short run may never finish
        # (LCS's fixed 5 warmup epochs at a 3-epoch laptop recipe); per step, it would be a typo
        if self.epochs > 0 and self.warmup_epochs > self.epochs and not self.lr_per_epoch:
            raise ValueError(f"train.warmup_epochs={self.warmup_epochs!r} is longer than train.epochs={self.epochs}; "
                             f"shorten the warmup, or set lr_per_epoch: true for a warmup the run does not finish")


def check_field_types(obj, what):
    """Every field of a settings dataclass has its annotated type (int is not bool, an int is a
    float, `T | None` may be None): a spec read from JSON is checked as a table's row is."""
    for f, typ in typing.get_type_hints(type(obj)).items():
        if f not in {x.name for x in fields(obj)}:
            continue
        value = getattr(obj, f)
        if not _has_type(value, typ):
            raise ValueError(f"{what}.{f}={value!r} should be of type {getattr(typ, '__name__', typ)}")


def _has_type(value, typ):
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        return any(_has_type(value, t) for t in typing.get_args(typ))
    typ = typing.get_origin(typ) or typ
    if typ is type(None):
        return value is None
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typ) if isinstance(typ, type) else True


# what a spec carries beside its result's settings: shown beside the result, or where and on what it
# runs; changing one re-runs nothing (rules/train.smk) and keeps every checkpoint (harness/trainer.py)
NOT_RESULT = ("published", "notes", "data_dir", "device")


@dataclass
class RunSpec:
    scale: str
    paper: str
    row: str
    seed: int
    method: str
    model: str
    dataset: str
    train: dict
    model_args: dict = field(default_factory=dict)
    dataset_args: dict = field(default_factory=dict)
    method_args: dict = field(default_factory=dict)
    budget: dict = field(default_factory=dict)
    init: str | None = None           # "pretrain" (the shared dense model) or another row's name
    published: dict = field(default_factory=dict)
    notes: str = ""
    data_dir: str = "data/downloads"
    device: str = "auto"

    def to_json(self):
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))

    @property
    def train_config(self):
        return TrainConfig(**self.train)

    def result_dict(self):
        """The settings that decide the result: all but NOT_RESULT."""
        return {k: v for k, v in asdict(self).items() if k not in NOT_RESULT}

    def result_json(self):
        return json.dumps(self.result_dict(), sort_keys=True, separators=(",", ":"))

    def result_fingerprint(self):
        """Hash of the settings that decide the result."""
        return hashlib.sha256(json.dumps(self.result_dict(), sort_keys=True).encode()).hexdigest()[:16]
