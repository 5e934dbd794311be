"""Learning-rate schedules as plain functions of (fractional) epoch, with linear warmup."""
import math
from dataclasses import dataclass


@dataclass
class LRSchedule:
    base_lr: float
    epochs: int
    kind: str = "cosine"          # cosine | step | constant | admm_cosine
    warmup_epochs: float = 0.0
    milestones: tuple = ()        # for step: epochs at which lr *= gamma
    gamma: float = 0.1
    per_epoch: bool = False       # STR and LCS set the lr once per epoch

    def __call__(self, epoch: float) -> float:
        if self.per_epoch:
            epoch = math.floor(epoch)
            if epoch < self.warmup_epochs:  # reference form: lr * (e + 1) / warmup
                return self.base_lr * (epoch + 1) / self.warmup_epochs
        elif epoch < self.warmup_epochs:
            return self.base_lr * epoch / self.warmup_epochs
        if self.kind == "constant":
            return self.base_lr
        if self.kind == "step":
            return self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.kind == "cosine":
            span = max(self.epochs - self.warmup_epochs, 1e-12)
            return 0.5 * (1 + math.cos(math.pi * (epoch - self.warmup_epochs) / span)) * self.base_lr
        if self.kind == "admm_cosine":
            # ADMM train.py's quirk: its cosine steps only from the first whole epoch e >= warmupT
            # (`epoch >= args.warmupT`, epoch an integer), the lr held until then, and it spans
            # (epochs - warmupT) epochs of steps, so after a fractional warmup it ends above 0
            start = math.ceil(self.warmup_epochs)
            if epoch < start:
                return self.base_lr
            span = max(self.epochs - self.warmup_epochs, 1e-12)
            return 0.5 * (1 + math.cos(math.pi * (epoch - start) / span)) * self.base_lr
        raise ValueError(f"unknown lr schedule {self.kind!r}; choose cosine, step, constant or admm_cosine")
