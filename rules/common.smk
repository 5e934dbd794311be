# Table expansion: every enabled paper's rows at the selected scale become run specs.
import os
import sys

sys.path.insert(0, workflow.basedir)

from snakemake.utils import validate

from harness.tables import TableError, runs_for, paper_names
from harness import scheduling


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


try:
    validate(config, "../config/schema.yaml")
except Exception as err:
    _die(_config_error(err))

SCALE = config["scale"]
try:
    TABLES, RUNS = runs_for(config)
except TableError as err:
    _die(str(err))

PYTHON = sys.executable
RUN_DIR = "results/runs/{scale}/{paper}/{row}/seed{seed}"
SPECS = {(s.paper, s.row, str(s.seed)): s for s in RUNS}
PRETRAIN = {}
for _s in RUNS:
    if _s.init == "pretrain":
        _p = TABLES[_s.paper].pretrain_spec(_s)
        PRETRAIN[(_p.paper, _p.row, str(_p.seed))] = _p


def run_dir(spec):
    return RUN_DIR.format(scale=spec.scale, paper=spec.paper, row=spec.row, seed=spec.seed)


def spec_of(wc):
    key = (wc.paper, wc.row, wc.seed)
    return SPECS.get(key) or PRETRAIN[key]


def init_model(wc):
    """The model a run starts from: none, torchvision's published weights, the paper's shared dense
    model, or another row's result."""
    spec = spec_of(wc)
    if spec.init in (None, "torchvision"):   # torchvision: its published weights, loaded by the job
        return []
    if spec.init == "pretrain":
        return run_dir(TABLES[spec.paper].pretrain_spec(spec)) + "/model.pt"
    return run_dir(SPECS[(spec.paper, spec.init, str(spec.seed))]) + "/model.pt"


def transfer_budget(wc):
    """STR's budget transfer: the layer-wise budget another row achieved."""
    spec = spec_of(wc)
    row = spec.budget.get("transfer")
    if not row:
        return []
    return run_dir(SPECS[(spec.paper, row, str(spec.seed))]) + "/budget.csv"


def metrics_files(runs):
    return [run_dir(s) + "/metrics.json" for s in runs]


def other_scale_metrics():
    """metrics.json already computed at the other scales, so tables.csv keeps every scale's rows."""
    found = []
    for scale in ("smoke", "laptop", "paper"):
        if scale == SCALE:
            continue
        try:
            found += [f for f in metrics_files(runs_for(config, scale=scale)[1]) if os.path.exists(f)]
        except TableError:
            pass
    return found
