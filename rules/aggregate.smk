# All runs' metrics into one long table; the terminal gets a short summary of the selected scale.


# Published values and notes are read from the paper tables here, not from the runs: a table's
# change (its file newer than tables.csv) re-runs this rule alone when the runs' results stay valid.


rule aggregate:
    input:
        metrics=metrics_files(RUNS),
        papers=expand("config/papers/{paper}.yaml", paper=config["papers"]),
    output:
        TABLES_CSV,
    params:
        others=other_scale_metrics(),
    log:
        "results/logs/aggregate.log",
    shell:
        "{PYTHON} -m harness aggregate --out {output} --scale {SCALE} --papers-dir config/papers "
        "{input.metrics} {params.others} 2>&1 | tee {log}"
