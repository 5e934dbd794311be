"""Regression checks, comparison of result sets, and the checks / figures / report rules, on tables
and metrics.json files made up here: no training."""
import json
import re

import pandas as pd
import pytest
import yaml

from harness.__main__ import main
from harness.aggregate import COLUMNS
from harness.checks import FAIL, NOT_COMPARABLE, PASS, REFERENCE_FLOOR, pooled_std, run_checks
from harness.compare import compare
from harness.tables import runs_for
from tests.conftest import snakemake

NOTES = {"paper": "MNIST", "laptop": "Fashion-MNIST instead of MNIST; 6 epochs", "smoke": "generated data"}


def results_table(scale="paper", seeds=(0,), dense_top1=98.0, gmp_top1=97.5, sparsity=0.9, paper="gmp",
                  models=("lenet300-100",), published_sparsity=None):
    """A tables.csv of dense and GMP-at-90% rows per model, as harness/aggregate.py writes one."""
    rows = []
    for model in models:
        for seed in seeds:
            common = dict(scale=scale, paper=paper, model=model, dataset="mnist", seed=seed, top5=99.9,
                          prunable_params=1000, params=1010, dense_flops=1e6, notes=NOTES[scale],
                          published_source="test")
            rows.append(dict(common, row=f"{model}-dense", method="dense", top1=dense_top1, sparsity=0.0,
                             nonzero_params=1000, flops=1e6, budget="{}", published_top1=98.4))
            rows.append(dict(common, row=f"{model}-gmp-0.9", method="gmp", top1=gmp_top1, sparsity=sparsity,
                             nonzero_params=round(1000 * (1 - sparsity)), flops=1e6 * (1 - sparsity),
                             budget=json.dumps({"sparsity": 0.9}), published_top1=97.8,
                             published_sparsity=published_sparsity, published_flops=1e5))
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def status(checks, check, row, metric="top1"):
    line = checks[(checks.check == check) & (checks.row == row) & (checks.metric == metric)]
    assert len(line) == 1, checks.to_string()
    return line.status.iloc[0], line.iloc[0]


def test_published_check_passes_within_tolerance_and_fails_on_a_planted_deviation():
    checks = run_checks(results_table(dense_top1=98.0), {"gmp": 0.5})
    assert status(checks, "published", "lenet300-100-dense")[0] == PASS     # 0.4 below 98.4
    assert status(checks, "published", "lenet300-100-gmp-0.9", "flops")[0] == PASS

    checks = run_checks(results_table(dense_top1=97.7), {"gmp": 0.5})
    got, line = status(checks, "published", "lenet300-100-dense")
    assert got == FAIL and line.expected == 98.4 and line.difference == pytest.approx(-0.7)
    assert line.tolerance == 0.5


def test_tolerance_reads_per_metric_and_a_row_tolerance_wins():
    table = results_table(dense_top1=97.7, sparsity=0.9, published_sparsity=0.905)
    table.loc[table.row.str.endswith("dense"), "published_tolerance"] = 1.0
    checks = run_checks(table, {"gmp": 0.5})
    assert status(checks, "published", "lenet300-100-dense")[0] == PASS             # 0.7 < 1.0 points
    got, line = status(checks, "published", "lenet300-100-gmp-0.9", "sparsity")
    assert got == FAIL and line.tolerance == pytest.approx(0.005)                   # 0.5 sparsity points
    got, line = status(checks, "published", "lenet300-100-gmp-0.9", "flops")
    assert got == PASS and line.tolerance == pytest.approx(500)                     # 0.5 % of 1e5

    # measured flops 1e5 vs published 1.01e5: 1 % off, beyond 0.5 %
    table.loc[table.row.str.endswith("0.9"), "published_flops"] = 1.01e5
    assert status(run_checks(table, {"gmp": 0.5}), "published", "lenet300-100-gmp-0.9", "flops")[0] == FAIL


def test_measured_is_the_mean_over_seeds():
    table = results_table(seeds=(0, 1))
    table.loc[table.seed == 0, "top1"] += 0.3
    table.loc[table.seed == 1, "top1"] -= 0.9          # dense: 98.3 and 97.1, mean 97.7
    got, line = status(run_checks(table, {"gmp": 0.5}), "published", "lenet300-100-dense")
    assert got == FAIL and line.measured == pytest.approx(97.7) and line.seeds == "0,1"


