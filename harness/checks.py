"""Regression checks on results/tables.csv, written to results/checks.csv: one line per check.

Four kinds of check (the `check` column), on each row's mean over its seeds:

- `published`: a measured metric against the number the row's `published:` entry gives. Published
  numbers describe the paper's setup, so only rows at the paper scale are comparable; at the other
  scales the line is `not comparable` and its reason quotes the scale's note.
- `budget`: a pruning row reaches its `budget.sparsity` (every scale); a budget that sets more
  (`layerwise`, ...) is not comparable. A row whose method has a bit budget (ADMM's nnz_budget x
  bit_budget, `size_budget_bits`) stores at most that many bits (`size_bits`).
- `reference`: a row's mean top-1 against the mean of the paper's reference code run at the same
  recipe (the table's top-level `reference: {<scale>: {<row>: ...}}`, written by
  bench/reference_runs.py; per `level` for rows evaluated at several). Comparable only at the scale
  the reference was run at, and only when the row ran at least as many seeds as the reference did:
  the tolerance is REFERENCE_SPREADS x the pooled standard deviation of the two sets of seeds, at
  least REFERENCE_FLOOR points, so it needs the harness's own spread over as many repeats.
- `dense`: a model's dense row is not worse than the best pruned row (any non-dense row with
  sparsity > 0 or compression > 1) of the same model, data, paper and scale by more than a noise margin (every scale):
  a dense baseline that loses to pruning by a wide margin was trained too little or wrongly.

Tolerances. A row's `published.tolerance`, else its table's `default_tolerance`, is one number T
read in each metric's own terms: T accuracy points for top1/top5, T sparsity points (T/100 as a
fraction) for sparsity, and T percent of the published value for flops, nonzero_params and
compression (32-bit dense size / stored size, core.metrics.model_size), whose scale depends on the model. The budget
check allows 1e-3 (BUDGET_TOLERANCE) for every method."""

import numpy as np
import pandas as pd

from core import io
from core.errors import HarnessError
from core.results import (COMPARABLE_SCALE, PUBLISHED, TOLERANCE_UNIT, is_pruned, paper_settings,
                             read_results, row_settings)

PASS, FAIL, NOT_COMPARABLE = "pass", "fail", "not comparable"
BUDGET_TOLERANCE = 1e-3
DENSE_MARGIN = 1.0  # accuracy points a dense row may trail the best pruned row of its model by
NOISE_SCALE = "smoke"   # checks the plumbing only: no `dense` verdict
REFERENCE_SPREADS = 2.0   # tolerance of a reference check: this many pooled standard deviations ...
REFERENCE_FLOOR = 0.5     # ... and at least this many accuracy points
KEYS = ["scale", "paper", "row", "level"]
COLUMNS = [*KEYS, "seeds", "check", "metric", "expected", "measured", "difference", "tolerance",
           "status", "reason"]


class ChecksFailed(HarnessError):
    """At least one check failed; checks.csv says which."""


def allowed(metric, tolerance, expected):
    """Tolerance T (see the module doc) in `metric`'s own unit; works on Series too."""
    unit = TOLERANCE_UNIT[metric]
    if unit == "points":
        return tolerance
    return tolerance / 100 * (1 if unit == "fraction" else abs(expected))


def seed_means(table):
    """One line per (scale, paper, row, level): metrics averaged over seeds, settings as given."""
    if "compression" not in table:   # tables.csv from before the bits-aware column
        table = table.assign(compression=table.prunable_params / table.nonzero_params)
    first = ["method", "model", "dataset", "budget", "notes", *PUBLISHED, "published_tolerance"]
    mean = ["top1", "top5", "sparsity", "nonzero_params", "flops", "compression",
            *[c for c in ("size_bits", "size_budget_bits") if c in table]]
    return table.groupby(KEYS, dropna=False, sort=False).agg(
        seeds=("seed", lambda s: ",".join(map(str, sorted(s.unique())))), n_seeds=("seed", "nunique"),
        top1_std=("top1", "std"),
        **{c: (c, "first") for c in first}, **{c: (c, "mean") for c in mean}).reset_index()


def _line(r, check, metric, expected, measured, tolerance, status, reason=""):
    return {"scale": r.scale, "paper": r.paper, "row": r.row, "level": r.level, "seeds": r.seeds,
            "check": check, "metric": metric, "expected": expected, "measured": measured,
            "difference": measured - expected, "tolerance": tolerance, "status": status, "reason": reason}


