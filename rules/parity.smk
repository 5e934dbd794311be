# The parity target: every row that carries the reference code's own values (a table's
# `reference:` section, bench/reference_runs.py) run at as many seeds as the reference was, then
# only the `reference` checks and a side-by-side figure per paper. Its own target because the extra
# seeds cost more than the default run should: `snakemake --cores all results/parity.csv`.


rule parity:
    input:
        metrics=metrics_files(PARITY_RUNS),
        papers=expand("config/papers/{paper}.yaml", paper=config["papers"]),
    output:
        checks=report("results/parity.csv", caption="../report/parity.rst", category="Tables"),
        figures=directory("results/parity"),
    log:
        "results/logs/parity.log",
    shell:
        "{PYTHON} -m harness aggregate --out {output.figures}/tables.csv --papers-dir config/papers "
        "{input.metrics} > {log} 2>&1 && "
        "{PYTHON} -m harness parity --table {output.figures}/tables.csv --out {output.checks} "
        "--figures {output.figures} --scale {SCALE} --papers-dir config/papers 2>&1 | tee -a {log}"