@pytest.mark.parametrize("scale", ["laptop", "smoke"])
def test_published_numbers_are_not_comparable_below_the_paper_scale(scale):
    checks = run_checks(results_table(scale=scale, dense_top1=80.0), {"gmp": 0.5})
    published = checks[checks.check == "published"]
    assert set(published.status) == {NOT_COMPARABLE}
    assert published.reason.iloc[0] == f"{scale} scale, not the paper's setup: {NOTES[scale]}"


def test_no_tolerance_anywhere_fails_with_the_fix():
    got, line = status(run_checks(results_table(), {}), "published", "lenet300-100-dense")
    assert got == FAIL and "default_tolerance in config/papers/gmp.yaml" in line.reason


@pytest.mark.parametrize("scale", ["smoke", "paper"])
def test_budget_check_catches_a_planted_miss(scale):
    assert status(run_checks(results_table(scale, sparsity=0.9004)), "budget", "lenet300-100-gmp-0.9",
                  "sparsity")[0] == PASS
    got, line = status(run_checks(results_table(scale, sparsity=0.85)), "budget", "lenet300-100-gmp-0.9", "sparsity")
    assert got == FAIL and line.expected == 0.9 and line.tolerance == 1e-3


def test_a_layerwise_budget_has_no_single_target():
    table = results_table()
    table.loc[table.method == "gmp", "budget"] = json.dumps({"sparsity": 0.9, "layerwise": {"fc1": 0.95}})
    assert status(run_checks(table), "budget", "lenet300-100-gmp-0.9", "sparsity")[0] == NOT_COMPARABLE


def test_dense_row_may_not_trail_its_pruned_rows_beyond_the_margin():
    assert status(run_checks(results_table("laptop", dense_top1=88.0, gmp_top1=88.9)), "dense",
                  "lenet300-100-dense")[0] == PASS
    got, line = status(run_checks(results_table("laptop", dense_top1=88.0, gmp_top1=89.5)), "dense",
                       "lenet300-100-dense")
    assert got == FAIL and "lenet300-100-gmp-0.9" in line.reason
    assert status(run_checks(results_table("laptop", dense_top1=88.0, gmp_top1=89.5), margin=2.0), "dense",
                  "lenet300-100-dense")[0] == PASS


def test_no_dense_verdict_at_smoke_scale_where_one_epoch_of_noise_decides():
    got, line = status(run_checks(results_table("smoke", dense_top1=30.0, gmp_top1=60.0)), "dense",
                       "lenet300-100-dense")
    assert got == NOT_COMPARABLE and line.reason.startswith("smoke scale")


def reference(mean=88.0, std=0.3, n=3, scale="laptop", row="lenet300-100-gmp-0.9", levels=None):
    """A table's `reference:` section as bench/reference_runs.py writes it, for one row."""
    entry = {"seeds": list(range(n)), "repo": "github.com/x/y", "commit": "abc", "command": "python x.py",
             "differences": ["weight_decay: harness 0.0, reference 0.0001"]}
    entry.update({"levels": levels} if levels else {"top1": {"mean": mean, "std": std, "n": n}})
    return {"gmp": {scale: {row: entry}}}


def laptop_table(gmp_top1=(88.0, 88.4, 87.6), scale="laptop"):
    """Three seeds of the laptop rows; the GMP row's top-1 per seed as given (mean 88.0, std 0.4)."""
    table = results_table(scale, seeds=range(len(gmp_top1)))
    for seed, top1 in enumerate(gmp_top1):
        table.loc[(table.method == "gmp") & (table.seed == seed), "top1"] = top1
    return table


def test_pooled_std_of_two_samples():
    # harness std 0.4 over 3 seeds, reference 0.3 over 3: sqrt((2 * 0.16 + 2 * 0.09) / 4) = 0.3536
    assert pooled_std(0.4, 3, 0.3, 3) == pytest.approx(0.353553, abs=1e-6)
    assert pooled_std(0.4, 3, 0.3, 5) == pytest.approx(((2 * 0.16 + 4 * 0.09) / 6) ** 0.5)
    assert pooled_std(0.0, 1, 0.0, 1) == 0.0


