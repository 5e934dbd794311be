"""Figures from results/tables.csv, one scale at a time, as PNG and PDF:

  <out>/<paper>/<name>.png|pdf   each paper's own figures, from the function registered for it
  <out>/overview.png|pdf         every paper's top-1 against sparsity, one panel per paper

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

from harness.checks import COMPARABLE_SCALE, ResultsError
from harness.paper_figures import default_figures
from harness import plots
from harness.plots import curves, legend_handles, marker_map, palette, panels, save, shared_style, tradeoff


def overview(rows, titles=None):
    """Every paper's accuracy-sparsity trade-off side by side: a panel per paper, a colour per model."""
    papers = sorted(rows.paper.unique())
    fig, axes = panels(len(papers), 5.4, 6.2)
    for ax, paper in zip(axes, papers):
        part = rows[rows.paper == paper]
        part = part[(part.method == "dense") | (part.sparsity > 0)]   # quantized-only levels have no sparsity
        part, style = part.assign(curve=curves(part)), "curve"
        colors = palette(sorted(part.model.unique()))
        markers = marker_map(part, style)
        tradeoff(ax, part, "sparsity", "model", colors, style, markers)
        title = f"{paper}: {titles[paper]}" if titles and titles.get(paper) else paper
        ax.set_title(textwrap.fill(title, 50), fontsize="medium")
        ax.legend(handles=legend_handles(part, "model", colors, style, markers), fontsize="small", ncols=2,
                  loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: the curves fill the panel
    scale = rows.scale.iloc[0]
    fig.suptitle(f"Top-1 accuracy against sparsity, {scale} scale"
                 + ("" if scale == COMPARABLE_SCALE else "\n(published numbers: the papers' setups)"),
                 fontsize="medium")
    return fig


def paper_figures(rows):
    paper = rows.paper.iloc[0]
    return (plots.FIGURES.get(paper) if paper in plots.FIGURES.names() else default_figures)(rows)


def figures(table, scale, out_dir, only=None, titles=None):
    """Draw `scale`'s figures into out_dir: the overview and every paper's, or only one of them
    (`only`: a paper, or "overview"). Returns the PNGs written."""
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
        for paper in papers:
            (out_dir / paper).mkdir(parents=True, exist_ok=True)  # stays empty for a paper with no rows here
            part = rows[rows.paper == paper]
            for name, fig in (paper_figures(part) if not part.empty else {}).items():
                save(fig, out_dir / paper / name)
                written.append(out_dir / paper / f"{name}.png")
    return written
