"""Command line: `python -m harness <stage> ...`; Snakemake rules call these, and so can you.

  train     --spec JSON --out DIR [--init MODEL.pt] [--evaluate metrics.json] [--data-dir D] [--device X]
                                                     train one run (resumes from DIR/checkpoint.pt),
                                                     then evaluate it (what the Snakemake rule does);
                                                     one process per run folder (DIR/.lock)
  evaluate  --spec JSON --model MODEL.pt --out metrics.json   evaluate a trained model again
  aggregate --out tables.csv [--papers-dir config/papers] METRICS.json...
  runs      [--scale S] [--papers-dir DIR]             list the runs the config would make
  checks    --table tables.csv --out checks.csv [--scale S]   regression checks; exit 1 if one fails
  compare   RESULTS_A RESULTS_B [--tolerance T]       what changed between two result sets
  figures   --table tables.csv --scale S --out DIR [--only PAPER|overview]
  parity    --table tables.csv --scale S [--out parity.csv] [--figures DIR]   the reference checks alone
  leaderboard --table tables.csv --out leaderboard.csv [--scale S]   every method at the same targets
"""
import argparse
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m harness", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--spec", required=True, help="resolved run spec as JSON, or @file")
    t.add_argument("--out", required=True)
    t.add_argument("--init", help="model.pt of the dense model to start from")
    t.add_argument("--threads", type=int)
    t.add_argument("--budget-file", help="budget.csv of the run whose layer-wise budget to train with")
    t.add_argument("--evaluate", metavar="METRICS_JSON", help="then evaluate the trained model into this file")
    e = sub.add_parser("evaluate")
    e.add_argument("--spec", required=True)
    e.add_argument("--model", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--threads", type=int)
    for p in (t, e):   # where and on what: not settings of the result, so not in the rule's --spec
        p.add_argument("--data-dir", help="data folder (default: the spec's data_dir)")
        p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (default: the spec's device)")
    a = sub.add_parser("aggregate")
    a.add_argument("--out", required=True)
    a.add_argument("--scale", help="print the summary of this scale")
    a.add_argument("--papers-dir", help="read published values and notes from these tables (default: "
                                        "what each metrics.json recorded)")
    a.add_argument("metrics", nargs="*")
    r = sub.add_parser("runs")
    r.add_argument("--scale")
    r.add_argument("--configfile", default="config/config.yaml")
    r.add_argument("--papers-dir", default="config/papers", help="where the paper tables are read")
    c = sub.add_parser("checks")
    c.add_argument("--table", default="results/tables.csv")
    c.add_argument("--out", default="results/checks.csv")
    c.add_argument("--scale", help="fail only on this scale's checks (default: any)")
    c.add_argument("--margin", type=float,
                   help="accuracy points a dense row may trail its pruned rows by (default: harness/checks.py DENSE_MARGIN)")
    c.add_argument("--papers-dir", default="config/papers", help="where default_tolerance is read")
    d = sub.add_parser("compare")
    d.add_argument("results_a", help="a results folder (or its tables.csv)")
    d.add_argument("results_b")
    d.add_argument("--tolerance", type=float, default=0.1,
                   help="top1 points, sparsity points, %% of flops (default 0.1)")
    f = sub.add_parser("figures")
    f.add_argument("--table", default="results/tables.csv")
    f.add_argument("--scale", required=True)
    f.add_argument("--out", required=True, help="folder, e.g. results/figures/<scale>")
    f.add_argument("--only", help="one paper, or 'overview' (default: all)")
    f.add_argument("--papers-dir", default="config/papers", help="where the papers' titles are read")
    p = sub.add_parser("parity")
    p.add_argument("--table", required=True, help="tables.csv of the parity runs (several seeds)")
    p.add_argument("--out", default="results/parity.csv")
    p.add_argument("--figures", help="folder for one side-by-side figure per paper")
    p.add_argument("--scale", required=True)
    p.add_argument("--papers-dir", default="config/papers", help="where the tables' reference sections are read")
    b = sub.add_parser("leaderboard")
    b.add_argument("--table", default="results/tables.csv")
    b.add_argument("--out", default="results/leaderboard.csv")
    b.add_argument("--scale", help="print this scale's summary (the csv has every scale)")
    b.add_argument("--papers-dir", default="config/papers", help="where leaderboard.yaml is read")
    args = ap.parse_args(argv)

    from core.errors import HarnessError
    try:
        return _dispatch(args)
    except HarnessError as err:  # the user's to fix: one line; anything else keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 1


def _spec(text, args=None):
    """A run spec from JSON (or @file: a run's spec.json), checked as the tables check a row, with
    --data-dir and --device where given."""
    import json
    from dataclasses import MISSING, fields, replace

    from core.errors import HarnessError
    from core.registry import suggest
    from core.spec import RunSpec, check_field_types
    from harness.tables import check_settings
    source = "--spec"
    if text.startswith("@"):
        source = f"--spec {text}"
        try:
            text = open(text[1:]).read()
        except OSError as err:
            raise HarnessError(f"{source}: cannot read {text[1:]} ({err.strerror})") from None
    try:
        given = json.loads(text)
    except json.JSONDecodeError as err:
        raise HarnessError(f"{source}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(given, dict):
        raise HarnessError(f"{source}: should be a JSON object of a run's settings, as in a run's spec.json")
    known = [f.name for f in fields(RunSpec)]
    for key in given:
        if key not in known:
            raise HarnessError(f"{source}: unknown key {key!r}; {suggest(key, known)}")
    missing = [f.name for f in fields(RunSpec) if f.name not in given
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise HarnessError(f"{source}: missing {', '.join(missing)}")
    spec = RunSpec(**given)
    where = {k: v for k, v in (("data_dir", getattr(args, "data_dir", None)),
                               ("device", getattr(args, "device", None))) if v}
    spec = replace(spec, **where)
    try:
        check_field_types(spec, "spec")
        check_settings(spec.method, spec.model, spec.dataset, spec.train, spec.method_args, spec.model_args,
                       spec.dataset_args, spec.budget, spec.init)
    except (ValueError, KeyError) as err:
        raise HarnessError(f"{source}: {err.args[0] if err.args else err}") from None
    return spec


def _evaluate(spec, model, out, threads, trained=None):
    from harness.evaluate import evaluate
    for p in evaluate(spec, model, out, threads, trained)["points"]:
        print(f"level {p['level']}: top1 {p['top1']:.2f} sparsity {p['sparsity']:.4f} "
              f"MFLOPs {p['flops'] / 1e6:.3f}", flush=True)


def _dispatch(args):
    if args.cmd == "train":
        from contextlib import nullcontext
        from core.errors import HarnessError
        from core.locks import run_lock
        from harness.distributed import distributed_env
        from harness.trainer import Trainer
        from models import TORCHVISION_INIT
        spec = _spec(args.spec, args)
        if spec.init not in (None, TORCHVISION_INIT) and not args.init:
            raise HarnessError(f"--spec starts from {spec.init!r} (its init): give that model's model.pt with --init")
        rank0 = distributed_env()[0] == 0           # under DDP, rank 0 alone locks, writes and evaluates
        with run_lock(args.out) if rank0 else nullcontext():
            # test_at_end: the same on every rank (testing is a collective)
            trainer = Trainer(spec, args.out, args.init, args.threads, log=lambda m: print(m, flush=True),
                              budget_file=args.budget_file, test_at_end=not args.evaluate)
            trainer.run()
            if args.evaluate and rank0:    # the model in memory: no second load of the data and model
                _evaluate(spec, f"{args.out}/model.pt", args.evaluate, args.threads, trainer)
    elif args.cmd == "evaluate":
        _evaluate(_spec(args.spec, args), args.model, args.out, args.threads)
    elif args.cmd == "aggregate":
        from harness.aggregate import aggregate, summary
        table = aggregate(args.metrics, args.out, args.papers_dir)
        print(summary(table, args.scale))
    elif args.cmd == "runs":
        import yaml
        from core.errors import HarnessError
        from harness.tables import runs_for
        try:
            config = yaml.safe_load(open(args.configfile))
        except (OSError, yaml.YAMLError) as err:
            raise HarnessError(f"--configfile {args.configfile}: unreadable ({type(err).__name__}); "
                               f"see config/config.yaml") from None
        needed = ("scale", "papers", "seeds", "data_dir", "device")
        if not isinstance(config, dict) or any(k not in config for k in needed):
            raise HarnessError(f"--configfile {args.configfile}: needs {', '.join(needed)} (see config/config.yaml)")
        for spec in runs_for(config, args.papers_dir, scale=args.scale)[1]:
            print(f"{spec.scale}/{spec.paper}/{spec.row}/seed{spec.seed}: {spec.method} {spec.model} "
                  f"{spec.dataset} budget={spec.budget}")
    elif args.cmd == "checks":
        from harness.checks import check
        check(args.table, args.out, args.papers_dir, args.scale,
              **({"margin": args.margin} if args.margin is not None else {}))
    elif args.cmd == "compare":
        from harness.compare import compare_results
        return 0 if compare_results(args.results_a, args.results_b, args.tolerance) else 1
    elif args.cmd == "figures":
        from core.results import paper_settings, read_results
        from harness.figures import figures
        titles, references = paper_settings("title", args.papers_dir), paper_settings("reference", args.papers_dir)
        for png in figures(read_results(args.table), args.scale, args.out, args.only, titles, references):
            print(png)
    elif args.cmd == "parity":
        from harness.checks import parity
        from core.results import paper_settings, read_results
        from harness.figures import parity_figures
        table, references = read_results(args.table), paper_settings("reference", args.papers_dir)
        parity(table, args.out, references, args.scale)
        for png in parity_figures(table, references, args.scale, args.figures) if args.figures else []:
            print(png)
    elif args.cmd == "leaderboard":
        from harness.leaderboard import summary, write_leaderboard
        print(summary(write_leaderboard(args.table, args.out, args.papers_dir), args.scale))
    return 0


def _main_process():
    """`python -m harness`: train and evaluate run in a fork of the warm server where one can start
    (harness/warm.py), otherwise here."""
    from harness import warm
    argv = sys.argv[1:]
    code = warm.run(argv) if warm.wanted(argv) else None
    if code is None:
        if argv and argv[0] in warm.COMMANDS:   # the torch jobs (tables and figures gain nothing)
            warm.reuse_freed_memory()
        code = main(argv)
    return code


if __name__ == "__main__":
    sys.exit(_main_process())
