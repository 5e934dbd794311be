"""Run the papers' reference code at this harness's laptop recipe, on the same images, and print
the values a laptop run of the harness is checked against (`reference:` in config/papers/<paper>.yaml).

    .venv/bin/python bench/reference_runs.py --deephoyer ~/src/DeepHoyer \\
        --admm ~/src/sparsity_quantization_joint --lcs ~/src/learning-compressible-subspaces \\
        [--papers hoyer admm lcs] [--seeds 0 1 2] [--rows 'lenet300-100-*'] [--work reference-runs] \\
        [--threads 1] [--dry-run]

The repositories are your own clones (github.com/yanghr/DeepHoyer, hyang1990/sparsity_quantization_joint,
apple/learning-compressible-subspaces); nothing of theirs is copied here, and the clones are not
modified. The recipe is read from the paper tables at laptop scale (harness/tables.py expands them
exactly as the workflow does): every row becomes the reference script command with the same
epochs, batch size, lr, strengths, thresholds, budgets and starting model (the chain of `init:`
rows, the table's `pretrain` trained by the reference's own script). Each run gets its own folder
under --work (a finished one is not run again: a killed run resumes at the next unfinished stage),
its log, and a result.json; then the values over seeds are printed and written, as YAML ready to
paste at the end of each table, to <work>/<paper>.reference.yaml.

Each script runs in a child process of this file (`_exec`), which changes only what the swap needs
(see PATCHES and `_patch_environment`):
- data: torchvision's MNIST (DeepHoyer, ADMM) becomes Fashion-MNIST restricted to the harness's
  training subset (data/registry.py `_subset`: the same images); LCS reads CIFAR-format batches
  written from that subset (padded to 32x32, 3 channels) and torchvision's CIFAR10 MD5 check of
  the batch files is skipped (it rejects any batch that is not the original);
- device: CPU (DeepHoyer --no-cuda; ADMM's misc.validate asks for .cuda() unconditionally);
- DeepHoyer reads `args.reg_type`, which its parser never sets (`--reg`): a crash, fixed by text;
- imports a script makes but never uses are stubbed when absent (DeepHoyer `scipy.io`, ADMM
  finetune.py's `proxyless_nas`);
- one thread per run (OMP/MKL and torch.set_num_threads), run under `nice`.
Where the reference's recipe cannot follow the harness's (a fixed weight decay in a script, a
dense schedule split over two scripts), the stage says so in its `differences`, which go to the YAML."""
import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCALE = "laptop"
RESULT_TAG = "REFERENCE_RESULT "
REPOS = {"deephoyer": "github.com/yanghr/DeepHoyer",
         "admm": "github.com/hyang1990/sparsity_quantization_joint",
         "lcs": "github.com/apple/learning-compressible-subspaces"}
PAPER_REPO = {"hoyer": "deephoyer", "admm": "admm", "lcs": "lcs"}

# what the child changes besides the scripts' text (see _patch_environment), per repository
PATCH_NOTES = {
    "deephoyer": ["torchvision MNIST -> the harness's Fashion-MNIST subset", "--no-cuda",
                  "scipy.io stubbed when absent (imported, unused)"],
    "admm": ["torchvision MNIST -> the harness's Fashion-MNIST subset, normalised with the harness row's constants "
             "(Fashion-MNIST's own: the script's MNIST constants leave it uncentred, and pretraining diverged on 2 "
             "of 3 seeds)",
             "misc.validate's .cuda() only where CUDA exists", "proxyless_nas stubbed (finetune.py imports it, "
             "unused)", "torchvision.models.utils -> torch.hub (moved in torchvision 0.12)"],
    "lcs": ["CIFAR-10 batches written from the harness's Fashion-MNIST subsets (zero-padded to 32x32, grey in 3 "
            "channels; its own CIFAR normalisation and augmentation kept)", "torchvision's CIFAR10 MD5 check "
            "skipped", "data loading in the main process (num_workers 0)", "python/numpy/torch seeded with the "
            "seed (it seeds nothing)", "configs/ linked into the run folder (read relative to it)"],
}
# text substitutions on a script's source before it runs: (repo, script file name or "*", old, new, why)
PATCHES = [
    ("deephoyer", "*", "args.reg_type", "args.reg",
     "the scripts read args.reg_type, which the parser never sets (--reg)"),
]


@dataclass
class Stage:
    """One reference script run: it produces `name` (a table row, or an intermediate model)."""
    name: str
    row: str | None                 # the table row it reports; None: the pretrain or a first half
    repo: str                       # key of REPOS
    script: str                     # path inside the repository
    args: list                      # flags; "{seed}" is replaced per seed
    init: str | None = None         # the stage whose output it starts from
    init_as: str | None = None      # where the script expects that file (relative to its folder)
    output: str | None = None       # the file it leaves for stages started from it
    parse: str = "deephoyer"        # which PARSERS entry reads its log
    data: dict = field(default_factory=dict)     # train_size, test_size, layout
    differences: list = field(default_factory=list)
    post: str | None = None         # what the child does after the script (evaluate its model)

    def command(self, seed=None):
        args = [a.replace("{seed}", str(seed)) if seed is not None else a for a in self.args]
        return " ".join(["python", Path(self.script).name, *args])


# -- the recipe: paper table rows at laptop scale -> reference commands ------------------------------

def _differ(out, what, harness, reference):
    if harness != reference:
        out.append(f"{what}: harness {harness}, reference {reference}")


def _train(spec):
    """A spec's train settings with TrainConfig's defaults filled in."""
    from dataclasses import asdict
    from core.spec import TrainConfig
    return asdict(TrainConfig(**spec.train))


def _method_args(spec):
    """A spec's method_args with the method's defaults filled in."""
    from dataclasses import asdict
    import methods
    return asdict(methods.get_method(spec.method).Args(**spec.method_args))