def published_lines(rows, default_tolerance):
    for r in rows.itertuples():
        for metric in TOLERANCE_UNIT:
            expected, measured = getattr(r, f"published_{metric}"), getattr(r, metric)
            if pd.isna(expected):
                continue
            t = r.published_tolerance if pd.notna(r.published_tolerance) else default_tolerance.get(r.paper)
            tolerance = np.nan if t is None else allowed(metric, t, expected)
            if r.scale != COMPARABLE_SCALE:
                status, reason = NOT_COMPARABLE, f"{r.scale} scale, not the paper's setup: {r.notes}"
            elif pd.isna(measured):
                status, reason = NOT_COMPARABLE, f"{metric} was not measured"
            elif t is None:
                status, reason = FAIL, (f"no tolerance: set published.tolerance in the row or "
                                        f"default_tolerance in config/papers/{r.paper}.yaml")
            elif abs(measured - expected) <= tolerance:
                status, reason = PASS, ""
            else:
                status, reason = FAIL, "differs from the published value by more than the tolerance"
            yield _line(r, "published", metric, expected, measured, tolerance, status, reason)


def pooled_std(s1, n1, s2, n2):
    """The standard deviation of two samples pooled (each with its own mean): a shared noise level."""
    dof = n1 + n2 - 2
    return float(np.sqrt(((n1 - 1) * s1 ** 2 + (n2 - 1) * s2 ** 2) / dof)) if dof > 0 else 0.0


def reference_values(entry, level):
    """The reference's {mean, std, n} of top-1 for a row's entry at `level` (NaN: a row without levels)."""
    if pd.isna(level):
        return entry.get("top1")
    for key, values in (entry.get("levels") or {}).items():
        if abs(float(key) - float(level)) < 1e-6:
            return values.get("top1")
    return None


def reference_lines(rows, references):
    """`reference` checks of every row that has a reference entry at some scale."""
    for r in rows.itertuples():
        by_scale = references.get(r.paper) or {}
        if not any(r.row in (by_scale.get(s) or {}) for s in by_scale):
            continue
        entry = (by_scale.get(r.scale) or {}).get(r.row)
        ref = reference_values(entry, r.level) if entry else None
        expected = ref["mean"] if ref else np.nan
        tolerance, status, reason = np.nan, NOT_COMPARABLE, ""
        if entry is None:
            reason = f"the reference code was run at {', '.join(sorted(by_scale))} scale, not {r.scale}"
        elif ref is None:
            reason = "the reference entry has no top1" + ("" if pd.isna(r.level) else f" at level {r.level:g}") + \
                (f"; it failed: {entry['failed'][0]}" if entry.get("failed") else "")
        elif pd.isna(r.top1):
            reason = "top1 was not measured"
        elif r.n_seeds < ref["n"]:
            reason = (f"fewer seeds than the reference ({r.n_seeds} < {ref['n']}): its tolerance needs the "
                      f"spread of as many: `snakemake --cores all results/parity.csv` runs it at {ref['n']} seeds")
        else:
            spread = pooled_std(0.0 if pd.isna(r.top1_std) else r.top1_std, r.n_seeds, ref["std"], ref["n"])
            tolerance = max(REFERENCE_FLOOR, REFERENCE_SPREADS * spread)
            ok = abs(r.top1 - expected) <= tolerance
            status = PASS if ok else FAIL
            reason = (f"tolerance max({REFERENCE_FLOOR:g}, {REFERENCE_SPREADS:g} x pooled std {spread:.3g}); "
                      f"harness std {r.top1_std:.3g} over {r.n_seeds} seeds, reference std {ref['std']:.3g} "
                      f"over {ref['n']}")
            if entry.get("failed"):
                reason += f"; the reference failed on {len(entry['failed'])} more seed(s): {entry['failed'][0]}"
            if not ok:
                n_diff = len(entry.get("differences") or [])
                reason = (f"differs from the reference code's run by more than the tolerance "
                          f"({n_diff} recipe difference(s) listed in its entry); " + reason)
        yield _line(r, "reference", "top1", expected, r.top1, tolerance, status, reason)


def size_budget_lines(rows):
    """Methods with a bit budget (ADMM): the stored size must not exceed it."""
    if "size_budget_bits" not in rows:
        return
    for r in rows[rows.size_budget_bits.notna()].itertuples():
        ok = r.size_bits <= r.size_budget_bits * (1 + 1e-9)
        yield _line(r, "budget", "size_bits", r.size_budget_bits, r.size_bits, 0.0, PASS if ok else FAIL,
                    "" if ok else "the stored size exceeds the bit budget (nnz_budget x bit_budget)")


