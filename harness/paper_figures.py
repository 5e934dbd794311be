"""The figures particular to one paper, registered with harness.plots' registry. Shared drawing
(style, panels, measured vs published points) lives in harness/plots.py."""
import json
import textwrap
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from harness.plots import palette, panels, per_model, register_figure
from core.results import row_settings


def budget_source(budget):
    """How a row's layer-wise budget was set: uniform, or taken from STR (transfer or file)."""
    b = row_settings(budget)
    return " (STR budget)" if b.get("transfer") or b.get("csv") else ""


def default_figures(rows):
    """The figures of a paper that registers none."""
    return {"top1-sparsity": per_model(rows, "sparsity")}


@register_figure("gmp")
def gmp_figures(rows):
    """Zhu & Gupta: accuracy against sparsity and against FLOPs, per model."""
    return {"top1-sparsity": per_model(rows, "sparsity"), "top1-flops": per_model(rows, "flops")}


@register_figure("str")
def str_figures(rows):
    """STR against DNW and GMP: top-1 against sparsity and against FLOPs; rows trained with STR's
    budget (budget transfer) are their own curve."""
    rows = rows.assign(series=rows.method + rows.budget.map(budget_source))
    return {"top1-sparsity": per_model(rows, "sparsity", hue="series"),
            "top1-flops": per_model(rows, "flops", hue="series")}


def pareto(rows, keys):
    """The rows no other row of the same `keys` beats in both sparsity and top-1."""
    def front(group):
        best, keep = -1.0, []
        for idx, r in group.sort_values(["sparsity", "top1"], ascending=False).iterrows():
            if r.top1 > best:
                keep.append(idx)
                best = r.top1
        return group.loc[keep]
    return pd.concat([front(g) for _, g in rows.groupby(keys)]) if not rows.empty else rows


def finished_rows(rows):
    """DeepHoyer's results: finetuned rows (named by the regularizer before them) and dense rows."""
    rows = rows.assign(regularizer=rows.pipeline.str.split(">").map(
        lambda chain: chain[-2] if len(chain) > 1 and chain[-1] == "finetune" else chain[-1]))
    return rows[(rows.method == "dense") | rows.pipeline.str.endswith("finetune")]


def best_per_regularizer(final, slack=1.0):
    """Per model and regularizer: the sparsest finetuned row within `slack` points of its best top-1."""
    tuned = final[final.method != "dense"]
    best = []
    for _, group in tuned.groupby(["model", "regularizer"]):
        good = group[group.top1 >= group.top1.max() - slack]
        best.append(good.loc[good.sparsity.idxmax()])
    return pd.DataFrame(best)


def layer_rows(best, runs_root):
    """Per-layer sparsity of each chosen row, from its metrics.json."""
    out = []
    for r in best.itertuples():
        path = Path(runs_root) / r.scale / r.paper / r.row / f"seed{r.seed}" / "metrics.json"
        if not path.exists():
            continue
        for layer in json.loads(path.read_text())["points"][0]["layers"]:
            out.append({"model": r.model, "regularizer": r.regularizer, "layer": layer["layer"],
                        "nonzero %": 100 * (1 - layer["sparsity"])})
    return pd.DataFrame(out)


@register_figure("hoyer")
def hoyer_figures(rows, runs_root="results/runs"):
    """DeepHoyer: the Pareto front of top-1 against sparsity per regularizer (finetuned rows), and
    the per-layer nonzero % of each regularizer's best row."""
    final = finished_rows(rows)
    fronts = pd.concat([final[final.method == "dense"], pareto(final[final.method != "dense"], ["model", "regularizer"])])
    figs = {"top1-sparsity-pareto": per_model(fronts, "sparsity", hue="regularizer")}
    layers = layer_rows(best_per_regularizer(final), runs_root)
    if not layers.empty:
        models = sorted(layers.model.unique())
        fig, axes = panels(len(models), 6.0, 4.0)
        order = sorted(layers.regularizer.unique())
        for ax, model in zip(axes, models):
            sns.barplot(layers[layers.model == model], x="layer", y="nonzero %", hue="regularizer",
                        hue_order=order, ax=ax, legend=ax is axes[0])
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.set_title(f"{model}: nonzero weights per layer", fontsize="medium")
            ax.set_xlabel("layer (module name)")
        handles, labels = axes[0].get_legend_handles_labels()
        axes[0].get_legend().remove()
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False,
                   title="best row of each regularizer (sparsest within 1 point of its best top-1)")
        figs["layer-nonzero"] = fig
    return figs


def admm_variant(row):
    """ADMM's curves: joint, prune-only and quantize-only (method_args.mode), and finetuned chains."""
    args = row_settings(row.method_args)
    if row.method == "finetune":
        return "joint + finetune" if "admm" in str(row.pipeline) else "finetune"
    if row.method == "admm":
        return {"prune": "prune only", "quantize": "quantize only"}.get(args.get("mode"), "joint")
    return row.method


@register_figure("admm")
def admm_figures(rows):
    """Top-1 against the compression rate (log axis): joint sparsity-quantization against pruning
    only and quantization only; the README's rates (no accuracy published) as dotted lines."""
    rows = rows.assign(variant=[admm_variant(r) for r in rows.itertuples()])
    return {"top1-compression": per_model(rows, "compression", hue="variant"),
            "top1-sparsity": per_model(rows, "sparsity", hue="variant")}


