"""Command line: `python -m harness <stage> ...`; Snakemake rules call these, and so can you.

  train     --spec JSON --out DIR [--init MODEL.pt]   train one run (resumes from DIR/checkpoint.pt)
  evaluate  --spec JSON --model MODEL.pt --out metrics.json
  aggregate --out tables.csv METRICS.json...
  runs      [--scale S]                                list the runs the config would make
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
    e = sub.add_parser("evaluate")
    e.add_argument("--spec", required=True)
    e.add_argument("--model", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--threads", type=int)
    a = sub.add_parser("aggregate")
    a.add_argument("--out", required=True)
    a.add_argument("--scale", help="print the summary of this scale")
    a.add_argument("metrics", nargs="*")
    r = sub.add_parser("runs")
    r.add_argument("--scale")
    r.add_argument("--configfile", default="config/config.yaml")
    args = ap.parse_args(argv)

    from harness.errors import HarnessError
    try:
        return _dispatch(args)
    except HarnessError as err:  # the user's to fix: one line; anything else keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 1


def _spec(text):
    from harness.spec import RunSpec
    if text.startswith("@"):
        text = open(text[1:]).read()
    return RunSpec.from_json(text)


def _dispatch(args):
    if args.cmd == "train":
        from harness.trainer import Trainer
        Trainer(_spec(args.spec), args.out, args.init, args.threads, log=lambda m: print(m, flush=True)).run()
    elif args.cmd == "evaluate":
        from harness.evaluate import evaluate
        res = evaluate(_spec(args.spec), args.model, args.out, args.threads)
        for p in res["points"]:
            print(f"level {p['level']}: top1 {p['top1']:.2f} sparsity {p['sparsity']:.4f} "
                  f"MFLOPs {p['flops'] / 1e6:.3f}")
    elif args.cmd == "aggregate":
        from harness.aggregate import aggregate, summary
        table = aggregate(args.metrics, args.out)
        print(summary(table, args.scale))
    elif args.cmd == "runs":
        import yaml
        from harness.tables import runs_for
        config = yaml.safe_load(open(args.configfile))
        for spec in runs_for(config, scale=args.scale)[1]:
            print(f"{spec.scale}/{spec.paper}/{spec.row}/seed{spec.seed}: {spec.method} {spec.model} "
                  f"{spec.dataset} budget={spec.budget}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