def _data(spec):
    return {k: spec.dataset_args[k] for k in ("train_size", "test_size") if spec.dataset_args.get(k)}


def _normalised_data(spec):
    """_data plus the (mean, std) the harness row normalises with, for a script that normalises."""
    from data.registry import dataset_info
    info = dataset_info(spec.dataset, **spec.dataset_args)
    return {**_data(spec), "mean": list(info.mean), "std": list(info.std)}


def _adam_differences(train, weight_decay):
    out = []
    _differ(out, "optimizer", train["optimizer"], "adam")
    _differ(out, "weight_decay", train["weight_decay"], weight_decay)
    for key, ref in (("warmup_epochs", 0.0), ("grad_clip", 0.0), ("label_smoothing", 0.0)):
        _differ(out, key, train[key], ref)
    return out


DEEPHOYER_REG = {"l1": ("element.py", 1), "hoyer": ("element.py", 2), "hoyer_square": ("element.py", 3),
                 "tl1": ("element.py", 4), "group_lasso": ("structure.py", 1), "group_hs": ("structure.py", 2)}
DEEPHOYER_WD = {"element.py": 0.0, "structure.py": 1e-4, "prun_tune_V.py": 1e-4, "prun_tune_T.py": 0.0}
DEEPHOYER_PRETRAIN = "saves/elt_0.0_0.pth"    # where element.py/structure.py --pretrained load from


def _deephoyer_folder(model):
    if model.startswith("lenet300"):
        return "mnist/MLP"
    if model.startswith("lenet5"):
        return "mnist/CNN"
    raise ValueError(f"hoyer: no DeepHoyer MNIST script for model {model!r} (lenet300-100 or LeNet-5 only)")


def _deephoyer_common(train, seed_flag=True):
    return ["--epochs", str(train["epochs"]), "--lr", repr(float(train["lr"])),
            "--batch-size", str(train["batch_size"]), "--no-cuda"] + (["--seed", "{seed}"] if seed_flag else [])


def plan_hoyer(table, specs):
    stages = {}
    for spec in specs:
        folder, train, data = _deephoyer_folder(spec.model), _train(spec), _data(spec)
        if spec.init == "pretrain":
            pre = table.pretrain_spec(spec)
            pname = _pretrain_name(pre)
            if pname not in stages:
                t = _train(pre)
                diffs = _adam_differences(t, 0.0)
                _differ(diffs, "schedule", t["schedule"], "constant")
                stages[pname] = Stage(pname, None, "deephoyer", f"{folder}/element.py",
                                      ["--reg", "0", "--decay", "0.0", *_deephoyer_common(t)],
                                      output=DEEPHOYER_PRETRAIN, data=data, differences=diffs)
            init = pname
        else:
            init = spec.init
        if spec.method == "dense":
            _plan_deephoyer_dense(stages, spec, train, folder, init, data)
        elif spec.method in DEEPHOYER_REG:
            script, reg = DEEPHOYER_REG[spec.method]
            decay = float(spec.method_args["decay"])
            diffs = _adam_differences(train, DEEPHOYER_WD[script])
            _differ(diffs, "schedule", train["schedule"], "constant")
            if spec.method in ("group_lasso", "group_hs") and folder == "mnist/CNN":
                _differ(diffs, "conv_groups", spec.method_args.get("conv_groups", "channel_filter"),
                        "fiber for group_lasso; group_hs regularizes the first conv layer only (its loop breaks)"
                        if spec.method == "group_hs" else "fiber")
            prefix = "elt" if script == "element.py" else "str"
            stages[spec.row] = Stage(spec.row, spec.row, "deephoyer", f"{folder}/{script}",
                                     ["--reg", str(reg), "--decay", repr(decay), "--pretrained",
                                      *_deephoyer_common(train)],
                                     init=init, init_as=DEEPHOYER_PRETRAIN,
                                     output=f"saves/{prefix}_{decay!r}_{reg}.pth", data=data,
                                     differences=diffs, post="deephoyer")
        elif spec.method == "finetune":
            rule = spec.method_args["prune"]
            script = {"std": "prun_tune_V.py", "threshold": "prun_tune_T.py"}[rule]
            diffs = _adam_differences(train, DEEPHOYER_WD[script])
            _differ(diffs, "schedule", train["schedule"], "constant")
            _differ(diffs, "biases pruned", spec.method_args.get("biases", True), True)
            stages[spec.row] = Stage(spec.row, spec.row, "deephoyer", f"{folder}/{script}",
                                     ["--model", "saves/init", "--sensitivity",
                                      repr(float(spec.method_args["value"])), *_deephoyer_common(train)],
                                     init=init, init_as="saves/init.pth", data=data, differences=diffs,
                                     post="deephoyer")
        else:
            raise ValueError(f"hoyer: row {spec.row!r}: no reference script for method {spec.method!r}")
    return stages


