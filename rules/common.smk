# Table expansion: every enabled paper's rows at the selected scale become run specs; and what is
# checked before any job starts (the config, a stale lock of a killed Snakemake, then, once the jobs
# to run are known: the device, the models they start from, their data).
import os
import re
import sys

sys.path.insert(0, workflow.basedir)

from snakemake.utils import validate

from core.errors import HarnessError
from harness.tables import SCALES, TableError, cached_expand
from core import io, locks, scheduling


def _die(message):
    # One line, no traceback: the message names the file, the row and the fix.
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def _config_error(err):
    """Snakemake's validation error spans many lines; keep the path and the reason."""
    lines = str(err).splitlines()
    reason = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("ValidationError:")), lines[0])
    where = next((l[len("On instance"):].strip(" :") for l in lines if l.startswith("On instance")), "")
    return f"config/config.yaml (or --config) {where}: {reason}".replace(" :", ":")


def _coerce_seeds(cfg):
    """`--config seeds=[0,1,2]` gives the strings '0', '1', '2' (Snakemake reads list items as
    text): whole numbers among them become integers; anything else is left for the schema to name."""
    seeds = cfg.get("seeds")
    if isinstance(seeds, list):
        cfg["seeds"] = [int(s) if isinstance(s, str) and re.fullmatch(r"\s*[+-]?\d+\s*", s) else s for s in seeds]


_coerce_seeds(config)
try:
    validate(config, "../config/schema.yaml")
except Exception as err:
    _die(_config_error(err))

if workflow.is_main_process:   # not in a cluster job's own Snakemake
    # a Snakemake killed before it could unlock leaves its lock: remove it if it is provably stale,
    # so that running the same command again works (core/locks.py)
    _note = locks.clear_stale_snakemake_lock(os.path.abspath(".snakemake"))
    if _note:
        print(_note, file=sys.stderr)

SCALE = config["scale"]
try:   # the runs of the enabled tables; unchanged tables and code are not expanded again (no torch import)
    EXPANSION = cached_expand(config)
except TableError as err:
    _die(str(err))
RUNS = EXPANSION.runs

# every rule's wildcards: a run folder is results/runs/<scale>/<paper>/<row>/seed<seed>
wildcard_constraints:
    scale="|".join(SCALES),
    paper=r"[\w-]+",
    row=r"[^/]+",
    seed=r"\d+",

PYTHON = sys.executable
DATA_DIR, DEVICE = config["data_dir"], config["device"]   # where and on what: no run's result depends on them
TABLES_CSV = "results/tables.csv"
RUN_DIR = "results/runs/{scale}/{paper}/{row}/seed{seed}"
# the parity target's runs: rows with the reference code's values, at as many seeds as it ran
PARITY_RUNS = EXPANSION.parity
SPECS = {(s.paper, s.row, str(s.seed)): s for s in [*PARITY_RUNS, *RUNS]}
PRETRAIN = {(p.paper, p.row, str(p.seed)): p for p in EXPANSION.pretrain.values()}


def _init_key(spec):
    """The (paper, row, seed) of the run whose model a run starts from; None: none, or torchvision's
    published weights (loaded by the job)."""
    if spec.init in (None, "torchvision"):
        return None
    row = EXPANSION.pretrain[(spec.paper, spec.row, str(spec.seed))].row if spec.init == "pretrain" else spec.init
    return spec.paper, row, str(spec.seed)


def _transfer_key(spec):
    """The run whose layer-wise budget a run takes (STR's budget transfer), or None."""
    row = spec.budget.get("transfer")
    return (spec.paper, row, str(spec.seed)) if row else None


# the train rule's priority: long chains first (core/scheduling.py: chain_lengths)
CHAIN_LENGTH = scheduling.chain_lengths({key: [k for k in (_init_key(s), _transfer_key(s)) if k]
                                         for key, s in SPECS.items()})


def run_dir(spec):
    return RUN_DIR.format(scale=spec.scale, paper=spec.paper, row=spec.row, seed=spec.seed)


