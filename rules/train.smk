# Training and then evaluation of one run, in one job: a separate evaluation job meant a second
# process start, torch import and data load for every run. The shared dense model of a paper is a
# run like any other.
# A killed job resumes from <run>/checkpoint.pt, which is not a declared output and so survives.
# Only the settings of a run's result are params (spec.result_json): the data folder and device
# travel as options written into the shell command (Snakemake's `code` trigger compares the command
# as written, not its values), published values and notes are joined in by the aggregate rule, so
# changing any of those re-runs nothing.
# A job that starts makes results/tables.csv (and the parity target's results/parity.csv) stale, and
# removes them first: Snakemake re-makes only a
# missing file that a requested one needs, so if the job then fails (or is killed) after Snakemake
# deleted its old outputs, the next run re-makes tables.csv and with it this run, instead of keeping
# a table that lists results which are gone.
# On one machine the job's process hands the run to a fork of the warm server (harness/warm.py),
# which imported torch and the harness once, instead of paying ~7 s of imports per job; the job's
# log, files, exit status and stopping are the same, but its CPU time and memory are those of the
# fork, which benchmark.tsv (the job's own process tree) does not see: its wall time is right.
# A run with several GPUs (paper-scale `train.gpus`, or `train.processes`) trains with
# DistributedDataParallel, one process per GPU started by torchrun inside this one job
# (core/scheduling.py: launcher); the job's GPU count decides it, so
# `--set-resources train:gpu=N` runs a row on N GPUs with the same global batch.


rule train:
    input:
        init=init_model,
        budget=transfer_budget,
    output:
        model=RUN_DIR + "/model.pt",
        history=RUN_DIR + "/train.json",
        metrics=RUN_DIR + "/metrics.json",   # evaluated in the same process, right after training
        budget=RUN_DIR + "/budget.csv",      # the achieved layer-wise budget, in STR's CSV format
    params:
        spec=lambda wc: spec_of(wc).result_json(),
        init=lambda wc, input: f"--init {input.init}" if input.init else "",
        budget=lambda wc, input: f"--budget-file {input.budget}" if input.budget else "",
        launch=lambda wc, resources: scheduling.launch_args(scheduling.processes(spec_of(wc), resources.gpu)),
    log:
        RUN_DIR + "/train.log",
    benchmark:
        RUN_DIR + "/benchmark.tsv"
    wildcard_constraints:
        scale=re.escape(SCALE),   # another scale's run folder is made under --config scale=<that scale>
    threads: 1
    priority: lambda wc: CHAIN_LENGTH.get((wc.paper, wc.row, wc.seed), 1)
    resources:
        gpu=lambda wc: scheduling.gpus(spec_of(wc)),
        cpus_per_task=lambda wc, threads: scheduling.cpus_per_task(spec_of(wc), threads),
        mem_mb=lambda wc: scheduling.mem_mb(spec_of(wc)),
        runtime=lambda wc, attempt: scheduling.runtime_min(spec_of(wc)) * attempt,
    shell:
        "rm -f {TABLES_CSV} results/parity.csv; "
        "HARNESS_NO_BAR=1 {PYTHON} {params.launch} train --spec {params.spec:q} --out $(dirname {output.model}) "
        "--data-dir {DATA_DIR:q} --device {DEVICE:q} "
        "{params.init} {params.budget} --evaluate {output.metrics} --threads {threads} > {log} 2>&1"
