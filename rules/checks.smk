# Regression checks of every scale in tables.csv (harness/checks.py). The job fails when a check of
# the selected scale fails; Snakemake then deletes checks.csv as a failed job's output, so the
# failures are printed and kept in results/logs/checks.log (`--keep-incomplete` keeps the csv too).


rule checks:
    input:
        # tables.csv joins the report here: rules/aggregate.smk writes it, this rule reads it
        table=report("results/tables.csv", caption="../report/tables.rst", category="Tables"),
        papers=expand("config/papers/{paper}.yaml", paper=config["papers"]),  # default_tolerance
    output:
        report("results/checks.csv", caption="../report/checks.rst", category="Tables"),
    log:
        "results/logs/checks.log",
    shell:
        "{PYTHON} -m harness checks --table {input.table} --out {output} --scale {SCALE} "
        "--papers-dir config/papers 2>&1 | tee {log}"
