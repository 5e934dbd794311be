"""Where the default run's time goes: wall time, per-job cost outside the training loop, the use of
the cores, and how far the run is from this machine's matmul limit.

    .venv/bin/python bench/default_run.py [--run] [--cores 2] [--scale laptop]

With --run it first runs the README's main job from scratch (`snakemake --cores N --forceall
results/tables.csv`: every result is made again) and times it; without, it reads the runs already in
results/runs/<scale>. Each run's figures come from its own files: Snakemake's benchmark.tsv (wall and
CPU seconds of the whole job), train.json (seconds inside the training loop, per epoch) and
metrics.json (the network's dense multiply-accumulates per sample). Prints figures; asserts nothing.

- outside the epochs: job wall seconds minus its epochs' (process start, imports, data, model,
  the final evaluation at every level, files); the epochs' own test evaluations and checkpoints
  (train.json `seconds` minus `train_s`) are reported apart, as part of the recipe;
- core use: the machine's busy CPU seconds over wall x cores during the run (with --run, from
  /proc/stat: jobs run in forks of the warm server (harness/warm.py), outside the process tree whose
  CPU time Snakemake's benchmark.tsv records);
- physical limit: the run's training FLOPs (3 matmuls per layer and sample, 2 FLOPs per
  multiply-accumulate, over every sample of every epoch: one pass of the dense network, so a lower
  bound for multi-pass methods such as LCS's sandwich) at this machine's float32 matmul FLOP/s on
  all the cores."""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def matmul_flops(threads, n=1024, repeats=20):
    """float32 matmul FLOP/s at `threads` threads (best of `repeats`)."""
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def busy_and_total_cpu_s():
    """The machine's (busy, all) CPU seconds since boot, from /proc/stat (Linux)."""
    import os
    ticks = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    idle = ticks[3] + ticks[4]    # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def read_job(folder):
    """One run's figures, or None where a file is missing (a run that did not finish)."""
    try:
        header, values = (folder / "benchmark.tsv").read_text().splitlines()[:2]
        bench = dict(zip(header.split("\t"), values.split("\t")))
        train = json.loads((folder / "train.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    args = metrics["spec"].get("dataset_args") or {}
    samples = args.get("train_size") or {"fashion-mnist": 60000, "mnist": 60000, "cifar10": 50000,
                                         "fashion-mnist-cifar": 60000}.get(metrics["spec"]["dataset"], 0)
    history = train.get("history", [])
    loop = sum(h.get("train_s", h.get("seconds", 0.0)) for h in history)
    return {"job": str(folder), "wall_s": float(bench["s"]), "loop_s": loop,
            "epochs_s": sum(h.get("seconds", 0.0) for h in history), "threads": train.get("threads", 1),
            "train_flops": 6 * metrics["points"][0]["dense_flops"] * samples * train.get("epochs", 0)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="store_true", help="run the default job from scratch first, and time it")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--scale", default="laptop")
    p.add_argument("--results", type=Path, default=ROOT / "results", help="read the runs of another checkout")
    a = p.parse_args(argv)
    wall = None
    if a.run:
        t, (busy, total) = time.perf_counter(), busy_and_total_cpu_s()
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(a.cores), "--forceall",
                        "results/tables.csv"], cwd=ROOT, check=True)
        wall = time.perf_counter() - t
        busy, total = (now - then for now, then in zip(busy_and_total_cpu_s(), (busy, total)))
    jobs = [j for f in sorted((a.results / "runs" / a.scale).glob("*/*/seed*")) if (j := read_job(f))]
    if not jobs:
        sys.exit(f"no finished runs in results/runs/{a.scale}: run the workflow first, or pass --run")
    n = len(jobs)
    job_s, loop_s, epochs_s = (sum(j[k] for j in jobs) for k in ("wall_s", "loop_s", "epochs_s"))
    outside = sorted(j["wall_s"] - j["epochs_s"] for j in jobs)
    flops = sum(j["train_flops"] for j in jobs)
    one, every = matmul_flops(1), matmul_flops(a.cores)
    print(f"{n} training jobs at {a.scale} scale, {a.cores} cores")
    if wall is not None:
        print(f"  default run wall time:        {wall:8.1f} s ({wall / 60:.1f} min)")
        print(f"  core use (busy CPU s / all CPU s): {busy / total:6.1%} of the machine's {total / wall:.1f} cores")
    print(f"  jobs' wall seconds, summed:   {job_s:8.1f} s; training loops {loop_s:.1f} s ({loop_s / job_s:.0%})")
    print(f"  per-epoch tests, checkpoints: {epochs_s - loop_s:8.1f} s (the recipes' eval_every)")
    print(f"  outside the epochs:           {job_s - epochs_s:8.1f} s = {(job_s - epochs_s) / n:.2f} s per job "
          f"(median {outside[n // 2]:.2f}, max {outside[-1]:.2f}): start, data, model, final evaluation, files")
    print(f"  matmul float32:               {one / 1e9:8.1f} GFLOP/s on 1 thread, {every / 1e9:.1f} on {a.cores}")
    print(f"  training FLOPs of the run:    {flops / 1e12:8.2f} TFLOP (one dense pass per sample)")
    print(f"  at the matmul limit:          {flops / every:8.1f} s on {a.cores} cores"
          + (f" = {flops / every / wall:.1%} of the wall time" if wall else "")
          + f"; the loops ran at {flops / loop_s / one:.0%} of the 1-thread rate")


if __name__ == "__main__":
    main()
