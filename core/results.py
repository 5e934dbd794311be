"""Reading results/tables.csv, in one place: the table itself, the JSON settings it stores per row
(budget, method_args), the paper tables' top-level settings joined to it, and which rows are
compressed. Checks, figures, the leaderboard and compare all read results through this module."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from core.errors import HarnessError

COMPARABLE_SCALE = "paper"     # published numbers describe the papers' setups: this scale's
# the metrics a row may publish, and the unit its tolerance is read in (harness/checks.py)
TOLERANCE_UNIT = {"top1": "points", "top5": "points", "sparsity": "fraction",
                  "nonzero_params": "relative", "flops": "relative", "compression": "relative"}
PUBLISHED = [f"published_{m}" for m in TOLERANCE_UNIT]
REQUIRED = ["scale", "paper", "row", "method", "model", "dataset", "level", "seed", "top1", "sparsity",
            "nonzero_params", "prunable_params", "flops", "budget", "notes"]


class ResultsError(HarnessError, ValueError):
    """A results table is missing or is not a results/tables.csv."""


def read_results(path):
    """results/tables.csv (or the tables.csv in a results folder) as a DataFrame."""
    path = Path(path)
    if path.is_dir():
        path = path / "tables.csv"
    if not path.is_file():
        raise ResultsError(f"{path}: no such results table; run `snakemake --cores all results/tables.csv` first")
    try:
        table = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: not a results table ({str(err).splitlines()[0]}); "
                           f"run `snakemake --cores all results/tables.csv` to write it again") from None
    missing = [c for c in REQUIRED if c not in table]
    if missing:
        raise ResultsError(f"{path}: not a results table (no column {', '.join(missing)})")
    # tables written before a published field was aggregated simply have nothing published for it
    return table.assign(**{c: np.nan for c in [*PUBLISHED, "published_tolerance"] if c not in table})


def row_settings(value):
    """A row's budget or method_args as a dict: tables.csv stores them as JSON text (empty: {})."""
    if isinstance(value, dict):
        return value
    return json.loads(value) if isinstance(value, str) and value else {}


def paper_settings(key, papers_dir="config/papers"):
    """{paper: the top-level `key` of its table} for every paper table that sets it."""
    out = {}
    for path in Path(papers_dir).glob("*.yaml"):
        doc = yaml.safe_load(path.read_text()) or {}
        if doc.get(key) is not None:
            out[path.stem] = doc[key]
    return out


def is_pruned(rows):
    """Rows with weights pruned or quantized: not DeepHoyer's regularized models before pruning, say."""
    compressed = rows.sparsity > 0
    if "compression" in rows:      # quantization only (ADMM --quant, LCS bit widths): fewer bits, no zeros
        compressed |= rows.compression > 1.0 + 1e-9
    return (rows.method != "dense") & compressed