def _plan_deephoyer_dense(stages, spec, train, folder, init, data):
    """element.py --reg 0 trains on at a constant lr; the laptop dense row steps its lr down once,
    which the reference does by a second script: prun_tune_T with threshold 0 (prunes nothing)."""
    diffs = _adam_differences(train, 0.0)
    milestones = list(train["milestones"]) if train["schedule"] == "step" else []
    if train["schedule"] not in ("constant", "step") or len(milestones) > 1:
        raise ValueError(f"hoyer: row {spec.row!r}: schedule {train['schedule']} {milestones} has no reference form")
    first = milestones[0] if milestones else train["epochs"]
    common = dict(repo="deephoyer", data=data, post="deephoyer")
    head = Stage(spec.row + "#1" if milestones else spec.row, None if milestones else spec.row,
                 script=f"{folder}/element.py",
                 args=["--reg", "0", "--decay", "0.0", "--pretrained",
                       *_deephoyer_common({**train, "epochs": first})],
                 init=init, init_as=DEEPHOYER_PRETRAIN, output=DEEPHOYER_PRETRAIN, differences=diffs, **common)
    stages[head.name] = head
    if milestones:
        rest = {**train, "epochs": train["epochs"] - first, "lr": train["lr"] * train["gamma"]}
        diffs = diffs + [f"lr step at epoch {first}: a second script (prun_tune_T.py, threshold 0: "
                         f"prunes nothing) at lr x{train['gamma']}, so Adam's moments restart there"]
        stages[spec.row] = Stage(spec.row, spec.row, script=f"{folder}/prun_tune_T.py",
                                 args=["--model", "saves/init", "--sensitivity", "0.0", *_deephoyer_common(rest)],
                                 init=head.name, init_as="saves/init.pth", differences=diffs, **common)


ADMM_FLAGS = ("rho", "projint", "dualint", "bwlb", "bits_epoch", "kdtemp")
ADMM_SWITCHES = ("prox", "fixedbits")
ADMM_MODEL = "log/model_latest.pt"     # train.py/finetune.py save the latest model here (its --logdir)


def _admm_train_flags(t):
    out = ["--dataset", "mnist", "--arch", "caffelenet", "-b", str(t["batch_size"]), "--lr", repr(float(t["lr"])),
           "--momentum", repr(float(t["momentum"])), "--wd", repr(float(t["weight_decay"])),
           "--warmupT", repr(float(t["warmup_epochs"])), "--epochs", str(t["epochs"]),
           "--seed", "{seed}", "-j", "0", "--log_interval", "-1", "--logdir", "{logdir}"]
    if t["schedule"] in ("cosine", "admm_cosine"):
        out[out.index("--lr"):out.index("--lr")] = ["--lr_sched", "cos"]
    elif t["schedule"] == "step":
        out[out.index("--lr"):out.index("--lr")] = ["--lr_sched", ",".join(["step", *map(str, t["milestones"])])]
    if t["grad_clip"]:
        out += ["--gclip", repr(float(t["grad_clip"]))]
    return out


def _admm_differences(t, dense=False):
    out = []
    _differ(out, "optimizer", t["optimizer"], "sgd")
    _differ(out, "nesterov", t["nesterov"], False)
    _differ(out, "lr_per_epoch", t["lr_per_epoch"], False)
    _differ(out, "label_smoothing", t["label_smoothing"], 0.0)
    if t["schedule"] == "step":
        _differ(out, "gamma", t["gamma"], 0.5)
    if t["schedule"] == "cosine" and t["warmup_epochs"] % 1:
        out.append("schedule: harness cosine decays from the end of the warmup; after a fractional warmupT "
                   "train.py holds the lr to the next whole epoch and never reaches 0 (schedule: admm_cosine)")
    if t["grad_clip"]:
        _differ(out, "grad_clip_norm", t["grad_clip_norm"], float("inf"))
    if dense:
        out.append("dense training is train.py --prune --nnz_budget 1.0, whose projection zeroes the one "
                   "smallest weight (it keeps one fewer than fits); weight decay on `*weight` only "
                   f"(harness norm_decay {t['norm_decay']}: biases too)")
    return out


def plan_admm(table, specs):
    stages = {}
    for spec in specs:
        if spec.model != "lenet5-caffe" and not spec.model.startswith("lenet5"):
            raise ValueError(f"admm: row {spec.row!r}: the laptop reference runs cover LeNet-5 only")
        data, t = _normalised_data(spec), _train(spec)
        init = spec.init
        if init == "pretrain":
            pre = table.pretrain_spec(spec)
            init = _pretrain_name(pre)
            if init not in stages:
                pt = _train(pre)
                stages[init] = Stage(init, None, "admm", "train.py",
                                     ["--prune", "--nnz_budget", "1.0", *_admm_train_flags(pt)],
                                     output=ADMM_MODEL, parse="admm", data=data,
                                     differences=_admm_differences(pt, dense=True))
        init_flags = ["--pretrain", "init.pt"] if init else []
        if spec.method == "dense":
            stages[spec.row] = Stage(spec.row, spec.row, "admm", "train.py",
                                     ["--prune", "--nnz_budget", "1.0", *init_flags, *_admm_train_flags(t)],
                                     init=init, init_as="init.pt", output=ADMM_MODEL, parse="admm", data=data,
                                     differences=_admm_differences(t, dense=True))
        elif spec.method == "admm":
            args, diffs = _admm_method_flags(spec)
            stages[spec.row] = Stage(spec.row, spec.row, "admm", "train.py",
                                     [*args, *init_flags, *_admm_train_flags(t)], init=init, init_as="init.pt",
                                     output=ADMM_MODEL, parse="admm", data=data,
                                     differences=_admm_differences(t) + diffs)
        elif spec.method == "finetune" and spec.method_args.get("quantize"):
            args = []
            if spec.method_args.get("weightbits"):
                args += ["--weightbits", ",".join(map(str, spec.method_args["weightbits"]))]
            diffs = _admm_differences(t)
            # finetune.py masks and quantizes conv/linear weights only; biases train freely
            _differ(diffs, "method_args.tensors", _method_args(spec).get("tensors"), "weights")
            stages[spec.row] = Stage(spec.row, spec.row, "admm", "finetune.py",
                                     [*args, *init_flags, *_admm_train_flags(t)], init=init, init_as="init.pt",
                                     output=ADMM_MODEL, parse="admm", data=data, differences=diffs)
        else:
            raise ValueError(f"admm: row {spec.row!r}: no reference script for method {spec.method!r}")
    return stages


