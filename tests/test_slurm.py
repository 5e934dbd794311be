"""The workflow on a real SLURM cluster (single node, localhost; tests/slurm_cluster.py) through
profiles/slurm: every job goes through sbatch, asks for a GPU only where its rule does, the results
equal a local run's exactly, and a training job that SLURM requeues or cancels mid-run resumes
from its checkpoint. Skipped where SLURM is not installed or cannot start (setup.sh installs it
as root).

Each step through the queue costs the executor plugin's polling (about 30 s here), so one SLURM
run, with both interruptions in it, serves most tests, and the local reference runs beside it.
"""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.conftest import copy_workflow_files
from tests.slurm_cluster import LocalSlurm, Unavailable

PAPER = "slurm_test"
SHORT, LONG = "lenet300-gmp-0.9", "lenet5-gmp-0.9"
EPOCHS = 6
# Two independent rows on generated data: a one-epoch run, and one of several epochs (a second or
# two each) that the test interrupts.
TABLE = f"""\
title: "SLURM test table"
source: "tests/test_slurm.py"
scales:
  paper: {{note: "not run"}}
  laptop: {{note: "not run"}}
  smoke: {{note: "generated data", datasets: {{"*": synthetic}}}}
defaults:
  dataset: mnist
  method: gmp
  budget: {{sparsity: 0.9}}
rows:
  {SHORT}:
    model: lenet300-100
    dataset_args: {{train_size: 256, test_size: 128}}
    train: {{epochs: 1, batch_size: 64, lr: 0.01}}
    method_args: {{end_epoch: 0.5}}
  {LONG}:
    model: lenet5-caffe
    dataset_args: {{train_size: 1000, test_size: 200}}
    train: {{epochs: {EPOCHS}, batch_size: 50, lr: 0.02, weight_decay: 1.0e-4}}
    method_args: {{end_epoch: 3}}
"""
SMOKE = ["results/tables.csv", "--config", "scale=smoke", f"papers=[{PAPER}]"]
PROFILES = ["--profile", "profiles/slurm", "--profile", "profiles/slurm-local"]
RESUMED = re.compile(r"resumed from \S+checkpoint\.pt at epoch (\d+)/(\d+)")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    try:
        slurm = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    except Unavailable as why:
        pytest.skip(str(why))
    yield slurm
    slurm.stop()


def copy_workflow(dest):
    """What conftest's `workdir` fixture makes (code and config, no results), plus the test table."""
    copy_workflow_files(dest)
    (dest / "config" / "papers" / f"{PAPER}.yaml").write_text(TABLE)
    return dest


def start_snakemake(cwd, *args, cluster=None):
    """Snakemake with the tests' interpreter, its output in <cwd>/snakemake.out. Local runs get
    --cores; SLURM runs get no --cores (each job's threads come from its rule) and the partition
    and an empty account through the variables profiles/slurm reads."""
    env = dict(os.environ)
    cores = ["--cores", "2"]
    if cluster:
        env.update(SBATCH_PARTITION=cluster.partition, SBATCH_ACCOUNT="")
        cores = []
    with open(cwd / "snakemake.out", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", *cores, *args], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    proc.output = lambda: (cwd / "snakemake.out").read_text()
    return proc


def finish(proc, timeout=600):
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(proc.args)} failed:\n{proc.output()[-5000:]}"
    return proc.output()