def budget_lines(rows):
    yield from size_budget_lines(rows)
    for r in rows.itertuples():
        budget = row_settings(r.budget)
        target = budget.get("sparsity")
        if not isinstance(target, (int, float)):
            continue
        others = sorted(set(budget) - {"sparsity"})  # e.g. layerwise: per-layer targets
        if others:
            yield _line(r, "budget", "sparsity", target, r.sparsity, np.nan, NOT_COMPARABLE,
                        f"budget.{others[0]} is set too: the overall sparsity has no single target")
            continue
        ok = abs(r.sparsity - target) <= BUDGET_TOLERANCE
        yield _line(r, "budget", "sparsity", target, r.sparsity, BUDGET_TOLERANCE, PASS if ok else FAIL,
                    "" if ok else "achieved sparsity misses budget.sparsity")


def dense_lines(rows, margin):
    for _, group in rows.groupby(["scale", "paper", "dataset", "model"], sort=False):
        pruned = group[is_pruned(group) & group.top1.notna()]
        if pruned.empty:
            continue
        best = pruned.loc[pruned.top1.idxmax()]
        for r in group[group.method == "dense"].itertuples():
            if r.scale == NOISE_SCALE:
                yield _line(r, "dense", "top1", best.top1, r.top1, margin, NOT_COMPARABLE,
                            f"{NOISE_SCALE} scale: one short epoch of generated data, where noise decides")
                continue
            ok = r.top1 >= best.top1 - margin
            reason = f"best pruned row: {best.row}" + ("" if ok else "; the dense row trails it by more than that")
            yield _line(r, "dense", "top1", best.top1, r.top1, margin, PASS if ok else FAIL, reason)


def run_checks(table, default_tolerance=None, margin=DENSE_MARGIN, references=None):
    """Every check of `table` (a results/tables.csv DataFrame) as a checks.csv DataFrame;
    `references`: {paper: the table's `reference:` section}."""
    rows = seed_means(table)
    lines = [*published_lines(rows, default_tolerance or {}), *reference_lines(rows, references or {}),
             *budget_lines(rows), *dense_lines(rows, margin)]
    return pd.DataFrame(lines, columns=COLUMNS).sort_values(["scale", "paper", "row"], kind="stable",
                                                           ignore_index=True)


def write_checks(checks, out_csv):
    io.save_csv(checks, out_csv)


def summary(checks, scale=None):
    """Counts per status (of `scale`, or of every scale), then every failed check."""
    t = checks if scale is None else checks[checks.scale == scale]
    counts = t.status.value_counts()
    head = (f"checks at {scale} scale: " if scale else "checks: ") + \
        (", ".join(f"{counts[s]} {s}" for s in (PASS, FAIL, NOT_COMPARABLE) if s in counts) or "none apply")
    elsewhere = ((checks.status == FAIL) & (checks.scale != scale)).sum() if scale else 0
    if elsewhere:
        head += f" ({elsewhere} failed at other scales, see checks.csv)"
    failed = t[t.status == FAIL]
    if failed.empty:
        return head
    shown = failed.drop(columns=["status", "seeds"]).to_string(index=False, na_rep="",
                                                              float_format=lambda v: f"{v:.4g}")
    return f"{head}\n{shown}"


def parity(table, out_csv, references, scale):
    """The parity target's checks: the `reference` checks alone, over the runs the reference entries
    need at as many seeds as the reference code ran. Writes out_csv and prints the summary; a failed
    check is a finding to explain (its entry lists the recipe's differences), so nothing is raised."""
    rows = seed_means(table[table.scale == scale])
    checks = pd.DataFrame(list(reference_lines(rows, references)), columns=COLUMNS)
    write_checks(checks, out_csv)
    print(summary(checks, scale).replace("checks at", "reference checks at", 1), flush=True)
    return checks


def check(table_csv, out_csv, papers_dir="config/papers", scale=None, margin=DENSE_MARGIN):
    """Write checks.csv, print the summary, then raise ChecksFailed when a check at `scale` (at any
    scale when None) failed."""
    checks = run_checks(read_results(table_csv), paper_settings("default_tolerance", papers_dir), margin,
                        paper_settings("reference", papers_dir))
    write_checks(checks, out_csv)
    print(summary(checks, scale), flush=True)
    failed = checks[checks.status == FAIL]
    if scale:
        failed = failed[failed.scale == scale]
    if not failed.empty:
        first = failed.iloc[0]
        raise ChecksFailed(f"{len(failed)} check(s) failed (listed above); first: {first.scale}/{first.paper}/"
                           f"{first.row} {first.check} {first.metric}: measured {first.measured:.4g}, "
                           f"expected {first.expected:.4g} (tolerance {first.tolerance:.4g})")
    return checks