def _admm_method_flags(spec):
    a, budget, diffs = spec.method_args, spec.budget, []
    mode = a.get("mode", "joint")
    out = {"joint": [], "prune": ["--prune"], "quantize": ["--quant"]}[mode]
    if mode != "quantize":
        out += ["--nnz_budget", repr(float(budget["nnz_budget"]))]
    if mode != "prune":
        out += ["--bit_budget", repr(float(budget["bit_budget"]))]
    for key in ADMM_FLAGS:
        if key in a:
            out += [f"--{key}", str(a[key])]
    out += [f"--{key}" for key in ADMM_SWITCHES if a.get(key)]
    if mode != "quantize":          # quantized_sparsify keeps one weight fewer than fits
        _differ(diffs, "off_by_one", a.get("off_by_one", False), True)
    _differ(diffs, "project_first_step", a.get("project_first_step", True), True)
    return out, diffs


def _pretrain_name(pre):
    from harness.tables import pretrain_row
    return pretrain_row(pre)


LCS_SCRIPT = {"structured": "train_structured.py", "unstructured": "train_unstructured.py",
              "quantized": "train_quantized.py"}
LCS_FIXED = {"structured": "structured", "lec": "structured", "us": "structured", "ns": "structured",
             "target_topk": "unstructured", "target_bit_width": "quantized"}
# method_args that are README flags of the reference (lists are comma-joined); which script parses which
LCS_FLAGS = {"norm": None, "width_factors_list": "structured", "width_factor_limits": "structured",
             "width_factor_samples": "structured", "eval_width_factors": "structured", "topk": "unstructured",
             "eval_topk_grid": "unstructured", "topk_lower_bound": "unstructured",
             "topk_upper_bound": "unstructured", "warmup_budget": "unstructured", "bit_width": "quantized",
             "eval_bit_widths": "quantized", "bit_width_limits": "quantized"}
# harness options with no flag: the reference's fixed behaviour, as the harness names it
LCS_REFERENCE_BEHAVIOUR = {"beta": 1.0, "endpoint_probability": 0.5, "discrete_alpha_map": True,
                           "topk_gradient": "masked", "eval_alpha": "reference", "fold_bn": True,
                           "lec_sparsity": 1.0e-5}
LCS_INPUT = "fashion-mnist-cifar"   # the harness rows that read what the reference reads (CIFAR batches)
LCS_WARMUP_EPOCHS = 5          # utils.network_and_params: cosine_lr(..., warmup_length=5), lr set per epoch


def _lcs_flag(value):
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def plan_lcs(table, specs):
    stages = {}
    for spec in specs:
        if spec.model != "cpreresnet20":
            raise ValueError(f"lcs: row {spec.row!r}: the laptop reference runs cover cPreResNet20 only")
        if spec.dataset != LCS_INPUT:     # its width-1, 3-channel network reads nothing else
            continue
        t, a = _train(spec), spec.method_args
        setting = LCS_FIXED.get(spec.method) or a.get("setting")
        args = ["--method", spec.method, "--model", "cpreresnet20", "--dataset", "cifar10",
                "--epochs", str(t["epochs"]), "--test_freq", str(t["epochs"]),
                "--learning_rate", repr(float(t["lr"])), "--batch_size", str(t["batch_size"]),
                "--momentum", repr(float(t["momentum"])), "--weight_decay", repr(float(t["weight_decay"])),
                "--save_dir", "saved"]
        diffs = []
        for key, only in LCS_FLAGS.items():
            if key in a and a[key] is not None and only in (None, setting):
                args += [f"--{key}", _lcs_flag(a[key])]
            elif key in a and a[key] is not None and key != "warmup_budget":
                diffs.append(f"{key}: harness {a[key]}, no such flag for the {setting} script")
        full = _method_args(spec)
        if setting != "unstructured" and full["warmup_budget"] != 80:
            diffs.append(f"warmup_budget: harness {full['warmup_budget']}, reference 80 (its configs; the flag "
                         f"is parsed for the unstructured script only)")
        for key, ref in LCS_REFERENCE_BEHAVIOUR.items():
            if key == "eval_alpha" and not (spec.method == "lcs_l" and setting == "quantized"):
                continue            # used by quantized lines only
            if key in full:
                _differ(diffs, key, full[key], ref)
        _differ(diffs, "model width", spec.model_args.get("width", 1.0), 1.0)
        for key, ref in (("optimizer", "sgd"), ("nesterov", False), ("schedule", "cosine"),
                         ("lr_per_epoch", True), ("label_smoothing", 0.0), ("grad_clip", 0.0)):
            _differ(diffs, key, t[key], ref)
        if t["warmup_epochs"] != LCS_WARMUP_EPOCHS:
            diffs.append(f"warmup_epochs: harness {t['warmup_epochs']}, reference {LCS_WARMUP_EPOCHS} (fixed; "
                         f"lr (e+1)/5 x lr in epoch e < 5, cosine after)")
        stages[spec.row] = Stage(spec.row, spec.row, "lcs", LCS_SCRIPT[setting], args, parse="lcs",
                                 data={**_data(spec), "layout": "cifar"}, differences=diffs, post="lcs")
    return stages


PLANNERS = {"hoyer": plan_hoyer, "admm": plan_admm, "lcs": plan_lcs}


def plan(paper, rows=None):
    """{stage name: Stage} of a table's laptop rows (those matching `rows` and what they start from)."""
    from harness.tables import PaperTable
    table = PaperTable(ROOT / "config" / "papers" / f"{paper}.yaml")
    specs = table.specs(SCALE, [0], parity=True)
    stages = PLANNERS[paper](table, specs)
    if not rows:
        return stages
    keep = set()
    for name, stage in stages.items():
        if stage.row and any(fnmatch.fnmatch(stage.row, pat) for pat in rows):
            while name and name not in keep:
                keep.add(name)
                name = stages[name].init
    return {k: v for k, v in stages.items() if k in keep}


