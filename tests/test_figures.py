"""Figures from a made-up results table: files where the rules expect them, measured and published
points told apart, and a paper's own figures through the registry."""
import matplotlib.colors
from matplotlib.collections import PathCollection
import pandas as pd
import pytest

from harness import paper_figures, plots
from core.results import ResultsError
from harness.figures import figures
from harness.plots import per_model, register_figure
from core.registry import Registry
from tests.test_checks import results_table


def table():
    gmp = results_table("paper", seeds=(0, 1, 2), models=("lenet300-100", "lenet5-caffe"))
    gmp.loc[gmp.seed == 1, "top1"] += 0.4
    other = results_table("paper", paper="other", models=("resnet20",))
    return pd.concat([gmp, other, results_table("laptop")], ignore_index=True)


@pytest.mark.slow
def test_every_paper_and_the_overview_as_png_and_pdf(tmp_path):
    written = figures(table(), "paper", tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "gmp/top1-flops.png", "gmp/top1-sparsity.png", "latency.png", "other/top1-sparsity.png", "overview.png"]
    for png in written:
        assert png.stat().st_size > 10_000 and png.with_suffix(".pdf").exists()
    assert figures(table(), "laptop", tmp_path / "laptop", only="overview") == \
        [tmp_path / "laptop/overview.png", tmp_path / "laptop/latency.png"]   # no latency column: says so


def test_measured_points_are_filled_and_published_hollow():
    fig = per_model(table().query("paper == 'gmp' and scale == 'paper'"), "sparsity")
    ax = fig.axes[0]
    hollow = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_facecolors()) == 0]
    assert len(hollow) == 1 and matplotlib.colors.to_rgb(hollow[0].get_edgecolors()[0]) != (1, 1, 1)
    measured = [line for line in ax.lines if line.get_marker() == "o"]
    assert measured and all(line.get_markerfacecolor() != "none" for line in measured)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["gmp", "measured", "published", "dense, measured", "dense, published"]


def test_a_paper_adds_its_figures_with_one_function(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "FIGURES", Registry("figure"))

    @register_figure("other")
    def other_figures(rows):
        return {"accuracy-flops": per_model(rows, "flops")}

    assert figures(table(), "paper", tmp_path, only="other") == [tmp_path / "other/accuracy-flops.png"]


def test_a_scale_without_results_is_one_line():
    with pytest.raises(ResultsError, match="no results at smoke scale"):
        figures(table(), "smoke", "unused")


def test_a_paper_with_dense_rows_only_still_draws(tmp_path):
    dense = results_table("paper", paper="baselines").query("method == 'dense'")
    assert figures(dense, "paper", tmp_path, only="baselines") == [tmp_path / "baselines/top1-sparsity.png"]


def test_one_method_ending_several_pipelines_draws_a_curve_per_pipeline():
    # DeepHoyer-like: a finetune row after each regularizer; the regularized rows are not sparse yet
    rows = [dict(row="lenet300-dense", method="dense", pipeline="dense", top1=98.0, sparsity=0.0, published_top1=98.4)]
    for reg, shift in (("l1", 0.0), ("hoyer", 1.0)):
        rows.append(dict(row=f"lenet300-{reg}", method=reg, pipeline=f"dense>{reg}", top1=97.5, sparsity=0.0))
        for value, s in ((0.5, 0.8), (0.8, 0.95)):
            rows.append(dict(row=f"lenet300-{reg}-std{value}", method="finetune", pipeline=f"dense>{reg}>finetune",
                             top1=97.0 - 5 * s + shift, sparsity=s))
    table = pd.DataFrame(rows).assign(scale="paper", paper="hoyerlike", model="lenet300-100", dataset="mnist",
                                      seed=0, flops=1e5, budget="{}", published_sparsity=None, published_flops=None)
    fig = paper_figures.default_figures(table)["top1-sparsity"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["dense>hoyer>finetune", "dense>l1>finetune", "measured", "dense, measured", "dense, published"]
    assert fig.axes[0].get_xscale() == "logit"


def test_admm_draws_compression_with_quantize_only_rows_and_published_rates():
    rows = results_table("paper", paper="admm").assign(compression=[1.0, 10.0], method_args="{}", pipeline="x")
    quant = rows.iloc[[1]].assign(row="q", sparsity=0.0, compression=10.7, method="admm", published_top1=None,
                                  method_args='{"mode": "quantize"}', published_compression=None)
    joint = rows.iloc[[1]].assign(row="j", method="admm", published_top1=None, published_compression=2000.0,
                                  compression=1975.0)
    figs = plots.FIGURES.get("admm")(pd.concat([rows.iloc[[0]], quant, joint], ignore_index=True))
    ax = figs["top1-compression"].axes[0]
    assert ax.get_xscale() == "log"
    vertical = [l for l in ax.lines if l.get_linestyle() == ":" and l.get_xdata()[0] == l.get_xdata()[1]]
    assert [l.get_xdata()[0] for l in vertical] == [2000.0]          # the published rate
    labels = [t.get_text() for t in figs["top1-compression"].legends[0].get_texts()]
    assert "quantize only" in labels and "joint" in labels and "published compression, no accuracy published" in labels


def test_overview_draws_each_multi_level_network_as_its_own_curve_and_leaves_quantization_out():
    from harness.figures import overview
    base = results_table("laptop", paper="lcs", models=("cpreresnet20",)).iloc[[1]]
    levels = []
    for row, kind, sparsities in (("s-lcs_l", "width", [0.3, 0.6, 0.9]), ("u-lcs_l", "topk", [0.5, 0.75, 0.95]),
                                  ("q-lcs_l", "bits", [0.2, 0.1, 0.05])):
        for level, sparsity in enumerate(sparsities):
            levels.append(base.assign(row=row, method="lcs_l", level=float(level + 3), level_kind=kind,
                                      sparsity=sparsity, compression=32 / (level + 3), top1=80.0 + level))
    fig = overview(pd.concat(levels, ignore_index=True))
    lines = [line for line in fig.axes[0].lines if line.get_linestyle() == "-"]
    assert sorted(len(line.get_xdata()) for line in lines) == [3, 3]   # two curves, no bit-width points
    xs = sorted(tuple(line.get_xdata()) for line in lines)
    assert xs == [pytest.approx((0.3, 0.6, 0.9)), pytest.approx((0.5, 0.75, 0.95))]   # no zigzag across settings


def test_a_paper_with_reference_values_gets_the_side_by_side_figure(tmp_path):
    from tests.test_checks import laptop_table, reference
    written = figures(laptop_table(), "laptop", tmp_path, only="gmp", references=reference())
    assert sorted(p.name for p in written) == ["reference.png", "top1-flops.png", "top1-sparsity.png"]
    assert figures(laptop_table(), "laptop", tmp_path / "none", only="gmp", references=reference(scale="paper")) \
        == [tmp_path / "none/gmp/top1-sparsity.png", tmp_path / "none/gmp/top1-flops.png"]