def wait_for(ready, what, proc, timeout=300):
    """Poll until ready() is true; fail with Snakemake's output if it exits first. The timeout only
    stops a hung test; nothing here depends on how fast the cluster is."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"snakemake exited while waiting for {what}:\n{proc.output()[-5000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}:\n{proc.output()[-5000:]}")
        time.sleep(0.1)


@contextlib.contextmanager
def stopped_on_exit(*procs):
    """Stop the Snakemake processes still running when the block is left early, by a failure (the
    cluster's teardown cancels their jobs)."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def run_dir(workdir, row):
    return workdir / "results" / "runs" / "smoke" / PAPER / row / "seed0"


def last_epoch(log):
    """The last epoch a train.log reports as done (checkpointed before its line is written)."""
    done = re.findall(r"^epoch (\d+)/", log.read_text(), re.M) if log.exists() else []
    return int(done[-1]) if done else 0


def resumed_at(log):
    """The epoch a train.log's run resumed from, or None."""
    found = RESUMED.search(log.read_text()) if log.exists() else None
    return int(found.group(1)) if found else None


def slurm_run_id(output):
    """The plugin names every job of a workflow run by the run's ID."""
    return re.search(r"SLURM run ID: (\S+)", output).group(1)


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The smoke workflow of the test table through SLURM, and the same run locally beside it, for
    reference. LONG's training job is interrupted twice, each time after it has checkpointed an epoch:
    first requeued by SLURM, as a preempted job is (profiles/slurm submits with --requeue), then
    cancelled, which the plugin reports as a failed job that Snakemake resubmits (retries)."""
    slurm_dir = copy_workflow(tmp_path_factory.mktemp("slurm-run"))
    local_dir = copy_workflow(tmp_path_factory.mktemp("local-run"))
    local = start_snakemake(local_dir, *SMOKE)
    slurm = start_snakemake(slurm_dir, *PROFILES, *SMOKE, cluster=cluster)
    log = run_dir(slurm_dir, LONG) / "train.log"

    def jobs_of_long(state):
        return [j["JobID"] for j in cluster.jobs("JobID", "State", "Comment")
                if LONG in j["Comment"] and j["State"] == state]

    with stopped_on_exit(slurm, local):
        wait_for(lambda: last_epoch(log) >= 1, f"the first epoch of {LONG}", slurm)
        running, done_at_requeue = jobs_of_long("RUNNING"), last_epoch(log)
        assert len(running) == 1, running
        job = running[0]
        subprocess.run(["scontrol", "requeue", job], check=True)
        # SLURM holds a requeued job back for 120 s once it is pending again; no need to wait here
        wait_for(lambda: jobs_of_long("PENDING") == [job], f"{LONG} to be pending again", slurm)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)

        # the job starts again (its train.log begins anew) and gets an epoch further
        wait_for(lambda: resumed_at(log) is not None and last_epoch(log) > resumed_at(log),
                 f"{LONG} to resume after the requeue", slurm)
        assert jobs_of_long("RUNNING") == [job]
        resumed_after_requeue, done_at_cancel = resumed_at(log), last_epoch(log)
        subprocess.run(["scancel", job], check=True)

        return SimpleNamespace(slurm_dir=slurm_dir, local_dir=local_dir, slurm_out=finish(slurm),
                               local_out=finish(local), job=job, done_at_requeue=done_at_requeue,
                               resumed_after_requeue=resumed_after_requeue, done_at_cancel=done_at_cancel)


@pytest.mark.slow
def test_every_job_went_through_slurm_without_a_gpu(runs, cluster):
    logs = runs.slurm_dir / ".snakemake" / "slurm_logs"
    for row in (SHORT, LONG):
        assert list(logs.glob(f"rule_train/smoke_{PAPER}_{row}_0/*.log")), row
    assert not list(logs.glob("rule_aggregate/*.log"))   # a localrule: runs beside Snakemake, not as a job

    jobs = [j for j in cluster.jobs("JobID", "Name", "State", "tres-per-job")
            if j["Name"] == slurm_run_id(runs.slurm_out)]
    # 2 train jobs, each training then evaluating (LONG's twice: the requeued then cancelled job, and its resubmission)
    assert sorted(j["State"] for j in jobs) == ["CANCELLED"] + ["COMPLETED"] * 2, jobs
    # smoke rows ask for gpu=0 (core/scheduling.py): no --gpus, no GPU among the job's resources
    assert {j["tres-per-job"] for j in jobs} == {"N/A"}


@pytest.mark.slow
def test_results_equal_a_local_run(runs):
    key, values = ["paper", "row", "seed", "level"], ["top1", "sparsity", "nonzero_params", "flops"]
    slurm = pd.read_csv(runs.slurm_dir / "results" / "tables.csv").set_index(key)[values].sort_index()
    local = pd.read_csv(runs.local_dir / "results" / "tables.csv").set_index(key)[values].sort_index()
    assert set(slurm.index.get_level_values("row")) == {SHORT, LONG}
    pd.testing.assert_frame_equal(slurm, local, check_exact=True)


@pytest.mark.slow
def test_requeued_job_resumed_from_its_checkpoint(runs):
    # at most the epoch that was running when SLURM requeued the job was lost
    assert 1 <= runs.done_at_requeue <= runs.resumed_after_requeue


@pytest.mark.slow
def test_cancelled_job_was_resubmitted_and_resumed_from_its_checkpoint(runs):
    assert f"SLURM-job '{runs.job}' failed, SLURM status is: 'CANCELLED'" in runs.slurm_out
    attempts = list((runs.slurm_dir / ".snakemake" / "slurm_logs").glob(f"rule_train/smoke_{PAPER}_{LONG}_0/*.log"))
    assert len(attempts) == 2, attempts       # the cancelled job and its resubmission

    # train.log is the resubmitted job's: it started from the checkpoint the cancelled one left
    log = run_dir(runs.slurm_dir, LONG) / "train.log"
    resumed = resumed_at(log)
    assert resumed is not None and runs.done_at_cancel <= resumed < EPOCHS, log.read_text()
    assert last_epoch(log) == EPOCHS

    def history(workdir):
        h = json.loads((run_dir(workdir, LONG) / "train.json").read_text())["history"]
        return [{k: e[k] for k in ("epoch", "loss", "train_acc", "test_top1", "sparsity", "lr")} for e in h]

    assert history(runs.slurm_dir) == history(runs.local_dir)     # two interruptions change nothing


@pytest.mark.slow
def test_paper_scale_jobs_ask_for_one_gpu(cluster, workdir):
    """Paper-scale training asks for a GPU (sbatch --gpus=1). The first jobs are submitted held, read
    from the queue and cancelled by Snakemake on Ctrl-C (SIGINT): they need neither MNIST nor a GPU."""
    held = ["--set-resources", "train:slurm_extra='--hold'",
            "train:mem_mb=500"]     # paper scale asks for 8 GB, more than the test node has
    proc = start_snakemake(workdir, *PROFILES, "results/tables.csv", "--config", "scale=paper", "papers=[gmp]",
                           *held, cluster=cluster)
    mine = lambda: [j for j in cluster.jobs("JobID", "State", "Reason", "tres-per-job", "Comment", "WorkDir")
                    if j["WorkDir"] == str(workdir)]
    seen = []

    def submissions_settled():
        """Every job in the queue held, and the same ones as 2 s ago: a SIGINT while Snakemake is still
        submitting can leave the job being submitted out of what it cancels (seen in a full suite)."""
        held = sorted(j["JobID"] for j in mine() if j["Reason"] == "JobHeldUser")
        settled = bool(held) and len(held) == len(mine()) and seen[-1:] == [held]
        seen.append(held)
        if not settled:
            time.sleep(2)
        return settled

    with stopped_on_exit(proc):
        wait_for(submissions_settled, "held paper-scale jobs", proc, timeout=120)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)   # cancelling waits on the plugin's status polling (seconds to minutes)
    # squeue may show a cancelled job PENDING a moment longer on a busy machine (seen once in a full suite)
    deadline = time.monotonic() + 60
    while {j["State"] for j in mine()} != {"CANCELLED"} and time.monotonic() < deadline:
        time.sleep(0.5)
    jobs = mine()
    assert jobs and all(j["Comment"].startswith("rule_train_wildcards_paper_gmp_") for j in jobs), jobs
    assert {j["tres-per-job"] for j in jobs} == {"gres:gpu:1"}
    assert {j["State"] for j in jobs} == {"CANCELLED"}, (jobs, proc.output()[-3000:])


def test_long_chains_get_the_highest_priority():
    """The train rule's priority: the length of the longest chain of runs that starts at a run, so
    the ADMM chain starts before the single runs that can fill the other cores meanwhile."""
    from core.scheduling import chain_lengths
    parents = {"dense": ["pretrain"], "160x": ["pretrain"], "533x": ["160x"], "1975x": ["533x"],
               "finetune": ["1975x"], "gmp": [], "str": [], "transfer": ["str"]}
    lengths = chain_lengths(parents)
    assert lengths == {"pretrain": 5, "160x": 4, "533x": 3, "1975x": 2, "finetune": 1, "dense": 1,
                       "gmp": 1, "str": 2, "transfer": 1}
