# Every method at the same targets (config/papers/leaderboard.yaml, harness/leaderboard.py): one line
# per scale, model, target and method, accuracy mean ± std over seeds, flagged where a method missed.
LEADERBOARD = ["results/leaderboard.csv"] if "leaderboard" in config["papers"] else []


rule leaderboard:
    input:
        table="results/tables.csv",
        settings="config/papers/leaderboard.yaml",
    output:
        report("results/leaderboard.csv", caption="../report/leaderboard.rst", category="Tables"),
    log:
        "results/logs/leaderboard.log",
    shell:
        "{PYTHON} -m harness leaderboard --table {input.table} --out {output} --scale {SCALE} 2>&1 | tee {log}"
