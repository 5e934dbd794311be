"""Gather metrics.json files into results/tables.csv: one row per run and evaluation point, with
the published value (and its source) beside the measured one, never in its place. Published values
and notes come from the paper tables as they are now (a run's metrics.json holds only the settings
of its result), so correcting one re-runs no training."""
import json
from pathlib import Path

import pandas as pd

from core import io
from core.errors import HarnessError

COLUMNS = ["scale", "paper", "row", "method", "pipeline", "model", "dataset", "level", "level_kind", "seed", "top1", "top5",
           "best_top1", "sparsity", "bits", "compression", "size_bits", "size_budget_bits", "structured_sparsity", "nonzero_params", "prunable_params", "params", "flops", "dense_flops",
           "latency_ms", "dense_latency_ms", "measured_speedup", "model_bytes", "dense_model_bytes", "peak_memory_bytes",
           "deploy_format", "wall_s",
           "throughput", "device", "precision", "published_top1", "published_sparsity", "published_flops",
           "published_source", "budget", "method_args", "init", "notes", "commit",
           # the rest of a row's `published:` entry, for harness/checks.py
           "published_top5", "published_nonzero_params", "published_compression", "published_tolerance"]


# harness/deploy.py headline: the exported format's batch-1, one-thread CPU latency beside dense's
DEPLOY_COLUMNS = ["latency_ms", "dense_latency_ms", "measured_speedup", "model_bytes", "dense_model_bytes",
                  "peak_memory_bytes", "deploy_format"]


def rows_from_metrics(metrics, annotations=None):
    """The table rows of one run; `annotations`: its row's (published, notes) in the current paper
    table (else what metrics.json recorded: files written before published values moved out)."""
    spec, train, env = metrics["spec"], metrics.get("train", {}), metrics.get("env", {})
    pub, notes = annotations or (spec.get("published") or {}, spec.get("notes"))
    for p in metrics["points"]:
        yield {"scale": spec["scale"], "paper": spec["paper"], "row": spec["row"], "method": spec["method"],
               "model": spec["model"], "dataset": spec["dataset"], "level": p.get("level"),
               "level_kind": p.get("level_kind"), "bits": p.get("bits"), "compression": p.get("compression"),
               "size_bits": p.get("size_bits"),
               "size_budget_bits": metrics.get("method_report", {}).get("bit_budget_total"),
               "seed": spec["seed"], "top1": p["top1"], "top5": p.get("top5"),
               "best_top1": train.get("best_top1") if p.get("level") is None else None,
               "sparsity": p["sparsity"], "structured_sparsity": p.get("structured_sparsity"),
               "nonzero_params": p["nonzero_params"], "prunable_params": p["prunable_params"],
               "params": p["params"], "flops": p["flops"], "dense_flops": p["dense_flops"],
               **{k: p.get(k) for k in DEPLOY_COLUMNS},
               "wall_s": train.get("wall_s"), "throughput": train.get("throughput"),
               "device": env.get("device"),
               "precision": train.get("precision", "fp32"), "published_top1": pub.get("top1"),
               "published_sparsity": pub.get("sparsity"), "published_flops": pub.get("flops"),
               "published_source": pub.get("source"),
               "budget": json.dumps(spec.get("budget") or {}, sort_keys=True),
               "method_args": json.dumps(spec.get("method_args") or {}, sort_keys=True), "init": spec.get("init"),
               "notes": notes, "commit": env.get("commit"),
               **{f"published_{k}": pub.get(k) for k in ("top5", "nonzero_params", "compression", "tolerance")}}


def add_pipeline(table):
    """The chain of methods behind each row, following `init` (e.g. dense>hoyer_square>finetune),
    so that a finetuned row still says which method made its sparsity."""
    method = {(r.scale, r.paper, r.row): r.method for r in table.itertuples()}
    init = {(r.scale, r.paper, r.row): r.init for r in table.itertuples()}

    def chain(key):
        steps = []
        while key in method and len(steps) <= len(method):
            steps.append(method[key])
            parent = init[key]
            if not isinstance(parent, str):
                break
            if parent in ("pretrain", "torchvision"):
                steps.append("dense" if parent == "pretrain" else "torchvision")
                break
            key = (key[0], key[1], parent)
        return ">".join(reversed(steps))

    table["pipeline"] = [chain((r.scale, r.paper, r.row)) for r in table.itertuples()]
    return table


class CurrentAnnotations:
    """(published, notes) of each (scale, paper, row), read once per paper table and scale."""

    def __init__(self, papers_dir):
        self.papers_dir, self.read = papers_dir, {}

    def __call__(self, spec):
        key = (spec["paper"], spec["scale"])
        if key not in self.read:
            self.read[key] = self._load(*key)
        return self.read[key].get(spec["row"])

    def _load(self, paper, scale):
        from harness.tables import PaperTable   # imports the model and method registries: only here
        path = Path(self.papers_dir) / f"{paper}.yaml"
        try:
            return PaperTable(path).annotations(scale) if path.exists() else {}
        except HarnessError:   # a table broken at another scale: the DAG phase reports the selected one
            return {}


def aggregate(paths, out_csv, papers_dir=None):
    current = CurrentAnnotations(papers_dir) if papers_dir else (lambda spec: None)
    rows = []
    for path in paths:
        metrics = json.loads(Path(path).read_text())
        rows += list(rows_from_metrics(metrics, current(metrics["spec"])))
    table = add_pipeline(pd.DataFrame(rows, columns=COLUMNS)).sort_values(["scale", "paper", "row", "seed", "level"],
                                                           na_position="first", kind="stable")
    io.save_csv(table, out_csv)
    return table


def summary(table, scale=None):
    """A short terminal table: accuracy, sparsity and MFLOPs of each row, seeds averaged."""
    t = table if scale is None else table[table.scale == scale]
    if t.empty:
        return "(no results)"
    g = t.groupby(["scale", "paper", "row", "level"], dropna=False, sort=False).agg(
        top1=("top1", "mean"), sparsity=("sparsity", "mean"), mflops=("flops", "mean"),
        published_at_paper_scale=("published_top1", "first"), seeds=("seed", "nunique"))
    g["mflops"] /= 1e6
    return g.reset_index().drop(columns="level" if t.level.isna().all() else []).to_string(
        index=False, float_format=lambda v: f"{v:.4g}")
