"""Figures from results/tables.csv, one scale at a time, as PNG and PDF:

  <out>/<paper>/<name>.png|pdf   each paper's own figures, from the function registered for it
  <out>/overview.png|pdf         every paper's top-1 against sparsity, one panel per paper
  <out>/latency.png|pdf          every paper's top-1 against measured latency (harness/deploy.py)

A paper adds its figures with one function of its rows (every seed, one scale) returning
{name: Figure}; a paper without one gets `default_figures`:

    @register_figure("str")
    def str_figures(rows):
        return {"top1-sparsity": per_model(rows, "sparsity")}

One style throughout: a curve per method (or pipeline, see `series`) and a colour per method (per
model in the overview), filled markers and solid lines for measured results (mean over seeds, bars:
standard deviation), hollow markers for published ones, and each dense row as a horizontal line
(dashed: measured, dotted: published). Rows with no weight pruned are left out of the curves."""
import textwrap
from pathlib import Path

import pandas as pd
from matplotlib.lines import Line2D

from harness.checks import reference_values
from core.results import COMPARABLE_SCALE, ResultsError
from harness.paper_figures import default_figures
from harness import plots
from harness.plots import curves, legend_handles, marker_map, palette, panels, save, shared_style, tradeoff


def overview(rows, titles=None, x="sparsity"):
    """Every paper's accuracy against `x` side by side (sparsity, or the measured `latency_ms`): a
    panel per paper, a colour per model."""
    rows = rows if x == "sparsity" else rows[rows[x].notna()]
    papers = sorted(rows.paper.unique())
    fig, axes = panels(len(papers), 5.4, 6.2)
    for ax, paper in zip(axes, papers):
        part = rows[rows.paper == paper]
        if x == "sparsity":  # bit-width levels (their zeros are incidental) and quantize-only rows stay off it
            part = part[(part.method == "dense") | ((part.sparsity > 0) & (part.level_kind != "bits"))]
        part, style = part.assign(curve=curves(part)), "curve"
        colors = palette(sorted(part.model.unique()))
        markers = marker_map(part, style)
        tradeoff(ax, part, x, "model", colors, style, markers)
        title = f"{paper}: {titles[paper]}" if titles and titles.get(paper) else paper
        ax.set_title(textwrap.fill(title, 50), fontsize="medium")
        ax.legend(handles=legend_handles(part, "model", colors, style, markers, x), fontsize="small", ncols=2,
                  loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: the curves fill the panel
    scale = rows.scale.iloc[0]
    what = "sparsity" if x == "sparsity" else "measured latency (the exported model; dense: dashed line's accuracy)"
    fig.suptitle(f"Top-1 accuracy against {what}, {scale} scale"
                 + ("" if scale == COMPARABLE_SCALE else "\n(published numbers: the papers' setups)"),
                 fontsize="medium")
    return fig


def latency_overview(rows, titles=None):
    """`overview` against the measured latency; a table from before deployment was measured says so."""
    if "latency_ms" in rows and rows.latency_ms.notna().any():
        return overview(rows, titles, "latency_ms")
    fig, (ax,) = panels(1, 6.0, 2.0)
    ax.axis("off")
    ax.text(0.5, 0.5, "no measured latency in this table (its runs predate harness/deploy.py)", ha="center")
    return fig


def parity_items(rows, entries):
    """(row, level, harness mean, sd, seeds, the reference's {mean, std, n}) for every row, and
    level, of `rows` that has a reference entry."""
    items = []
    for (row, level), group in rows.groupby(["row", "level"], dropna=False, sort=True):
        ref = reference_values(entries[row], level) if row in entries else None
        if ref is not None:
            items.append((row, level, group.top1.mean(), group.top1.std() if len(group) > 1 else 0.0,
                          group.seed.nunique(), ref))
    return items


def parity_figure(rows, entries):
    """This harness against the reference code run at the same recipe (a table's `reference:`
    entries at this scale), mean top-1 accuracies with bars of one standard deviation over seeds:
    rows without levels side by side in one panel (the numbers of seeds in the label), and each row
    with levels (LCS) as two curves over its levels in a panel of its own."""
    items = parity_items(rows, entries)
    if not items:
        return None
    single = [i for i in items if pd.isna(i[1])]
    curved = sorted({i[0] for i in items if not pd.isna(i[1])})
    fig, axes = panels(bool(single) + len(curved), 6.4, 1.4 + 0.3 * len(single) if single else 3.6)
    harness_color, reference_color = palette(["harness", "reference"]).values()
    style = {"harness": dict(fmt="o-", color=harness_color, capsize=2),
             "reference": dict(fmt="D--", color=reference_color, mfc="none", capsize=2)}
    if single:
        ax = axes[0]
        for y, (_, _, mean, std, _, ref) in enumerate(single):
            ax.errorbar(mean, y - 0.15, xerr=std, **{**style["harness"], "fmt": "o"})
            ax.errorbar(ref["mean"], y + 0.15, xerr=ref.get("std", 0.0), **{**style["reference"], "fmt": "D"})
        ax.set_yticks(range(len(single)), [f"{row}  (n = {n} / {ref['n']})" for row, _, _, _, n, ref in single],
                      fontsize="small")
        ax.set_ylim(len(single) - 0.5, -0.5)
        ax.set_xlabel("top-1 accuracy (%), mean ± sd over seeds")
    for ax, row in zip(axes[bool(single):], curved):
        mine = sorted((i for i in items if i[0] == row), key=lambda i: i[1])
        levels = [i[1] for i in mine]
        ax.errorbar(levels, [i[2] for i in mine], yerr=[i[3] for i in mine], **style["harness"])
        ax.errorbar(levels, [i[5]["mean"] for i in mine], yerr=[i[5].get("std", 0.0) for i in mine],
                    **style["reference"])
        kinds = rows[rows.row == row].level_kind.dropna() if "level_kind" in rows else pd.Series([], dtype=str)
        ax.set_xlabel(kinds.iloc[0] if len(kinds) else "level")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{row}  (n = {mine[0][4]} / {mine[0][5]['n']})", fontsize="small")
    fig.legend(handles=[Line2D([], [], color=harness_color, marker="o", ls="", label="this harness"),
                        Line2D([], [], color=reference_color, marker="D", mfc="none", ls="",
                               label="the paper's reference code, same recipe and images")],
               loc="outside lower center", ncols=2, frameon=False)
    fig.suptitle(f"{rows.paper.iloc[0]}, {rows.scale.iloc[0]} scale: this harness and the reference code "
                 f"side by side (n = seeds here / there)", fontsize="medium")
    return fig


def reference_entries(references, paper, scale):
    return ((references or {}).get(paper) or {}).get(scale) or {}


def parity_figures(table, references, scale, out_dir):
    """The parity target's figures: <out_dir>/<paper>.png|pdf for each paper with reference entries."""
    written = []
    with shared_style():
        for paper in sorted(references):
            rows = table[(table.paper == paper) & (table.scale == scale)]
            entries = reference_entries(references, paper, scale)
            fig = parity_figure(rows, entries) if entries and not rows.empty else None
            if fig is not None:
                save(fig, Path(out_dir) / paper)
                written.append(Path(out_dir) / f"{paper}.png")
    return written


def paper_figures(rows):
    paper = rows.paper.iloc[0]
    return (plots.FIGURES.get(paper) if paper in plots.FIGURES.names() else default_figures)(rows)


def figures(table, scale, out_dir, only=None, titles=None, references=None):
    """Draw `scale`'s figures into out_dir: the overview and every paper's, or only one of them
    (`only`: a paper, or "overview"). A paper with the reference code's values at this scale
    (`references`: {paper: its table's `reference:` section}) also gets `reference`, this harness and
    the reference side by side. Returns the PNGs written."""
    rows = table[table.scale == scale]
    if rows.empty:
        raise ResultsError(f"no results at {scale} scale to draw; run the workflow with --config scale={scale}")
    out_dir, written = Path(out_dir), []
    if only is None:
        papers = sorted(rows.paper.unique())
    else:
        papers = [] if only == "overview" else [only]
    with shared_style():
        if only in (None, "overview"):
            save(overview(rows, titles), out_dir / "overview")
            written.append(out_dir / "overview.png")
            save(latency_overview(rows, titles), out_dir / "latency")
            written.append(out_dir / "latency.png")
        for paper in papers:
            (out_dir / paper).mkdir(parents=True, exist_ok=True)  # stays empty for a paper with no rows here
            part = rows[rows.paper == paper]
            figs = paper_figures(part) if not part.empty else {}
            entries = reference_entries(references, paper, scale)
            if entries and (fig := parity_figure(part, entries)) is not None:
                figs["reference"] = fig
            for name, fig in figs.items():
                save(fig, out_dir / paper / name)
                written.append(out_dir / paper / f"{name}.png")
    return written
