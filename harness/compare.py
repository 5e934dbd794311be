"""What changed between two result sets: `python -m harness compare RESULTS_A RESULTS_B`.

Runs are matched on (scale, paper, row, level, seed). A metric has changed when B differs from A by
more than the tolerance T, read as in harness/checks.py: T accuracy points for top1, T sparsity
points for sparsity, T percent of A's value for flops. A value present on one side only is a change
too. Runs found on one side only are listed, but are not changes: a result set may hold fewer scales."""
from dataclasses import dataclass

import pandas as pd

from harness.checks import allowed
from core.results import read_results

KEYS = ["scale", "paper", "row", "level", "seed"]
METRICS = ["top1", "sparsity", "flops"]
DEFAULT_TOLERANCE = 0.1


@dataclass
class Comparison:
    matched: int
    changes: pd.DataFrame   # KEYS, metric, a, b, difference, tolerance
    only_a: pd.DataFrame    # KEYS
    only_b: pd.DataFrame


def compare(a, b, tolerance=DEFAULT_TOLERANCE):
    """Compare two results/tables.csv DataFrames."""
    merged = a[KEYS + METRICS].merge(b[KEYS + METRICS], on=KEYS, how="outer", suffixes=("_a", "_b"),
                                     indicator=True)
    both = merged[merged._merge == "both"]
    changes = []
    for m in METRICS:
        d = both[KEYS].assign(metric=m, a=both[f"{m}_a"], b=both[f"{m}_b"])
        d = d.assign(difference=d.b - d.a, tolerance=allowed(m, tolerance, d.a))
        changes.append(d[(d.difference.abs() > d.tolerance) | (d.a.isna() != d.b.isna())])
    return Comparison(matched=len(both), changes=pd.concat(changes, ignore_index=True).sort_values(KEYS),
                      only_a=merged.loc[merged._merge == "left_only", KEYS],
                      only_b=merged.loc[merged._merge == "right_only", KEYS])


def _runs(keys):
    return "\n".join(f"  {r.scale}/{r.paper}/{r.row}/seed{r.seed}" + ("" if pd.isna(r.level) else f" level {r.level}")
                     for r in keys.itertuples())


def report(c, name_a, name_b, tolerance):
    lines = [f"{c.matched} runs in both {name_a} and {name_b}; tolerance {tolerance:g} "
             f"(top1 points, sparsity points, % of flops)"]
    if c.changes.empty:
        lines.append("no metric changed beyond the tolerance")
    else:
        lines.append(f"{len(c.changes)} changed beyond the tolerance (a = {name_a}, b = {name_b}):")
        lines.append(c.changes.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.6g}"))
    for name, keys in ((name_a, c.only_a), (name_b, c.only_b)):
        if not keys.empty:
            lines.append(f"{len(keys)} runs only in {name}:\n{_runs(keys)}")
    return "\n".join(lines)


def compare_results(path_a, path_b, tolerance=DEFAULT_TOLERANCE):
    """Print what changed; True when nothing changed beyond the tolerance."""
    c = compare(read_results(path_a), read_results(path_b), tolerance)
    print(report(c, path_a, path_b, tolerance))
    return c.changes.empty
