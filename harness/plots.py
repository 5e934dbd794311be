"""The drawing every figure shares: one style, a colour per method (or model), measured results
filled with standard-deviation bars, published ones hollow, dense rows as horizontal lines. The
figures themselves are in harness/paper_figures.py (one function per paper) and harness/figures.py
(the overview and the command that draws them all)."""
import contextlib

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import (EngFormatter, FixedLocator, FuncFormatter, LogLocator,  # noqa: E402
                               NullFormatter)

from core.results import COMPARABLE_SCALE, is_pruned, row_settings  # noqa: E402
from core.registry import Registry  # noqa: E402

FIGURES = Registry("figure")
AXIS_LABEL = {"top1": "top-1 accuracy (%)", "sparsity": "sparsity",
              "flops": "FLOPs per input (multiply-accumulates, log scale)",
              "compression": "compression rate (32-bit dense size / stored size, log scale)",
              "size_bits": "stored size of the conv/linear weights (bits, log scale)",
              "latency_ms": "latency of the exported model, batch 1, one CPU thread (ms, log scale)"}
SPARSITY_TICKS = [0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999]
MAX_COLUMNS = 3
GREY = "0.35"
DENSE_COLOR = "0.15"  # a dense line whose hue level has no colour (e.g. method "dense")


def register_figure(paper):
    """Decorator for `fn(rows) -> {name: Figure}`, the figures of `paper`."""
    return FIGURES.register(paper)


@contextlib.contextmanager
def shared_style():
    """The one style every figure is drawn and saved in."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        yield


def palette(levels):
    """A distinct colour per level: the colour-blind palette has 10, more get tab20's."""
    return dict(zip(levels, sns.color_palette("colorblind" if len(levels) <= 10 else "tab20", len(levels))))


def series(rows):
    """The column whose levels are separate curves: the method, or the pipeline (the chain of
    methods behind a row, e.g. dense>hoyer>finetune) where one method ends several of them."""
    pruned = rows[is_pruned(rows)]
    if "pipeline" in rows and not pruned.empty and pruned.groupby("method").pipeline.nunique().max() > 1:
        return "pipeline"
    return "method"


def curves(rows):
    """A curve label per row: a network evaluated at several levels (LCS's widths, TopK fractions,
    bit widths) is one curve of its own, so that levels of different settings never join into one
    line; rows of one level each join their method's (or pipeline's) sweep."""
    sweep = rows[series(rows)].astype(str)
    if "level" not in rows:
        return sweep
    return sweep.where(rows.level.isna(), rows.row)


def marker_map(rows, key):
    levels = sorted(rows[key][is_pruned(rows)].dropna().unique())
    return dict(zip(levels, ["o", "s", "^", "D", "v", "P", "X", "*"] * 4))