def test_reference_check_passes_within_twice_the_pooled_std_and_fails_beyond():
    # tolerance 2 x 0.3536 = 0.707 points: the reference's 88.6 is 0.6 away (pass), 88.8 is 0.8 (fail)
    got, line = status(run_checks(laptop_table(), references=reference(mean=88.6)), "reference",
                       "lenet300-100-gmp-0.9")
    assert got == PASS and line.tolerance == pytest.approx(0.7071, abs=1e-4) and line.expected == 88.6
    assert line.measured == pytest.approx(88.0) and "pooled std 0.354" in line.reason
    got, line = status(run_checks(laptop_table(), references=reference(mean=88.8)), "reference",
                       "lenet300-100-gmp-0.9")
    assert got == FAIL and line.difference == pytest.approx(-0.8)
    assert "1 recipe difference(s)" in line.reason


def test_reference_tolerance_has_a_floor_when_both_spreads_are_tiny():
    table = laptop_table(gmp_top1=(88.0, 88.0, 88.0))
    got, line = status(run_checks(table, references=reference(mean=88.45, std=0.0)), "reference",
                       "lenet300-100-gmp-0.9")
    assert got == PASS and line.tolerance == REFERENCE_FLOOR
    assert status(run_checks(table, references=reference(mean=88.55, std=0.0)), "reference",
                  "lenet300-100-gmp-0.9")[0] == FAIL


def test_reference_check_needs_as_many_seeds_as_the_reference():
    got, line = status(run_checks(laptop_table(gmp_top1=(88.0,)), references=reference(mean=80.0)), "reference",
                       "lenet300-100-gmp-0.9")
    assert got == NOT_COMPARABLE and "fewer seeds than the reference (1 < 3)" in line.reason
    assert "results/parity.csv` runs it at 3 seeds" in line.reason and pd.isna(line.tolerance)


def test_reference_check_counts_only_at_the_scale_the_reference_ran_at():
    checks = run_checks(laptop_table(scale="smoke"), references=reference(mean=80.0))
    got, line = status(checks, "reference", "lenet300-100-gmp-0.9")
    assert got == NOT_COMPARABLE and "run at laptop scale, not smoke" in line.reason
    assert "lenet300-100-dense" not in set(checks[checks.check == "reference"].row)   # no entry: no line


def test_a_reference_that_failed_is_said_so():
    refs = reference(mean=88.2)
    entry = refs["gmp"]["laptop"]["lenet300-100-gmp-0.9"]
    entry["failed"] = ["seed 3: AssertionError at util.py:370 (sparse_quantize)"]
    got, line = status(run_checks(laptop_table(), references=refs), "reference", "lenet300-100-gmp-0.9")
    assert got == PASS and "failed on 1 more seed(s): seed 3: AssertionError" in line.reason
    del entry["top1"]
    got, line = status(run_checks(laptop_table(), references=refs), "reference", "lenet300-100-gmp-0.9")
    assert got == NOT_COMPARABLE and line.reason.startswith("the reference entry has no top1; it failed: seed 3")


def test_reference_check_per_level():
    table = laptop_table()
    table = pd.concat([table.assign(level=0.25), table.assign(level=0.5, top1=table.top1 - 10)])
    levels = {0.25: {"top1": {"mean": 88.2, "std": 0.3, "n": 3}},
              0.5: {"top1": {"mean": 88.0, "std": 0.3, "n": 3}}}
    checks = run_checks(table, references=reference(levels=levels))
    lines = checks[(checks.check == "reference") & (checks.row == "lenet300-100-gmp-0.9")].set_index("level")
    assert lines.status.to_dict() == {0.25: PASS, 0.5: FAIL}
    assert lines.expected[0.5] == 88.0 and lines.measured[0.5] == pytest.approx(78.0)


def write(table, folder):
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "tables.csv", index=False)
    return folder