# -- running -------------------------------------------------------------------------------------

def stage_dir(work, paper, seed, name):
    return Path(work) / paper / f"seed{seed}" / name.replace("#", "-part")


class StageFailed(RuntimeError):
    def __init__(self, message, reason):
        super().__init__(message)
        self.reason = reason


def failure_reason(log, rc):
    """One line from a failed script's log: its exception and where it was raised."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    where = [i for i, ln in enumerate(lines) if re.match(r'File ".+", line \d+, in ', ln)]
    if not where:
        return f"exit {rc}: {lines[-1] if lines else 'no output'}"
    i = where[-1]
    m = re.match(r'File "(.+)", line (\d+), in (.+)', lines[i])
    source = lines[i + 1] if i + 1 < len(lines) - 1 else ""
    return f"{lines[-1]} at {Path(m.group(1)).name}:{m.group(2)} ({m.group(3)}): {source}"


DIVERGED = re.compile(r"[Ll]oss[=: ]+nan")      # the three references' training logs


def diverged(text):
    """The harness stops a run at a non-finite loss; a reference run that went NaN counts as failed too
    (its scripts train on and report chance accuracy)."""
    m = DIVERGED.search(text)
    if not m:
        return None
    epoch = re.findall(r"(?:Train Epoch|epoch):? (\d+)", text[:m.start()])
    return "diverged: the training loss became NaN" + (f" in epoch {epoch[-1]}" if epoch else "")


def fingerprint(stage, fingerprints):
    """What decides a stage's result: its script, flags, data and the stage it starts from."""
    import hashlib
    key = json.dumps([stage.script, stage.command(), stage.data, fingerprints.get(stage.init)])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def run_stage(stage, paper, seed, repos, work, threads, nice, fp=None):
    """Run one stage (unless it ran with the same fingerprint `fp`) and return its result, read from
    its log (so a rule added to the parsers applies to finished runs too)."""
    folder = stage_dir(work, paper, seed, stage.name)
    done = folder / "result.json"
    if done.exists():
        old = json.loads(done.read_text())
        if old.get("fingerprint", fp) == fp and old.get("command") == stage.command(seed):
            if "fingerprint" not in old:         # a run from before fingerprints: the same command
                done.write_text(json.dumps({**old, "fingerprint": fp}, indent=1))
            text = (folder / "log.txt").read_text(errors="replace")
            if diverged(text):
                raise StageFailed(f"{paper} seed {seed} {stage.name}: {diverged(text)}", diverged(text))
            return {**PARSERS[stage.parse](text), "wall_s": old["wall_s"], "command": old["command"]}
    if folder.exists():
        shutil.rmtree(folder)          # an unfinished run starts over (the scripts do not resume)
    folder.mkdir(parents=True)
    if stage.init:
        src = stage_dir(work, paper, seed, stage.init) / _stage_output(stage.init, paper)
        dst = folder / stage.init_as
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    args = [a.replace("{seed}", str(seed)).replace("{logdir}", str((folder / "log").resolve())) for a in stage.args]
    repo = Path(repos[stage.repo]).resolve()
    cmd = ["nice", "-n", str(nice), sys.executable, str(Path(__file__).resolve()), "_exec",
           "--repo-kind", stage.repo, "--repo", str(repo), "--script", stage.script,
           "--data", json.dumps(stage.data), "--threads", str(threads)]
    if stage.post:
        cmd += ["--post", stage.post]
    if stage.repo == "lcs":                      # the reference seeds nothing
        cmd += ["--seed", str(seed)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    print(f"[{paper} seed {seed}] {stage.name}: {stage.command(seed)}", flush=True)
    tic = time.time()
    with open(folder / "log.txt", "w") as log:
        rc = subprocess.run([*cmd, "--", *args], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.time() - tic
    text = (folder / "log.txt").read_text(errors="replace")
    if rc != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise StageFailed(f"{paper} seed {seed} {stage.name} failed (exit {rc}); log {folder}/log.txt:\n{tail}",
                          failure_reason(text, rc))
    result = {**PARSERS[stage.parse](text), "wall_s": round(wall, 1), "command": stage.command(seed),
              "fingerprint": fp}
    done.write_text(json.dumps(result, indent=1))
    if diverged(text):
        raise StageFailed(f"{paper} seed {seed} {stage.name}: {diverged(text)}", diverged(text))
    print(f"    {wall:.0f} s: {json.dumps({k: v for k, v in result.items() if k != 'command'})}", flush=True)
    return result


_OUTPUTS = {}


def register_outputs(paper, stages):
    """Where each stage leaves its model, for run_stage to copy into the stages started from it."""
    for name, st in stages.items():
        _OUTPUTS[(paper, name)] = st.output


def _stage_output(name, paper):
    return _OUTPUTS[(paper, name)]


def run_paper(paper, stages, seeds, repos, work, threads, nice, collect=False):
    """{row: [result per seed]} after running every stage in an order that respects `init`."""
    import fcntl
    (Path(work) / paper).mkdir(parents=True, exist_ok=True)
    lock = open(Path(work) / paper / ".lock", "w")
    try:                    # two runs in one folder would delete each other's unfinished stages
        if not collect:     # (collecting only reads)
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"error: another reference_runs.py is running in {Path(work) / paper}; wait for it or use --work")
    register_outputs(paper, stages)
    order, seen = [], set()

    def visit(name):
        if name in seen:
            return
        if stages[name].init:
            visit(stages[name].init)
        seen.add(name)
        order.append(name)
    for name in stages:
        visit(name)
    fps = {}
    for name in order:
        fps[name] = fingerprint(stages[name], fps)
    results, failures = {}, {}
    for seed in seeds:
        failed = {}
        for name in order:
            init = stages[name].init
            if init in failed:                  # None: not run yet (--collect), nor is this
                root = failed[init] and failed[init].split(" failed: ", 1)[-1]
                failed[name] = root and f"starts from {init}, which failed: {root}"
            elif collect and not (stage_dir(work, paper, seed, name) / "result.json").exists():
                failed[name] = None             # not run yet: neither a value nor a failure
            else:
                try:
                    res = run_stage(stages[name], paper, seed, repos, work, threads, nice, fps[name])
                except StageFailed as err:       # go on with the rows that do not depend on it
                    failed[name] = err.reason
                    print(err, flush=True)
                else:
                    if stages[name].row:
                        results.setdefault(stages[name].row, []).append({**res, "seed": seed})
            if failed.get(name) and stages[name].row:
                failures.setdefault(stages[name].row, []).append(f"seed {seed}: {failed[name]}")
    return results, failures


# -- reading the reference's output ---------------------------------------------------------------

def _last_float(pattern, text):
    hits = re.findall(pattern, text)
    return float(hits[-1]) if hits else None


def parse_deephoyer(text):
    """The child's evaluation of the script's final model (its own test()), and prun_tune_V's best
    accuracy over its epochs ("Accuracy: x%")."""
    lines = [ln for ln in text.splitlines() if ln.startswith(RESULT_TAG)]
    out = json.loads(lines[-1][len(RESULT_TAG):]) if lines else {}
    best = _last_float(r"Accuracy: ([0-9.]+)%", text)     # prun_tune_V only ("Test set: ..." has a "/")
    if best is not None:
        out["best_top1"] = best
    return out


def parse_admm(text):
    """train.py / finetune.py's last evaluation: Prec@1 (a fraction), the nonzero fraction
    (nnz_eval), mean bits (ave_weight_bits_eval) and the stored / dense size (compression rate)."""
    top1 = _last_float(r"Prec@1 ([0-9.]+)", text)
    nnz = _last_float(r"(?m)^nnz_eval=\s*([0-9.eE+-]+)", text)
    bits = _last_float(r"ave_weight_bits_eval=\s*([0-9.eE+-]+)", text)
    rate = _last_float(r"compression rate=([0-9.eE+-]+)\n", text + "\n")
    out = {"top1": round(100 * top1, 4)}
    if nnz is not None:
        out["sparsity"] = round(1 - nnz, 6)
    if bits is not None:
        out["bits"] = bits
    if rate:
        out["compression"] = round(1 / rate, 3)
    return out


def parse_lcs(text):
    """test_metrics.npy of the final evaluation (read by the child): one entry per level."""
    lines = [ln for ln in text.splitlines() if ln.startswith(RESULT_TAG)]
    return json.loads(lines[-1][len(RESULT_TAG):])


PARSERS = {"deephoyer": parse_deephoyer, "admm": parse_admm, "lcs": parse_lcs}


# -- the values: mean, std, n over seeds ----------------------------------------------------------

def summarize(values):
    import statistics
    values = [v for v in values if v is not None]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "std": round(std, 4), "n": len(values)}


