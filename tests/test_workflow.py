"""The Snakemake workflow: the DAG of every scale builds anywhere (no data, no GPU), the smoke scale
runs end to end, and a broken table fails at DAG-build time in one line without touching results."""
import re

import pandas as pd
import pytest

from tests.conftest import snakemake


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["smoke", "laptop", "paper"])
def test_dry_run_builds_the_dag(workdir, scale):
    proc = snakemake(workdir, "-n", "results/tables.csv", "--config", f"scale={scale}", "data_dir=/nonexistent")
    assert "aggregate" in proc.stdout and "train" in proc.stdout


@pytest.mark.slow
def test_smoke_workflow_end_to_end_then_a_broken_table_loses_nothing(workdir):
    snakemake(workdir, "results/tables.csv", "--config", "scale=smoke", "papers=[gmp]")
    table = pd.read_csv(workdir / "results" / "tables.csv")
    assert len(table) == 12 and set(table.scale) == {"smoke"}
    required = {"scale", "paper", "row", "method", "model", "dataset", "level", "top1", "sparsity",
                "nonzero_params", "flops", "published_top1", "published_source", "seed", "wall_s"}
    assert required <= set(table.columns)
    gmp = table[table.method == "gmp"]
    targets = gmp.row.str.rsplit("-", n=1).str[1].astype(float)
    assert (gmp.sparsity.values == pytest.approx(targets.values, abs=1e-4))
    dense = table[table.method == "dense"].set_index("row")
    assert dense.loc["lenet300-dense", "published_top1"] == 98.4 and dense.loc["lenet300-dense", "sparsity"] < 0.01
    run = workdir / "results/runs/smoke/gmp/lenet5-gmp-0.9/seed0"
    for name in ("spec.json", "train.log", "train.json", "metrics.json", "benchmark.tsv", "model.pt"):
        assert (run / name).exists(), name

    before = {p: p.stat().st_mtime for p in (workdir / "results").rglob("*") if p.is_file()}
    paper = workdir / "config/papers/gmp.yaml"
    paper.write_text(paper.read_text().replace("method: gmp", "method: gmpp"))
    proc = snakemake(workdir, "results/tables.csv", "--config", "scale=smoke", "papers=[gmp]", check=False)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert errors == ["error: config/papers/gmp.yaml: row 'lenet300-100-gmp-0.5' (grid row "
                      "'{model}-gmp-{sparsity}'): unknown method 'gmpp'; did you mean 'gmp'?"]
    after = {p: p.stat().st_mtime for p in (workdir / "results").rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.slow
def test_bad_config_value_is_one_line(workdir):
    proc = snakemake(workdir, "-n", "--config", "scale=huge", check=False)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert errors == ["error: config/config.yaml (or --config) ['scale']: "
                      "'huge' is not one of ['smoke', 'laptop', 'paper']"]


@pytest.mark.slow
def test_smoke_runs_every_row_of_the_str_and_deephoyer_tables(workdir):
    """Chains (regularize -> prune + finetune), budget transfer and every method, end to end."""
    snakemake(workdir, "results/tables.csv", "--config", "scale=smoke", "papers=[hoyer,str]")
    table = pd.read_csv(workdir / "results" / "tables.csv")
    assert set(table.paper) == {"hoyer", "str"} and len(table) == 34 + 18
    tuned = table[table.row == "lenet5-hoyer_square-0.0002-std0.03"].iloc[0]
    assert tuned.pipeline == "dense>hoyer_square>finetune" and tuned.sparsity > 0 and tuned.best_top1 > 0
    rows = table.set_index("row")
    assert set(rows.method) >= {"dense", "str", "dnw", "gmp", "l1", "hoyer", "hoyer_square", "tl1",
                                "group_lasso", "group_hs", "finetune"}
    # DNW trained with the layer-wise budget STR learned: the same per-layer sparsity
    budget = lambda row: pd.read_csv(workdir / f"results/runs/smoke/str/{row}/seed0/budget.csv")  # noqa: E731
    source, target = budget("str-0.04"), budget("dnw-transfer")
    assert (source["Sparsity (%)"] - target["Sparsity (%)"]).abs().max() < 0.5   # int(rate * n) rounding


@pytest.mark.slow
def test_smoke_runs_the_admm_table_with_its_finetune_stage(workdir):
    """Joint compression under its bit budget, finetuning with pattern and bits fixed, quantize-only."""
    snakemake(workdir, "results/tables.csv", "--config", "scale=smoke", "papers=[admm]")
    rows = pd.read_csv(workdir / "results" / "tables.csv").set_index("row")
    joint, tuned = rows.loc["lenet5-2000x"], rows.loc["lenet5-1975x-finetune"]
    assert joint.size_bits <= joint.size_budget_bits and joint.compression >= 1975.05
    assert tuned.pipeline == "dense>admm>finetune" and tuned.nonzero_params == joint.nonzero_params
    assert tuned.compression >= joint.compression            # bits kept (or fewer values in use)
    quant = rows.loc[["lenet5-quantize-2bit", "lenet5-quantize-3bit", "lenet5-quantize-4bit"]]
    assert (quant.sparsity == 0).all() and (quant.bits <= [2, 3, 4]).all() and (quant.compression >= [16, 32 / 3, 8]).all()


@pytest.mark.slow
def test_parity_target_runs_the_referenced_rows_at_the_references_seeds(workdir):
    proc = snakemake(workdir, "-n", "results/parity.csv", "--config", "papers=[hoyer]", "data_dir=/nonexistent")
    planned = re.findall(r"wildcards: scale=laptop, paper=hoyer, row=([^,]+), seed=(\d)", proc.stdout)
    rows = {row for row, _ in planned}
    assert {seed for _, seed in planned} == {"0", "1", "2"}       # hoyer's reference ran 3 seeds
    assert "lenet300-100-hoyer-0.003-std0.5" in rows and "lenet300-100-hoyer-0.003" in rows   # and its parent
    assert not any(row.startswith("lenet5") for row in rows)       # no reference values: not part of it