def test_checks_command_writes_checks_csv_then_fails_in_one_line(tmp_path, capsys):
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "gmp.yaml").write_text("default_tolerance: 0.5\n")
    table = pd.concat([results_table("paper", dense_top1=97.0), results_table("smoke")])
    write(table, tmp_path)
    args = ["checks", "--table", str(tmp_path / "tables.csv"), "--out", str(tmp_path / "checks.csv"),
            "--papers-dir", str(papers)]
    assert main(args + ["--scale", "smoke"]) == 0           # the failure is at another scale
    assert main(args) == 1
    checks = pd.read_csv(tmp_path / "checks.csv")
    assert list(checks.columns[:6]) == ["scale", "paper", "row", "level", "seeds", "check"]
    assert (checks.status == FAIL).sum() == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errors) == 1 and errors[0].startswith("error: 1 check(s) failed") and "lenet300-100-dense" in errors[0]


def test_checks_command_reads_the_reference_section_of_each_table(tmp_path):
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "gmp.yaml").write_text(yaml.safe_dump({"default_tolerance": 0.5, "reference": reference(mean=90.0)["gmp"]}))
    write(laptop_table(), tmp_path)
    assert main(["checks", "--table", str(tmp_path / "tables.csv"), "--out", str(tmp_path / "checks.csv"),
                 "--papers-dir", str(papers), "--scale", "laptop"]) == 1
    line = pd.read_csv(tmp_path / "checks.csv").query("check == 'reference'").iloc[0]
    assert line.status == FAIL and line.row == "lenet300-100-gmp-0.9" and line.expected == 90.0


def test_compare_reports_a_planted_change_and_rows_on_one_side(tmp_path, capsys):
    a = results_table(seeds=(0, 1))
    b = a.copy()
    b.loc[(b.row == "lenet300-100-gmp-0.9") & (b.seed == 1), "top1"] -= 0.5
    b.loc[b.row == "lenet300-100-dense", "flops"] *= 1.0005        # 0.05 %: within the tolerance
    b = pd.concat([b, results_table(scale="smoke")])
    c = compare(a, b, tolerance=0.1)
    assert c.matched == 4 and len(c.only_a) == 0 and len(c.only_b) == 2
    assert c.changes[["row", "seed", "metric"]].values.tolist() == [["lenet300-100-gmp-0.9", 1, "top1"]]
    assert c.changes.difference.iloc[0] == pytest.approx(-0.5)

    assert main(["compare", str(write(a, tmp_path / "a")), str(write(b, tmp_path / "b"))]) == 1
    out = capsys.readouterr().out
    assert "lenet300-100-gmp-0.9" in out and "2 runs only in" in out
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "a" / "tables.csv")]) == 0
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.strip().endswith("no such results table; run "
                                                    "`snakemake --cores all results/tables.csv` first")


# -- the rules, on made-up metrics.json files -------------------------------------------------------

AFTER_EVALUATION = ["aggregate", "checks", "paper_figures", "overview_figure", "all"]


def fake_metrics(workdir, scale="smoke", sparsity_of=lambda spec: spec.budget.get("sparsity", 0.0)):
    """metrics.json for every run at `scale`, shaped as harness/evaluate.py writes them."""
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    for spec in runs_for(config, papers_dir=workdir / "config/papers", scale=scale)[1]:
        s = sparsity_of(spec)
        point = {"level": None, "top1": 90.0 - 10 * s ** 4, "top5": 99.0, "sparsity": s, "prunable_params": 1000,
                 "nonzero_params": round(1000 * (1 - s)), "params": 1010, "flops": 1e6 * (1 - s), "dense_flops": 1e6}
        metrics = {"spec": json.loads(spec.to_json()), "points": [point], "train": {"wall_s": 1.0},
                   "env": {"device": "cpu", "commit": "test"}}
        path = workdir / f"results/runs/{scale}/{spec.paper}/{spec.row}/seed{spec.seed}/metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics))