# metrics recorded per row: top1 always; the others where the reference reports them
REPORTED = {"deephoyer": ("top1", "best_top1", "sparsity"), "admm": ("top1", "sparsity", "bits", "compression")}


def level_entries(results):
    """{level: {top1: {mean, std, n}, sparsity or bits: mean}} over the seeds' per-level results."""
    out = {}
    for level in sorted({lv["level"] for r in results for lv in r["levels"]}):
        at = [lv for r in results for lv in r["levels"] if lv["level"] == level]
        out[level] = {"top1": summarize([lv["top1"] for lv in at])}
        for metric in ("sparsity", "bits"):
            s = summarize([lv.get(metric) for lv in at])
            if s is not None:
                out[level][metric] = s["mean"]
    return out


def row_entry(stage, results, failures, commit):
    """A row's YAML entry: values over the seeds that ran to the end; `failed` says which did not."""
    if not results:
        entry = {}
    elif stage.parse == "lcs":
        entry = {"levels": level_entries(results)}
    else:
        entry = {"top1": summarize([r.get("top1") for r in results])}
    for metric in REPORTED.get(stage.parse, ("top1",))[1:]:
        s = summarize([r.get(metric) for r in results])
        float_weights = metric in ("bits", "compression") and "--prune" in stage.args   # log2 of distinct floats
        if s is not None and not float_weights:
            entry[metric] = s["mean"]
    entry["seeds"] = sorted({r["seed"] for r in results})
    if results:
        entry["wall_s"] = round(sum(r["wall_s"] for r in results) / len(results), 1)
    entry.update(repo=REPOS[stage.repo], commit=commit, command=stage.command())
    if stage.init:
        entry["init"] = stage.init
    if stage.differences:
        entry["differences"] = list(stage.differences)
    if failures:
        entry["failed"] = list(failures)
    return entry


def git_commit(path):
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


SECTION_MARK = "# -- reference code runs"   # where the `reference:` section starts in a paper table


def _yaml_dumper():
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_dict(dumper, data):
        small = set(data) <= {"mean", "std", "n"} or (isinstance(data.get("top1"), dict) and "levels" not in data
                                                       and "command" not in data)
        return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=small)
    Dumper.add_representer(dict, represent_dict)
    Dumper.add_representer(list, lambda d, data: d.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))
    return Dumper


