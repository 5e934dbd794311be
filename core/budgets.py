"""Layer-wise sparsity budgets in STR's CSV format (RAIVNLab/STR budgets/STR_Budgets_ResNet50.csv):

    Metric,Params,FLOPs,Sparsity (%)[,more sparsity columns]
    Overall,<params>,<flops>,<overall sparsity %>...
    Layer 1 - conv1,<params>,<flops>,<layer sparsity %>...
    ...

Every run writes its achieved budget as budget.csv in this format; a GMP or DNW row can train with
another row's budget (`budget: {transfer: <row>}`, STR's budget transfer) or a column of a
reference file (`budget: {csv: <path>, column: "90.23"}`). Layers are matched by name, or, for
files written for other code (the reference's `layer1.0.conv1` is our `stages.0.0.conv1`), by
position when the layer count and every layer's parameter count agree."""
import csv
import io
from pathlib import Path

from core.errors import HarnessError
from core.io import save_text


class BudgetError(HarnessError, ValueError):
    """A budget file is unreadable or does not fit the model."""


def write_budget_csv(layers, path, overall_flops=None):
    """`layers`: metrics.layer_sparsity rows (with 'flops' when known)."""
    total = sum(r["params"] for r in layers)
    nnz = sum(r["nonzero"] for r in layers)
    rows = [["Metric", "Params", "FLOPs", "Sparsity (%)"],
            ["Overall", total, _int(overall_flops), _pct(1 - nnz / total)]]
    rows += [[f"Layer {i} - {r['layer']}", r["params"], _int(r.get("flops")), _pct(r["sparsity"])]
             for i, r in enumerate(layers, 1)]
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    save_text(text.getvalue(), path)


def _int(x):
    return "" if x is None else int(round(x))


def _pct(fraction):
    return f"{100 * fraction:.4f}".rstrip("0").rstrip(".")


def read_budget_csv(path, column=None):
    """[(layer name, params, sparsity fraction)] from a budget file. `column` picks one of several
    sparsity columns by its overall sparsity as written in the file (e.g. "90.23"); default: the first."""
    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except OSError as err:
        raise BudgetError(f"budget file {path} cannot be read ({err.strerror})") from None
    overall = next((r for r in rows if r and r[0] == "Overall"), None)
    if overall is None:
        raise BudgetError(f"{path} is not a budget CSV: no 'Overall' row (expected STR's format)")
    choices = [c for c in overall[3:] if c]
    idx = 3
    if column is not None:
        if str(column) not in choices:
            raise BudgetError(f"{path} has no sparsity column {column!r}; it has {', '.join(choices)}")
        idx = 3 + choices.index(str(column))
    out = []
    for r in rows:
        if r and r[0].startswith("Layer ") and " - " in r[0]:
            out.append((r[0].split(" - ", 1)[1], int(r[1]), float(r[idx]) / 100))
    return out


def match_layers(entries, layers, source="budget"):
    """{our layer name: sparsity} for `layers` = [(name, params)] of the model being trained."""
    by_name = {name: s for name, _, s in entries}
    if all(name in by_name for name, _ in layers):
        return {name: by_name[name] for name, _ in layers}
    if len(entries) == len(layers) and all(p == q for (_, p, _), (_, q) in zip(entries, layers)):
        return {name: s for (name, _), (_, _, s) in zip(layers, entries)}
    raise BudgetError(f"{source} lists {len(entries)} layers that match neither the names nor the sizes of "
                      f"the model's {len(layers)} prunable layers; was it written for another model?")