def panels(n, width, height):
    """A figure with n panels of about width x height inches, at most MAX_COLUMNS to a row."""
    cols = min(n, MAX_COLUMNS)
    nrows = -(-n // cols)
    fig = Figure(figsize=(width * cols + 0.4, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _published_points(rows, x):
    """Published (x, top1) of pruned rows. Without a published sparsity a row's budget stands in:
    it is the paper's configuration, not a measurement. FLOPs must be published to be drawn."""
    pub = rows[rows.published_top1.notna()].drop_duplicates("row").assign(top1=lambda d: d.published_top1)
    if x == "sparsity":
        budget = pub.budget.map(lambda b: row_settings(b).get("sparsity"))
        pub = pub.assign(sparsity=pub.published_sparsity.fillna(pd.to_numeric(budget, errors="coerce")))
    else:
        pub = pub.assign(**{x: pub[f"published_{x}"] if f"published_{x}" in pub else np.nan})  # e.g. size: never published
    return pub[pub[x].notna()]


def _published_x_only(rows, x):
    """Rows whose paper publishes `x` (say, a compression rate) but no accuracy to plot it against."""
    column = f"published_{x}"
    if column not in rows:
        return rows.iloc[:0]
    return rows[rows[column].notna() & rows.published_top1.isna()].drop_duplicates("row")


def _x_axis(ax, x, values):
    if x == "compression":
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    elif x in ("flops", "size_bits", "latency_ms"):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # labelled ticks even within a decade
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if len(values) and np.isclose(values.min(), values.max()):  # one point: a decade around it
            ax.set_xlim(values[0] / 3, values[0] * 3)
    elif x == "sparsity" and len(values) and 0 < values.min() and values.max() < 1:
        # logit spreads 50 / 90 / 99 % evenly: where pruning results differ
        ax.set_xscale("logit")
        ax.xaxis.set_major_locator(FixedLocator(SPARSITY_TICKS))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g}%"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    scale = ax.get_xscale()
    ax.set_xlabel(AXIS_LABEL.get(x, x) + ("" if scale == "linear" or "log scale" in AXIS_LABEL.get(x, "")
                                          else f" ({scale} scale)"))


def tradeoff(ax, rows, x, hue, colors, style, markers):
    """Top-1 against `x` on one axes: pruned rows measured (filled) and published (hollow), a
    colour per `hue` and a marker per `style` level; dense rows as horizontal lines, coloured by
    `hue` where it has a colour."""
    dense, pruned = rows[rows.method == "dense"], rows[is_pruned(rows)]
    pub = _published_points(pruned, x)
    _x_axis(ax, x, np.concatenate([pruned[x].dropna().to_numpy(float), pub[x].to_numpy(float)]))
    if not pruned.empty:
        sns.lineplot(pruned, x=x, y="top1", hue=hue, palette=colors, style=style, markers=markers,
                     dashes=False, markersize=7, errorbar="sd", err_style="bars", ax=ax, legend=False)
    if not pub.empty:
        sns.scatterplot(pub, x=x, y="top1", hue=hue, palette=colors, style=style, markers=markers, s=80,
                        linewidth=1.6, ax=ax, legend=False)
        points = ax.collections[-1]
        points.set_edgecolors(points.get_facecolors())
        points.set_facecolors("none")
    for r in _published_x_only(pruned, x).itertuples():   # a published x without an accuracy: a vertical line
        ax.axvline(getattr(r, f"published_{x}"), color=colors.get(getattr(r, hue), GREY), ls=":", lw=1.6)
    for key, group in dense.groupby(hue, dropna=False):
        color = colors.get(key, DENSE_COLOR)
        ax.axhline(group.top1.mean(), color=color, ls="--", lw=1.4)
        if group.published_top1.notna().any():
            ax.axhline(group.published_top1.dropna().iloc[0], color=color, ls=":", lw=1.6)
    ax.set_ylabel(AXIS_LABEL["top1"])


def legend_handles(rows, hue, colors, style, markers, x="sparsity"):
    """A colour per hue level, a marker per style level (when they differ), then the measured /
    published / dense encodings that occur."""
    handles = [Line2D([], [], color=c, marker=markers.get(k) if hue == style else None, label=k)
               for k, c in colors.items()]
    if hue != style and len(markers) > 1:
        handles += [Line2D([], [], color=GREY, marker=m, ls="", label=k) for k, m in markers.items()]
    dense, published = rows.method == "dense", rows.published_top1.notna()
    encodings = [(True, dict(marker="o", ls="", label="measured")),
                 ((published & is_pruned(rows)).any(), dict(marker="o", mfc="none", mew=1.6, ls="", label="published")),
                 (not _published_x_only(rows[is_pruned(rows)], x).empty,
                  dict(ls=":", lw=1.6, label=f"published {x}, no accuracy published")),
                 (dense.any(), dict(ls="--", label="dense, measured")),
                 ((published & dense).any(), dict(ls=":", lw=1.6, label="dense, published"))]
    return handles + [Line2D([], [], color=GREY, **kw) for present, kw in encodings if present]


def per_model(rows, x, hue=None):
    """One panel per model: top-1 against `x` ("sparsity" or "flops"), a curve per `hue` level of
    the pruned rows (default: `series`; a paper may add its own column and pass its name)."""
    hue = hue or series(rows)
    models = sorted(rows.model.unique())
    markers = marker_map(rows, hue)
    colors = palette(list(markers))
    fig, axes = panels(len(models), 5.0, 5.0)
    for ax, model in zip(axes, models):
        part = rows[rows.model == model]
        tradeoff(ax, part, x, hue, colors, hue, markers)
        ax.set_title(f"{model} on {part.dataset.iloc[0]}", fontsize="medium")
    handles = legend_handles(rows, hue, colors, hue, markers, x)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2 * len(axes)), frameon=False)
    scale = rows.scale.iloc[0]
    note = "" if scale == COMPARABLE_SCALE else \
        f"\n({scale} scale; published numbers: the paper's setup)"
    what = {"flops": "FLOPs", "compression": "compression rate", "size_bits": "model size"}.get(x, x)
    fig.suptitle(f"{rows.paper.iloc[0]}: top-1 accuracy against {what}{note}", fontsize="medium")
    return fig


def save(fig, stem):
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(stem.with_suffix(".png"), dpi=150)
    # the layout the PNG was drawn with, kept: constrained layout would place every text again
    fig.set_layout_engine("none")
    fig.savefig(stem.with_suffix(".pdf"), dpi=150)
