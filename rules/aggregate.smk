# All runs' metrics into one long table; the terminal gets a short summary of the selected scale.


rule aggregate:
    input:
        metrics_files(RUNS),
    output:
        "results/tables.csv",
    params:
        others=other_scale_metrics(),
    log:
        "results/logs/aggregate.log",
    shell:
        "{PYTHON} -m harness aggregate --out {output} --scale {SCALE} {input} {params.others} 2>&1 | tee {log}"