def reference_yaml(paper, entries, stages):
    """The `reference:` section of a paper table, with a comment saying how it was made."""
    import yaml
    starts = {n: s.command() for n, s in stages.items() if s.row is None}
    repo = PAPER_REPO[paper]
    patches = [why for r, _, _, _, why in PATCHES if r == repo] + PATCH_NOTES[repo]
    head = [f"{SECTION_MARK}: measured values of the reference code ({REPOS[repo]}), not of this harness, at",
            f"# the {SCALE} recipe of the rows above; derived by bench/reference_runs.py (run it again to check them).",
            "# Changed in the reference for the swap only: " + "; ".join(patches) + "."]
    if starts:
        head.append("# Starting models and first halves (started from by `init`):")
        head += [f"#   {n}: {c}" for n, c in starts.items()]
    body = yaml.dump({"reference": {SCALE: entries}}, Dumper=_yaml_dumper(), sort_keys=False, width=1000)
    return "\n".join(head) + "\n" + body


def write_into_table(path, section):
    """Replace the table's reference section (from SECTION_MARK to the end) with `section`, or append it."""
    text = Path(path).read_text()
    if SECTION_MARK in text:
        text = text[:text.index(SECTION_MARK)].rstrip("\n") + "\n"
    Path(path).write_text(text.rstrip("\n") + "\n\n" + section)


def print_table(paper, entries):
    print(f"\n{paper}: reference code at the {SCALE} recipe")
    print(f"{'row':45} {'level':>6} {'top1 mean':>9} {'std':>6} {'n':>2}  other")
    for row, e in entries.items():
        for failure in e.get("failed", []):
            print(f"{row:45} failed: {failure}")
        if "top1" not in e and "levels" not in e:
            continue
        for level, v in (e["levels"].items() if "levels" in e else [("", e)]):
            other = ", ".join(f"{k} {v[k]:.4g}" for k in ("best_top1", "sparsity", "bits", "compression") if k in v)
            print(f"{row:45} {level:>6} {v['top1']['mean']:9.2f} {v['top1']['std']:6.2f} {v['top1']['n']:2d}  {other}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deephoyer", help="a clone of github.com/yanghr/DeepHoyer")
    p.add_argument("--admm", help="a clone of github.com/hyang1990/sparsity_quantization_joint")
    p.add_argument("--lcs", help="a clone of github.com/apple/learning-compressible-subspaces")
    p.add_argument("--papers", nargs="+", default=None, help="tables to run (default: those whose clone is given)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", help="only rows matching these patterns (and what they start from)")
    p.add_argument("--work", default="reference-runs", help="folder for the runs (resumable)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--nice", type=int, default=19)
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--collect", action="store_true",
                   help="run nothing new: the values of the runs already finished in --work")
    p.add_argument("--write-tables", action="store_true",
                   help="also put each section at the end of config/papers/<paper>.yaml (replacing an older one)")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    repos = {"deephoyer": a.deephoyer, "admm": a.admm, "lcs": a.lcs}
    papers = a.papers or [pp for pp, r in PAPER_REPO.items() if repos[r]]
    for paper in papers:
        if not repos[PAPER_REPO[paper]]:
            p.error(f"--{PAPER_REPO[paper]} (a clone of {REPOS[PAPER_REPO[paper]]}) is needed for the {paper} table")
    for paper in papers:
        stages = plan(paper, a.rows)
        if a.dry_run:
            for st in stages.values():
                print(f"{paper}: {st.name} (from {st.init}): {st.command()}")
                for d in st.differences:
                    print(f"    differs: {d}")
            continue
        repo = repos[PAPER_REPO[paper]]
        results, failures = run_paper(paper, stages, a.seeds, repos, a.work, a.threads, a.nice, a.collect)
        commit = git_commit(repo)
        entries = {row: row_entry(stages[row], results.get(row, []), failures.get(row, []), commit)
                   for row in stages if row in results or row in failures}
        print_table(paper, entries)
        section = reference_yaml(paper, entries, stages)
        out = Path(a.work) / f"{paper}.reference.yaml"
        out.write_text(section)
        print(f"written: {out}")
        if a.write_tables:
            write_into_table(ROOT / "config" / "papers" / f"{paper}.yaml", section)
            print(f"written: the reference section of config/papers/{paper}.yaml")


# -- the child: one reference script, patched for the swap -----------------------------------------

def _fashion_mnist_class(train_size=None, test_size=None, mean=None, std=None):
    """torchvision MNIST's stand-in: Fashion-MNIST, restricted to the harness's subsets; with `mean`
    and `std`, the script's Normalize uses them instead of its MNIST constants."""
    import torchvision
    from data.registry import _subset
    from data.sources import load_fashion_mnist

    class FashionMNISTSubset(torchvision.datasets.MNIST):
        def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
            torchvision.datasets.VisionDataset.__init__(self, root, transform=transform,
                                                        target_transform=target_transform)
            self.train = train
            splits = load_fashion_mnist(ROOT / "data" / "downloads")
            x, y = _subset(splits[0] if train else splits[1], train_size if train else test_size)
            self.data, self.targets = x, y
            for t in getattr(transform, "transforms", []):
                if mean is not None and isinstance(t, torchvision.transforms.Normalize):
                    t.mean, t.std = mean, std
    return FashionMNISTSubset


def _stub_if_missing(name, why="the script imports it without using it", **attrs):
    """Make `import name` work where the installed packages lack it: an empty module with `attrs`."""
    import importlib
    import types
    try:
        importlib.import_module(name)
    except ImportError:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        sys.modules[name].__dict__.update(attrs)
        print(f"[reference_runs] {name} is not installed ({why}): stubbed", flush=True)


