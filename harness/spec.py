"""A run spec: everything one training or evaluation job needs, resolved from a paper table.

Specs travel as JSON (Snakemake passes them as a rule parameter, so a changed row re-runs only
that row); `spec_id` names the settings that determine a run's result."""
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields


PRECISIONS = ("fp32", "bf16", "fp16")


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
    schedule: str = "cosine"          # cosine | step | constant
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


def dataclass_keys(cls):
    return {f.name for f in fields(cls)}


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

    def result_fingerprint(self):
        """Hash of the settings that decide the result (not the published values or notes)."""
        d = asdict(self)
        for k in ("published", "notes", "data_dir", "device"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