@register_figure("leaderboard")
def leaderboard_figures(rows, settings_path="config/papers/leaderboard.yaml", board_csv=None):
    """Pareto views of every method on one set of axes per model: top-1 against sparsity and FLOPs
    (the pruning methods), against stored size in bits (all of them); then each method's accuracy
    at the targets, where missed targets are listed, not drawn. The targets come from the
    leaderboard the workflow wrote (results/leaderboard.csv, the figure rule's input), or are
    computed from `rows` where there is none (a figure drawn by hand before the leaderboard)."""
    from harness.leaderboard import BOARD_CSV, final_points, kind_of, leaderboard, settings
    points = final_points(rows)
    kinds = {s: kind_of(p) for s, p in points.groupby("series")}
    pruning = points[points.series.map(lambda s: kinds[s] in (None, "sparsity"))]
    figs = {"top1-sparsity": per_model(pruning, "sparsity", hue="series"),
            "top1-flops": per_model(pruning, "flops", hue="series"),
            "top1-size": per_model(points, "size_bits", hue="series")}
    board_csv = Path(board_csv or BOARD_CSV)
    if board_csv.exists():
        board = pd.read_csv(board_csv)
        board = board[board.scale.isin(rows.scale.unique())]
    else:
        board = leaderboard(rows, *settings(settings_path))
    figs["top1-at-targets"] = at_targets(board[board.target_kind != "dense"])
    return figs


TARGET_LABEL = {"compression": "{:g}x", "bits": "{:g} bits", "sparsity": "sparsity {:g}"}


def target_label(kind, target):
    return TARGET_LABEL.get(kind, kind + " {:g}").format(target)


def at_targets(board):
    """One panel per model: each method's top-1 (mean, bars: std over seeds) at each target,
    interpolated values hollow; missed targets are named under the panel, never drawn."""
    models = sorted(board.model.unique())
    order = sorted(board.series.unique())
    colors = palette(order)
    targets = board.groupby(["target_kind", "target"]).ngroups
    fig, axes = panels(len(models), max(6.5, 1.1 * targets), 4.5)
    for ax, model in zip(axes, models):
        part = board[board.model == model].sort_values(["target_kind", "target"])
        labels = list(dict.fromkeys(target_label(r.target_kind, r.target) for r in part.itertuples()))
        width = 0.8 / max(1, len(order))
        for r in part[part.how != "missed"].itertuples():
            x = labels.index(target_label(r.target_kind, r.target)) - 0.4 + width * (order.index(r.series) + 0.5)
            ax.errorbar(x, r.top1_mean, yerr=r.top1_std, color=colors[r.series], marker="o", capsize=2,
                        mfc="none" if r.how == "interpolated" else colors[r.series])
        ax.set_xticks(range(len(labels)), labels)
        missed = part[part.how == "missed"]
        note = "; ".join(f"{r.series} @ {target_label(r.target_kind, r.target)}" for r in missed.itertuples())
        ax.set_xlabel(textwrap.fill("missed: " + note, 70) if note else "target")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{model} on {part.dataset.iloc[0]}", fontsize="medium")
    handles = [Line2D([], [], color=colors[s], marker="o", label=s) for s in order]
    handles.append(Line2D([], [], color="0.35", marker="o", mfc="none", ls="", label="interpolated (estimate)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), frameon=False)
    fig.suptitle(f"leaderboard, {board.scale.iloc[0]} scale: every method at the same targets "
                 f"(bars: std over seeds)", fontsize="medium")
    return fig


LCS_SETTINGS = {"width": "structured: width factor", "topk": "unstructured: TopK (fraction of weights kept)",
                "bits": "quantized: bit width"}
LCS_NAMES = {"lcs_l": "LCS+L", "lcs_p": "LCS+P", "us": "US", "ns": "NS", "lec": "LEC",
             "target_topk": "TopK target", "target_bit_width": "bit width target"}


def lcs_series(row):
    """A curve's name: the method as the paper names it, plus what a row changes (norm, target, range)."""
    args = row_settings(row.method_args)
    extra = [args["norm"]] if args.get("norm") else []
    extra += [f"{k}={args[k]:g}" for k in ("topk", "bit_width", "topk_lower_bound") if k in args]
    return LCS_NAMES.get(row.method, row.method) + (f" ({', '.join(extra)})" if extra else "")


@register_figure("lcs")
def lcs_figures(rows):
    """LCS's comparison: top-1 against the compression level each subspace (or baseline) was
    evaluated at, a panel per setting (and model), a curve per method (mean over seeds, bars: std)."""
    rows = rows[rows.level.notna()].assign(series=[lcs_series(r) for r in rows[rows.level.notna()].itertuples()])
    panes = sorted({(m, k) for m, k in zip(rows.model, rows.level_kind)}, key=lambda p: (p[0], list(LCS_SETTINGS).index(p[1])))
    fig, axes = panels(len(panes), 5.0, 4.2)
    for ax, (model, kind) in zip(axes, panes):
        part = rows[(rows.model == model) & (rows.level_kind == kind)]
        sns.lineplot(part, x="level", y="top1", hue="series", style="series", markers=True, dashes=False,
                     errorbar="sd", err_style="bars", ax=ax)
        if kind == "topk":
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        if kind == "bits":
            ax.set_xticks(sorted(part.level.unique()))
        ax.set_xlabel(LCS_SETTINGS[kind])
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{LCS_SETTINGS[kind].split(':')[0]}: {model} on {part.dataset.iloc[0]}", fontsize="medium")
        ax.legend(fontsize="small", title=None)
    fig.suptitle(f"lcs, {rows.scale.iloc[0]} scale: accuracy at every compression level of one trained "
                 f"network per method (no retraining, no norm recalibration)", fontsize="medium")
    return {"top1-level": fig}