def write_cifar_batches(folder, train_size=None, test_size=None):
    """The harness's Fashion-MNIST subsets as CIFAR-10 python batches: 28x28 zero-padded to 32x32, the
    grey value in all three channels; five training batches as CIFAR-10 has."""
    import pickle
    import numpy as np
    from data.registry import _subset
    from data.sources import as_cifar_format, load_fashion_mnist
    train, test = load_fashion_mnist(ROOT / "data" / "downloads")
    folder = Path(folder) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def rows(x):        # the pixels of the harness's `fashion-mnist-cifar` rows
        return as_cifar_format(x).numpy().reshape(len(x), -1)
    x, y = _subset(train, train_size)
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5)):
        batch = {"batch_label": f"training batch {i + 1} of 5", "data": rows(x[part]), "labels": y[part].tolist()}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    x, y = _subset(test, test_size)
    (folder / "test_batch").write_bytes(pickle.dumps({"batch_label": "testing batch 1 of 1", "data": rows(x),
                                                      "labels": y.tolist()}))
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def _patch_environment(kind, data, repo):
    """What the swap needs besides the script's own text (module doc)."""
    import torch
    import torchvision
    if kind == "lcs":
        import torchvision.datasets.cifar as cifar
        if not Path("configs").exists():        # read relative to the working folder (the repo root, there)
            Path("configs").symlink_to(Path(repo) / "configs")
        write_cifar_batches("data", data.get("train_size"), data.get("test_size"))   # utils reads ./data
        cifar.CIFAR10._check_integrity = lambda self: True       # fixed MD5 sums of the original batches
        cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)

        class InProcessLoader(torch.utils.data.DataLoader):   # no worker processes: the 1-core budget
            def __init__(self, *args, **kw):
                super().__init__(*args, **{**kw, "num_workers": 0, "pin_memory": False})
        torch.utils.data.DataLoader = InProcessLoader
    if kind in ("deephoyer", "admm"):
        torchvision.datasets.MNIST = _fashion_mnist_class(data.get("train_size"), data.get("test_size"),
                                                          data.get("mean"), data.get("std"))
    if kind == "deephoyer":
        _stub_if_missing("scipy.io")
    if kind == "admm":
        _stub_if_missing("proxyless_nas", proxyless_mobile=None, proxyless_gpu=None)
        # torchvision >= 0.12 moved it to torch.hub; model/imagenet_alexnet.py imports the old place
        _stub_if_missing("torchvision.models.utils", "moved to torch.hub in torchvision 0.12",
                         load_state_dict_from_url=torch.hub.load_state_dict_from_url)
        if not torch.cuda.is_available():       # misc.validate evaluates with cuda=True, always
            import misc
            original = misc.eval_loss_acc1_acc5
            misc.eval_loss_acc1_acc5 = lambda *args, cuda=True, **kw: original(*args, cuda=False, **kw)


def patched_source(kind, script_path):
    text = Path(script_path).read_text()
    for repo, name, old, new, _ in PATCHES:
        if repo == kind and name in ("*", Path(script_path).name) and old in text:
            text = text.replace(old, new)
    return text


def _post_deephoyer(g):
    """The script's own test() on its final model (prun_tune_V never tests after its last epoch),
    and the sparsity of conv/linear weights (the harness's definition; the script counts biases)."""
    import torch
    top1 = g["test"]()
    nz = tot = 0
    for m in g["model"].modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            nz += int((m.weight != 0).sum())
            tot += m.weight.numel()
    return {"top1": round(float(top1), 4), "sparsity": round(1 - nz / tot, 6)}


def _post_lcs(g):
    """The final evaluation the script saved (test_metrics.npy: acc, sparsity or num_bits, and the
    level: alpha for lines, topk/num_bits/width_factor otherwise), one entry per level."""
    import numpy as np
    path = sorted(Path(".").rglob("test_metrics.npy"))[-1]
    m = np.load(path, allow_pickle=True).item()
    if "width_factor" in m:
        levels = m["width_factor"]
    elif "num_bits" in m:
        levels = m["num_bits"]
    else:
        levels = m.get("topk", m.get("alpha"))
    out = []
    for i, level in enumerate(levels):
        entry = {"level": round(float(level), 4), "top1": round(100 * float(m["acc"][i]), 4)}
        if "sparsity" in m:
            entry["sparsity"] = round(float(m["sparsity"][i]), 6)
        out.append(entry)
    return {"levels": out}


POSTS = {"deephoyer": _post_deephoyer, "lcs": _post_lcs}


def _forget_harness():
    """Drop this project's packages from the path and the module cache before the script runs: the
    reference's own `models` (LCS: a namespace package, which a regular package anywhere on the path
    would shadow) and `data` must be the ones it imports."""
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        ours = path.startswith(str(ROOT) + os.sep) and not path.startswith(str(ROOT / "bench"))
        if ours and not path.startswith(sys.prefix + os.sep):      # a venv inside the project is not ours
            del sys.modules[name]


def child(argv):
    p = argparse.ArgumentParser(prog="reference_runs.py _exec")
    p.add_argument("--repo-kind", required=True, choices=sorted(REPOS))
    p.add_argument("--repo", required=True)
    p.add_argument("--script", required=True)
    p.add_argument("--data", default="{}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--post", choices=sorted(POSTS))
    p.add_argument("--seed", type=int, help="seed python, numpy and torch first (for a script that seeds nothing)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    if a.seed is not None:
        import random
        import numpy as np
        random.seed(a.seed)
        np.random.seed(a.seed)
        torch.manual_seed(a.seed)
    script = Path(a.repo) / a.script
    sys.path[:0] = [str(script.parent)]
    sys.path.append(str(ROOT))          # the reference's own modules win a name clash (LCS has `models`)
    _patch_environment(a.repo_kind, json.loads(a.data), a.repo)
    _forget_harness()
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    sys.argv = [str(script), *args]
    g = {"__name__": "__main__", "__file__": str(script), "__builtins__": __builtins__}
    exec(compile(patched_source(a.repo_kind, script), str(script), "exec"), g)
    if a.post:
        print(RESULT_TAG + json.dumps(POSTS[a.post](g)), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_exec"]:
        child(sys.argv[2:])
    else:
        main()
