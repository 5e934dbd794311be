"""The cross-method leaderboard: every method of config/papers/leaderboard.yaml compared at the same
targets, per model, from results/tables.csv.

A target is a sparsity (for methods that prune), a number of bits per weight (for methods that
quantize: stored bits / all conv and linear weights), or a compression rate, which every method
competes at (32-bit dense size / stored size, as ADMM's paper counts it: pruning and quantizing on
one axis; Blalock et al.'s operating points {2, 4, 8, 16, 32}x). Compression is compared on a log
scale: its tolerance is relative (0.02: within 2 %), and interpolation is linear in log2(rate).
A method's points are the final rows of one `series` (its chain of methods and variant, e.g.
`hoyer_square>finetune`, `admm-quantize`, or one LCS subspace evaluated at every level); rows that
another row starts from are stages, not results, and stay out. For each seed, at each target:

  measured      a point lies within the table's tolerance of the target: that point;
  interpolated  points lie on both sides: linear interpolation in the target's axis between the
                nearest one below and the nearest one above (an estimate, named as such);
  missed        neither: the method did not reach the target. Flagged, with the range it spans,
                and given no accuracy, so that no figure or ranking puts it at the target.

Seeds then give the mean and standard deviation; a target missed by any seed is missed."""
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from core import io
from core.results import read_results, row_settings

PAPER = "leaderboard"
BOARD_CSV = "results/leaderboard.csv"   # what rules/leaderboard.smk writes
AXIS = {"sparsity": "sparsity", "bits": "bits_per_weight", "compression": "compression"}
DEFAULT_TOLERANCE = {"sparsity": 0.005, "bits": 0.1, "compression": 0.02}
LOG_KINDS = {"compression"}   # compared and interpolated in log2
VALUES = ["top1", "flops", "speedup", "measured_speedup", "compression", "size_bits"]
COLUMNS = ["scale", "model", "dataset", "target_kind", "target", "rank", "series", "how", "seeds",
           "top1_mean", "top1_std", "achieved_mean", "flops_mean", "speedup_mean", "measured_speedup_mean", "compression_mean",
           "size_bits_mean",
           "rows", "reason"]


def settings(path="config/papers/leaderboard.yaml"):
    """(targets, tolerance) of the leaderboard table."""
    doc = yaml.safe_load(Path(path).read_text())["leaderboard"]
    return doc["targets"], {**DEFAULT_TOLERANCE, **(doc.get("tolerance") or {})}


def series_name(row):
    """The curve a row belongs to: its method chain after the dense start, with ADMM's mode and the
    kind of level a subspace is evaluated at."""
    chain = str(row.pipeline).split(">")
    if len(chain) > 1 and chain[0] == "dense":
        chain = chain[1:]
    args = row_settings(row.method_args)
    name = ">".join(f"admm-{args.get('mode', 'joint')}" if step == "admm" else step for step in chain)
    return f"{name} ({row.level_kind})" if isinstance(row.level_kind, str) else name


def final_points(table):
    """The leaderboard's result rows: its paper only, chain stages dropped, with series and the
    bits-per-weight axis."""
    rows = table[table.paper == PAPER]
    stages = {(r.scale, r.init, r.seed) for r in rows.itertuples() if isinstance(r.init, str)}
    final = rows[[(r.scale, r.row, r.seed) not in stages for r in rows.itertuples()]]
    measured = final.measured_speedup if "measured_speedup" in final else float("nan")
    return final.assign(series=[series_name(r) for r in final.itertuples()],
                        bits_per_weight=final.size_bits / final.prunable_params,
                        speedup=final.dense_flops / final.flops,       # theoretical: dense / sparse MACs
                        measured_speedup=measured)   # timed: dense / exported format, batch 1, one thread


def kind_of(points):
    """Which targets a series competes at: bits when it stores fewer than 32 bits, else sparsity;
    dense rows at none."""
    if (points.method == "dense").all():
        return None
    return "bits" if (points.bits < 32 - 1e-9).any() else "sparsity"


def at_target(points, kind, target, tolerance):
    """One seed's (how, values, rows, reason) at `target` of `kind` from its points (a DataFrame)."""
    axis, log = AXIS[kind], kind in LOG_KINDS
    raw = points[axis].to_numpy(float)
    x, t, tol = (np.log2(raw), np.log2(target), np.log2(1 + tolerance)) if log else (raw, target, tolerance)
    near = np.abs(x - t) <= tol
    if near.any():
        best = int(np.argmin(np.where(near, np.abs(x - t), np.inf)))
        return "measured", {v: points.iloc[best][v] for v in VALUES} | {"achieved": raw[best]}, \
            [points.iloc[best].row], ""
    below, above = np.flatnonzero(x < t), np.flatnonzero(x > t)
    if not len(below) or not len(above):
        return "missed", None, [], f"{axis} of its points spans {raw.min():.4g}..{raw.max():.4g}"
    lo, hi = below[np.argmax(x[below])], above[np.argmin(x[above])]
    w = (t - x[lo]) / (x[hi] - x[lo])
    lo_row, hi_row = points.iloc[lo], points.iloc[hi]
    values = {v: (1 - w) * lo_row[v] + w * hi_row[v] for v in VALUES}
    return "interpolated", values | {"achieved": target}, [lo_row.row, hi_row.row], ""