def spec_of(wc):
    return _spec_at((wc.paper, wc.row, wc.seed))


def _spec_at(key):
    return SPECS.get(key) or PRETRAIN[key]


def init_model(wc):
    """The model a run starts from: none, torchvision's published weights, the paper's shared dense
    model, or another row's result."""
    key = _init_key(spec_of(wc))
    return run_dir(_spec_at(key)) + "/model.pt" if key else []


def transfer_budget(wc):
    """STR's budget transfer: the layer-wise budget another row achieved."""
    key = _transfer_key(spec_of(wc))
    return run_dir(_spec_at(key)) + "/budget.csv" if key else []


def metrics_files(runs):
    return [run_dir(s) + "/metrics.json" for s in runs]


def other_scale_metrics():
    """metrics.json already computed at the other scales, so tables.csv keeps every scale's rows."""
    found = []
    for scale in SCALES:
        if scale == SCALE:
            continue
        try:
            found += [f for f in metrics_files(cached_expand(config, scale).runs) if os.path.exists(f)]
        except TableError:
            pass
    return found


def _folder_data_missing(spec):
    """Why a run's data set cannot be found, or None. Only folder data sets (ImageNet) are looked
    for here, as their loader just locates the folders; the job itself reads, or downloads, the
    data sets held in memory (MNIST, CIFAR-10)."""
    import data   # here, not at the top: a parse imports no torch
    args = dict(spec.dataset_args)
    if data.dataset_info(spec.dataset, **args).in_memory:
        return None
    args.pop("normalize", None)
    try:
        data.registry.DATASETS.get(spec.dataset).load(DATA_DIR, **args)
    except data.registry.DataMissing as err:
        return str(err)
    return None


def _device_problem():
    from harness.building import select_device
    try:
        select_device(DEVICE)
    except HarnessError as err:
        return str(err)
    return None


def _unreadable_start(train_jobs, remade):
    """An existing model.pt that jobs start from, unreadable and not re-made by this run."""
    starts = {}
    for job in train_jobs:
        for f in job.input:
            if str(f).endswith("/model.pt") and str(f) not in remade and os.path.exists(f):
                starts.setdefault(str(f), set()).add(job.wildcards.row)
    for path, rows in sorted(starts.items()):
        if not io.torch_file_intact(path):
            return (f"{path} is unreadable (cut short, or not a model file), and {len(rows)} run(s) to be trained "
                    f"start from it ({', '.join(sorted(rows))}); retrain it and them: add --forcerun {path}")
    return None


def _data_problem(train_jobs):
    specs = {spec_of(job.wildcards).dataset: spec_of(job.wildcards) for job in train_jobs}
    return next(filter(None, map(_folder_data_missing, specs.values())), None)


def preflight(train_jobs, remade):
    """The first reason, as one line, why one of the training jobs about to run would fail for a
    reason known before it starts, or None: a model it starts from that is unreadable (and not
    re-made by this run: `remade`, the outputs of every job to run); where jobs run on this
    machine, the device and the data (a cluster job finds its GPU, and maybe its data, on its node)."""
    if not train_jobs:
        return None
    local = workflow.local_exec
    return ((local and _device_problem()) or _unreadable_start(train_jobs, remade)
            or (local and _data_problem(train_jobs)) or None)


_SNAKEMAKE_OWNER = None


def before_jobs_start():
    """Snakemake has built the DAG and holds its lock; no job has started and no output has been
    deleted yet (never called in a dry run): mark this Snakemake as the lock's live holder, and
    stop with one line where a job would fail for a reason known now."""
    global _SNAKEMAKE_OWNER
    _SNAKEMAKE_OWNER = locks.hold_snakemake_owner(os.path.abspath(".snakemake"))
    to_run = list(workflow.dag.needrun_jobs())
    problem = preflight([j for j in to_run if j.rule.name == "train"], {str(f) for j in to_run for f in j.output})
    if problem:
        _die(problem)


onstart:
    before_jobs_start()