@pytest.mark.slow
def test_rules_build_checks_figures_and_the_report_then_fail_on_a_missed_budget(workdir):
    config = workdir / "config/config.yaml"
    config.write_text(re.sub(r"(?m)^papers: \[.*?\]", "papers: [gmp]", config.read_text()))
    fake_metrics(workdir)
    # only the rules after evaluation: the made-up metrics.json files stand in for training
    only = ["--config", "scale=smoke", "--allowed-rules", *AFTER_EVALUATION]
    snakemake(workdir, *only)
    checks = pd.read_csv(workdir / "results/checks.csv")
    assert set(checks.status) == {PASS, NOT_COMPARABLE} and {"budget", "dense", "published"} <= set(checks.check)
    figures = workdir / "results/figures/smoke"
    assert {p.name for p in (figures / "gmp").glob("top1-*")} == {"top1-sparsity.png", "top1-sparsity.pdf",
                                                                  "top1-flops.png", "top1-flops.pdf"}
    assert (figures / "overview.png").stat().st_size > 10_000 and (figures / "overview.pdf").exists()

    snakemake(workdir, "--report", "results/report.html", *only)
    report = (workdir / "results/report.html").read_text()
    for name in ("tables.csv", "checks.csv", "overview.png", "top1-flops.png"):
        assert name in report, name

    fake_metrics(workdir, sparsity_of=lambda spec: 0.85 if spec.row == "lenet5-gmp-0.9" else
                 spec.budget.get("sparsity", 0.0))
    proc = snakemake(workdir, "results/checks.csv", *only, check=False)
    assert proc.returncode != 0
    log = (workdir / "results/logs/checks.log").read_text()
    assert "lenet5-gmp-0.9" in log and "error: 1 check(s) failed" in log


def test_a_bit_budget_holds_or_fails():
    table = results_table(scale="laptop").assign(size_bits=[32000, 900], size_budget_bits=[None, 1000])
    assert status(run_checks(table), "budget", "lenet300-100-gmp-0.9", "size_bits")[0] == PASS
    table.loc[1, "size_bits"] = 1001
    assert status(run_checks(table), "budget", "lenet300-100-gmp-0.9", "size_bits")[0] == FAIL


def test_parity_command_writes_only_reference_checks_and_a_side_by_side_figure(tmp_path, capsys):
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "gmp.yaml").write_text(yaml.safe_dump({"reference": reference(mean=88.6)["gmp"]}))
    write(laptop_table(), tmp_path)
    assert main(["parity", "--table", str(tmp_path / "tables.csv"), "--out", str(tmp_path / "parity.csv"),
                 "--figures", str(tmp_path / "parity"), "--papers-dir", str(papers), "--scale", "laptop"]) == 0
    lines = pd.read_csv(tmp_path / "parity.csv")
    assert list(lines.check) == ["reference"] and lines.status.iloc[0] == PASS
    assert "reference checks at laptop scale: 1 pass" in capsys.readouterr().out
    assert (tmp_path / "parity" / "gmp.png").stat().st_size > 10_000


def test_parity_figure_puts_each_row_beside_its_reference_with_error_bars():
    from harness.figures import parity_figure
    table = laptop_table()
    fig = parity_figure(table[table.paper == "gmp"], reference(mean=86.0, std=0.5)["gmp"]["laptop"])
    ax = fig.axes[0]
    points = sorted((round(line.get_xdata()[0], 3), line.get_marker()) for line in ax.lines if line.get_marker() in "oD")
    assert points == [(86.0, "D"), (88.0, "o")]                     # the reference, and the harness's mean of 3 seeds
    assert [t.get_text() for t in ax.get_yticklabels()] == ["lenet300-100-gmp-0.9  (n = 3 / 3)"]
    assert parity_figure(table, {}) is None


def test_parity_figure_draws_a_row_with_levels_as_two_curves_over_its_levels():
    from harness.figures import parity_figure
    table = laptop_table()
    table = pd.concat([table.assign(level=0.25, level_kind="topk"),
                       table.assign(level=0.5, level_kind="topk", top1=table.top1 - 10)])
    levels = {0.25: {"top1": {"mean": 88.2, "std": 0.3, "n": 3}},
              0.5: {"top1": {"mean": 70.0, "std": 2.0, "n": 3}}}
    fig = parity_figure(table[table.paper == "gmp"], reference(levels=levels)["gmp"]["laptop"])
    (ax,) = [a for a in fig.axes if a.get_visible()]
    curves = {line.get_marker(): list(zip(line.get_xdata(), line.get_ydata())) for line in ax.lines
              if len(line.get_xdata()) == 2}
    assert curves["o"] == [(0.25, pytest.approx(88.0)), (0.5, pytest.approx(78.0))]    # harness, mean of 3 seeds
    assert curves["D"] == [(0.25, 88.2), (0.5, 70.0)]                                  # the reference
    assert ax.get_xlabel() == "topk" and "(n = 3 / 3)" in ax.get_title()