def entries(points, targets, tolerance):
    """Leaderboard lines of one (scale, model): every series at every target of its kind."""
    for series, part in points.groupby("series", sort=True):
        kind = kind_of(part)
        first = part.iloc[0]
        where = {"scale": first.scale, "model": first.model, "dataset": first.dataset, "series": series}
        if kind is None:
            top1 = part.groupby("seed").top1.mean()
            yield {**where, "target_kind": "dense", "target": np.nan, "how": "measured", "seeds": len(top1),
                   "top1_mean": top1.mean(), "top1_std": top1.std(ddof=1) if len(top1) > 1 else 0.0,
                   "achieved_mean": 0.0, "flops_mean": part.flops.mean(), "speedup_mean": 1.0,
                   "measured_speedup_mean": part.measured_speedup.mean(),
                   "compression_mean": 1.0,
                   "size_bits_mean": part.size_bits.mean(), "rows": ";".join(sorted(part.row.unique())),
                   "reason": ""}
            continue
        for axis_kind in (kind, "compression"):   # its own axis, then the one every method shares
            for target in targets.get(axis_kind, []):
                per_seed = {s: at_target(p, axis_kind, target, tolerance[axis_kind]) for s, p in part.groupby("seed")}
                yield {**where, "target_kind": axis_kind, "target": target, **combine(per_seed)}


def combine(per_seed):
    """Mean and spread over seeds; a target any seed missed is missed."""
    hows = [how for how, *_ in per_seed.values()]
    rows = sorted({r for _, _, rs, _ in per_seed.values() for r in rs})
    if "missed" in hows:
        reasons = [f"seed {s}: {reason}" for s, (how, _, _, reason) in per_seed.items() if how == "missed"]
        return {"how": "missed", "seeds": len(per_seed), "rows": ";".join(rows), "reason": "; ".join(reasons)}
    values = pd.DataFrame([v for _, v, _, _ in per_seed.values()])
    how = "measured" if set(hows) == {"measured"} else "interpolated"
    return {"how": how, "seeds": len(per_seed), "top1_mean": values.top1.mean(),
            "top1_std": values.top1.std(ddof=1) if len(values) > 1 else 0.0,
            "achieved_mean": values.achieved.mean(), "flops_mean": values.flops.mean(),
            "speedup_mean": values.speedup.mean(), "measured_speedup_mean": values.measured_speedup.mean(),
            "compression_mean": values.compression.mean(), "size_bits_mean": values.size_bits.mean(),
            "rows": ";".join(rows), "reason": ""}


def leaderboard(table, targets, tolerance):
    """The leaderboard of every scale in `table`, ranked by mean top-1 within each model and target
    (missed targets unranked)."""
    points = final_points(table)
    lines = [line for _, part in points.groupby(["scale", "model"], sort=True)
             for line in entries(part, targets, tolerance)]
    board = pd.DataFrame(lines, columns=COLUMNS)
    ranked = board.how != "missed"
    board.loc[ranked, "rank"] = board[ranked].groupby(["scale", "model", "target_kind", "target"], dropna=False) \
        .top1_mean.rank(ascending=False, method="min")
    return board.sort_values(["scale", "model", "target_kind", "target", "rank"], na_position="last",
                             kind="stable", ignore_index=True)


def write_leaderboard(table_csv, out_csv, papers_dir="config/papers"):
    targets, tolerance = settings(Path(papers_dir) / f"{PAPER}.yaml")
    board = leaderboard(read_results(table_csv), targets, tolerance)
    io.save_csv(board, out_csv)
    return board


def summary(board, scale=None):
    """Per model and target: the methods in rank order, then what missed."""
    t = board if scale is None else board[board.scale == scale]
    if t.empty:
        return "(no leaderboard rows)"
    out = []
    for (scale_, model, kind, target), g in t.groupby(["scale", "model", "target_kind", "target"], dropna=False,
                                                     sort=False):
        head = f"{scale_} {model} " + ("dense" if kind == "dense" else f"{kind} {target:g}")
        ok = [f"{r.series} {r.top1_mean:.2f}±{r.top1_std:.2f}" + ("*" if r.how == "interpolated" else "")
              for r in g.itertuples() if r.how != "missed"]
        missed = [r.series for r in g.itertuples() if r.how == "missed"]
        out.append(f"{head}: " + ", ".join(ok) + (f"  | missed: {', '.join(missed)}" if missed else ""))
    return "\n".join(out) + "\n(* interpolated between two points bracketing the target)"
