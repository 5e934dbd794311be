"""The method interface: one trainer, many methods, each a small class the trainer calls at fixed
points. A method only overrides the hooks where its paper differs from plain training."""
import contextlib
from dataclasses import dataclass

from core.registry import Registry

METHODS = Registry("method")
method_names = METHODS.names
get_method = METHODS.get


def register_method(cls):
    """Class decorator: registers a Method subclass under its `name`."""
    return METHODS.register(cls.name, cls)


@dataclass
class NoArgs:
    pass


@dataclass(frozen=True)
class Budget:
    """One budget key a method accepts: a number in [low, high) (or, for kind "text", a name or
    path), what it means, and whether it must be given."""
    low: float
    high: float
    meaning: str
    required: bool = True
    kind: str = "number"      # number | text


@dataclass
class Progress:
    """Where training stands; handed to the schedule hooks."""
    epoch: int
    step: int                 # optimizer steps taken so far, over the whole run
    steps_per_epoch: int
    epochs: int
    lr: float | None = None   # the lr of the optimizer step just taken (first param group)

    @property
    def total_steps(self):
        return self.steps_per_epoch * self.epochs


class Method:
    name = "base"
    level_kind = None         # what evaluation_points' levels are: None, "width", "topk" or "bits"
    Args = NoArgs             # the method's own hyperparameters (a dataclass), from `method_args`
    budget_keys: dict = {}    # budget key -> Budget
    inherited: dict = {}      # what the stage this run starts from handed over (its `handoff`); the
                              # trainer sets it per instance before `build` (never changed in place)
    channels_last_on_cpu = True   # train conv nets in NHWC on the CPU too; False where the method's
                                  # layers mix memory layouts, which makes NHWC slower there

    def __init__(self, args=None, budget=None, budget_file=None):
        self.args = args if args is not None else self.Args()
        self.budget = dict(budget or {})
        self.budget_file = budget_file   # another run's budget.csv, for `budget: {transfer: <row>}`

    @classmethod
    def check(cls, args, budget, train):
        """Settings that only make sense together: the method's `args` (its Args, which check
        themselves) with its `budget` or the run's `train` (a TrainConfig). Raise ValueError naming
        the key and the fix; the tables call it when they load, before anything runs."""

    # -- hooks, in the order the trainer calls them --------------------------------------------
    def build(self, model):
        """Replace or wrap layers; return the model."""
        return model

    def param_groups(self, model, weight_decay, norm_decay=True):
        """Optimizer groups. By default every parameter gets weight decay unless norm_decay is
        off, which exempts norm weights and biases (1-d tensors)."""
        if norm_decay:
            return [{"params": [p for p in model.parameters() if p.requires_grad],
                     "weight_decay": weight_decay}]
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (no_decay if p.dim() <= 1 else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def before_training(self, model, batches, task_loss):
        """Once, before the first epoch of a run that starts afresh (never on resume: whatever it
        sets must live in the model or `state_dict`). `batches` yields training batches (x, y) on
        the device, in epoch 0's order, as many as the method takes; `task_loss(outputs, y)` is the
        trainer's loss (cross-entropy with the run's label smoothing). For methods that look at data
        before training: pruning at initialisation scores weights by |g * w| (SNIP), by gradient
        flow (GraSP) or data-free (SynFlow). Nothing here is logged as training loss, takes an
        optimizer step or moves the lr schedule. Under DDP each rank sees its part of each batch:
        a method that decides from it must reduce across ranks, or the ranks' models part."""

    def forward_levels(self, model, progress):
        """Before each batch: the forward passes to make on it, as context managers, each setting
        the model's compression level for its pass (LCS samples α per batch; the sandwich rule of
        slimmable networks makes several passes). Each pass's loss is backpropagated in turn, so
        the gradients of the passes add up before the one optimizer step. Default: one pass."""
        yield contextlib.nullcontext()

    def loss(self, model, outputs, base_loss):
        """Add regularizers or penalty terms to the task loss."""
        return base_loss

    def on_epoch_start(self, model, progress):
        pass

    def on_step(self, model, progress):
        """After each optimizer step: schedules, projections, mask updates."""
        pass

    def finalize(self, model):
        """Hard pruning or quantization before the final evaluation."""
        pass

    def handoff(self, model):
        """Turn the trained `model` (in place) into what a following stage (a row with `init: <this
        row>`) starts from, and return the facts that stage's method reads as `inherited` (e.g.
        the bit widths). Default: the finalized model, no facts."""
        self.finalize(model)
        return {}

    def eval_model(self, model):
        """Context giving the model the trainer measures each epoch's test accuracy on (and so
        `best_top1`). Default: the model as it is."""
        return contextlib.nullcontext(model)

    def evaluation_points(self):
        """Compression levels to evaluate at; one row of results each. None = the model as is."""
        return [None]

    def at_level(self, model, level):
        """Context in which the model runs at `level` (LCS, slimmable nets)."""
        return contextlib.nullcontext()

    def narrow(self, model):
        """Context in which the model's weights are those of the physically smaller network at the
        current level, for the accuracy at a level and the deployment export (harness/deploy.py
        `slim`): for methods whose structured levels can run narrow (LCS's widths). Default: the
        model as it is; the export then removes the zero channels it can find by itself."""
        return contextlib.nullcontext()

    def storage(self, model, layers):
        """Per prunable layer (the `layer_sparsity` rows): (bits per stored weight, weights
        stored). Default: 32-bit floats, zeros not stored. Quantizers override it."""
        return [(32, r["nonzero"]) for r in layers]

    def report(self, model):
        """Extra per-run facts for metrics.json (thresholds, bit widths, ...)."""
        return {}

    # -- resume ---------------------------------------------------------------------------------
    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass
