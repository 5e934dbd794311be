"""The Snakemake workflow: the DAG of every scale builds anywhere (no data, no GPU), the smoke scale
runs end to end, and a broken table fails at DAG-build time in one line without touching results."""
import pandas as pd
import pytest

from tests.conftest import snakemake


@pytest.mark.parametrize("scale", ["smoke", "laptop", "paper"])
def test_dry_run_builds_the_dag(workdir, scale):
    proc = snakemake(workdir, "-n", "results/tables.csv", "--config", f"scale={scale}", "data_dir=/nonexistent")
    assert "aggregate" in proc.stdout and "train" in proc.stdout


def test_smoke_workflow_end_to_end_then_a_broken_table_loses_nothing(workdir):
    snakemake(workdir, "results/tables.csv", "--config", "scale=smoke")
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
    run = workdir / "results/runs/smoke/gmp/lenet5-caffe-gmp-0.9/seed0"
    for name in ("spec.json", "train.log", "train.json", "metrics.json", "benchmark.tsv", "model.pt"):
        assert (run / name).exists(), name

    before = {p: p.stat().st_mtime for p in (workdir / "results").rglob("*") if p.is_file()}
    paper = workdir / "config/papers/gmp.yaml"
    paper.write_text(paper.read_text().replace("method: gmp", "method: gmpp"))
    proc = snakemake(workdir, "results/tables.csv", "--config", "scale=smoke", check=False)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert errors == ["error: config/papers/gmp.yaml: row 'lenet300-100-gmp-0.5' (grid row "
                      "'{model}-gmp-{sparsity}'): unknown method 'gmpp'; did you mean 'gmp'?"]
    after = {p: p.stat().st_mtime for p in (workdir / "results").rglob("*") if p.is_file()}
    assert after == before


def test_bad_config_value_is_one_line(workdir):
    proc = snakemake(workdir, "-n", "--config", "scale=huge", check=False)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert errors == ["error: config/config.yaml (or --config) ['scale']: "
                      "'huge' is not one of ['smoke', 'laptop', 'paper']"]
