"""Seconds per training epoch of a laptop recipe here and in the paper's own code, side by side.

    .venv/bin/python bench/versus_reference.py --deephoyer ~/src/DeepHoyer \\
        [--admm ~/src/sparsity_quantization_joint] [--rounds 3] [--epochs 1 5] [--threads 1] [--work DIR]

Each recipe is one row of a paper table at laptop scale (RECIPES: DeepHoyer's LeNet-300-100
Hoyer-Square row, ADMM's LeNet-5 160x row). Its reference command is the one bench/reference_runs.py
derives from the row (the same images, batch, optimizer, lr and strength), run by that file's patched
child; ours is `python -m harness train` on the same row, in a process of its own. Each side starts from
its own table's dense model, trained once by its own code into --work and not timed (ADMM's lr
diverges from a random start), and both run on the CPU with `threads` threads.

An epoch's cost is measured as a difference, (wall(E2 epochs) - wall(E1 epochs)) / (E2 - E1), of
whole processes, so that start, imports, data loading and a final evaluation cancel and what remains
is what each side does per epoch (the reference's per-epoch tests included, where it tests). Rounds
alternate which side goes first, so a machine whose speed drifts shows in the spread of the rounds,
not as a bias. Prints the figures; asserts nothing."""
import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import reference_runs  # noqa: E402

RECIPES = {"hoyer": "lenet300-100-hoyer_square-0.0001", "admm": "lenet5-160x"}


def _table_spec(paper, row):
    from harness.tables import PaperTable
    table = PaperTable(ROOT / "config" / "papers" / f"{paper}.yaml")
    spec = next(s for s in table.specs(reference_runs.SCALE, [0]) if s.row == row)
    if spec.init != "pretrain":
        raise SystemExit(f"{paper} {row}: a recipe here starts from the table's shared dense model")
    return spec, table.pretrain_spec(spec)


def _harness_train(spec, out, threads, init=None):
    env = {**os.environ, "HARNESS_WARM": "0", "HARNESS_NO_BAR": "1",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "harness", "train", "--spec", spec.to_json(), "--out", str(out),
           "--threads", str(threads), "--device", "cpu", *(["--init", str(init)] if init else [])]
    tic = time.time()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.time() - tic


class Recipe:
    """One row, both sides, each from its own side's dense model (trained once, not timed)."""

    def __init__(self, paper, repos, work, threads):
        self.paper, self.row, self.repos, self.threads = paper, RECIPES[paper], repos, threads
        self.work = Path(work).resolve() / paper   # the harness runs from ROOT
        stages = reference_runs.plan(paper, [self.row])
        reference_runs.register_outputs(paper, stages)
        for name, stage in stages.items():       # the reference's starting model (a finished one is kept)
            if name != self.row:
                reference_runs.run_stage(stage, paper, 0, repos, self.work / "reference", threads, nice=0)
        self.stage = stages[self.row]
        self.spec, pretrain = _table_spec(paper, self.row)
        self.init = self.work / "harness" / "pretrain" / "model.pt"
        if not self.init.exists():
            _harness_train(pretrain, self.init.parent, threads)

    def reference_seconds(self, epochs):
        args = list(self.stage.args)
        args[args.index("--epochs") + 1] = str(epochs)
        stage = dataclasses.replace(self.stage, args=args)
        shutil.rmtree(reference_runs.stage_dir(self.work / "reference", self.paper, 0, stage.name), ignore_errors=True)
        return reference_runs.run_stage(stage, self.paper, 0, self.repos, self.work / "reference", self.threads,
                                        nice=0)["wall_s"]

    def harness_seconds(self, epochs):
        spec = dataclasses.replace(self.spec, train={**self.spec.train, "epochs": epochs})
        with tempfile.TemporaryDirectory() as out:
            return _harness_train(spec, out, self.threads, self.init)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deephoyer", help="a clone of github.com/yanghr/DeepHoyer (the hoyer recipe)")
    ap.add_argument("--admm", help="a clone of github.com/hyang1990/sparsity_quantization_joint (the admm recipe)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, nargs=2, default=[1, 5], metavar=("E1", "E2"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="versus-reference", help="folder for the starting models (kept) and the runs")
    a = ap.parse_args(argv)
    repos = {"deephoyer": a.deephoyer, "admm": a.admm}
    papers = [p for p in RECIPES if repos[reference_runs.PAPER_REPO[p]]]
    if not papers:
        ap.error("give --deephoyer and/or --admm: your clone of the paper's code")
    e1, e2 = a.epochs
    if not 1 <= e1 < e2:
        ap.error("--epochs E1 E2 needs 1 <= E1 < E2")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""    # both sides on the CPU: the reference scripts take CUDA if they see it
    figures = {}
    for paper in papers:
        recipe = Recipe(paper, repos, a.work, a.threads)
        row = recipe.row
        for r in range(a.rounds):
            per_epoch = {}
            sides = [("reference", recipe.reference_seconds), ("harness", recipe.harness_seconds)]
            for side, seconds in (sides if r % 2 == 0 else sides[::-1]):   # ABBA: a drift biases neither
                walls = [seconds(e) for e in (e1, e2)]
                per_epoch[side] = (walls[1] - walls[0]) / (e2 - e1)
            if min(per_epoch.values()) <= 0:
                sys.exit(f"{paper} round {r + 1}: {per_epoch}: an epoch is lost in the noise of starting a "
                         f"process; give more epochs (--epochs)")
            ratio = per_epoch["reference"] / per_epoch["harness"]
            figures.setdefault(paper, []).append({**per_epoch, "ratio": ratio})
            print(f"{paper} {row} round {r + 1}: reference {per_epoch['reference']:.2f} s an epoch, "
                  f"harness {per_epoch['harness']:.2f} s: {ratio:.2f}x", flush=True)
    print()
    for paper, rounds in figures.items():
        ratios = [f["ratio"] for f in rounds]
        print(f"{paper} {RECIPES[paper]}: {a.threads} thread(s), {len(rounds)} rounds, seconds an epoch: reference "
              f"{_span(f['reference'] for f in rounds)}, harness {_span(f['harness'] for f in rounds)}; "
              f"ratio {min(ratios):.2f}-{max(ratios):.2f}x (median {statistics.median(ratios):.2f}x)")
    print(json.dumps({"machine": os.uname().nodename, "threads": a.threads, "epochs": a.epochs, "figures": figures}))


def _span(xs):
    xs = list(xs)
    return f"{min(xs):.2f}-{max(xs):.2f}"


if __name__ == "__main__":
    main()
