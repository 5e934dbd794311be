"""What the paper scale of each table costs: GPU hours and wall time, estimated; prints a Markdown table.

    .venv/bin/python bench/paper_scale.py [--papers gmp str ...] [--no-cpu]

For every run of `runs_for(config, scale="paper")` (one seed), plus the shared dense models rows
start from: training samples = epochs x training set, test samples = evaluations x test set,
forward passes per batch from the method (`forward_levels`, e.g. the slimmable sandwich rule), and
MACs of one input from `core.metrics.flops`. GPU throughput is not measured (no GPU here): it is
ASSUMED from one published figure, ResNet-50 v1.5 on one A100 80GB with mixed precision, 2470 img/s
(8 GPUs: 16621 img/s, i.e. 84 % scaling), NVIDIA DeepLearningExamples,
PyTorch/Classification/ConvNets/resnet50v1.5/README.md, "Training performance: NVIDIA DGX A100",
scaled by MACs (a model with half ResNet-50's MACs trains twice as fast), and capped at one
optimizer step per STEP_S (an assumption: small models are bound by per-step overhead, not MACs).
Evaluation runs on rank 0 alone at 3x the training rate (forward only) while the other GPUs wait.
Wall time per table: the longest chain of its DAG (pretrain -> row -> `init:` row, budget transfers),
every independent run on its own GPUs at once. On the CPU the script measures what it can: each
model's training samples/s here, and the ImageNet loader's: FolderLoader's training transforms
(JPEG decode, RandomResizedCrop, flip, normalise) per core on generated 500x375 JPEGs, which with
LOADER_WORKERS workers per GPU caps an ImageNet run's samples/s per GPU (`--no-cpu` skips both and
the cap)."""
import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import methods  # noqa: E402
import models  # noqa: E402
from core.metrics import flops  # noqa: E402
from core.scheduling import LOADER_WORKERS, gpus  # noqa: E402
from harness.tables import load_tables, paper_names  # noqa: E402
from harness.building import _model_kwargs  # noqa: E402

REF_SAMPLES_S = 2470.0        # ResNet-50 v1.5, 1x A100 80GB, AMP (NVIDIA DeepLearningExamples, see above)
REF_SCALING = 16621.0 / (8 * 2470.0)   # per-GPU efficiency with several GPUs (8 GPUs there)
STEP_S = 1e-3                 # assumed least time of one optimizer step (kernel launches, hooks)
EVAL_SPEEDUP = 3.0            # forward only vs forward + backward
# training and test set sizes (the loaders' full sets at paper scale)
SIZES = {"mnist": (60000, 10000), "fashion-mnist": (60000, 10000), "cifar10": (50000, 10000),
         "imagenet": (1281167, 50000)}


def build(spec):
    info = data.dataset_info(spec.dataset, **spec.dataset_args)
    model = models.create_model(spec.model, num_classes=info.num_classes, in_channels=info.shape[0],
                                **_model_kwargs(spec, info))
    return model, info


def macs(spec):
    model, info = build(spec)
    return flops(model, info.shape)["dense_flops"]


def imagenet_decode_per_core(images=48, seconds=4.0):
    """Training-transform samples/s of one core on generated JPEGs of ImageNet's typical size."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms
    info = data.dataset_info("imagenet")
    tf = transforms.Compose([transforms.RandomResizedCrop(info.shape[-1]), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(images):   # smooth noise compresses like a photograph, not like white noise
            img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            path = Path(tmp) / f"{i}.jpg"
            Image.fromarray(img).resize((500, 375), Image.BICUBIC).save(path, quality=90)
            paths.append(path)
        n, t0 = 0, time.process_time()      # CPU time: other jobs on the machine do not count
        while time.process_time() - t0 < seconds:
            tf(Image.open(paths[n % images]).convert("RGB"))
            n += 1
    torch.set_num_threads(THREADS)
    return n / (time.process_time() - t0)


PASSES = {}


def passes(spec, steps_per_epoch):
    key = (spec.method, json.dumps(spec.method_args, sort_keys=True), spec.model, spec.dataset,
           json.dumps(spec.budget, sort_keys=True), spec.train_config.epochs)
    if key not in PASSES:
        PASSES[key] = _passes(spec, steps_per_epoch)
    return PASSES[key]


def _passes(spec, steps_per_epoch):
    """Forward passes per batch late in training (after any warmup), from the method itself."""
    try:
        cls = methods.get_method(spec.method)
        method = cls(cls.Args(**spec.method_args), spec.budget)
        model = method.build(build(spec)[0])
        epochs = spec.train_config.epochs
        late = methods.Progress(max(epochs - 1, 0), max(epochs - 1, 0) * steps_per_epoch, steps_per_epoch, epochs)
        return max(1, len(list(method.forward_levels(model, late))))
    except Exception:    # a method that needs its budget file or init model to build: one pass
        return 1


def cpu_samples_per_s(spec, seconds=3.0, threads=None):
    """Training samples/s of the model on this CPU (random data, batch 32, or 8 at ImageNet size),
    from the process's CPU time over its threads (as if it had the cores to itself)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, info = build(spec)
    batch = 8 if info.shape[-1] > 64 else 32
    x, y = torch.randn(batch, *info.shape), torch.randint(0, info.num_classes, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    n, t0 = 0, time.process_time()
    while n == 0 or time.process_time() - t0 < seconds * torch.get_num_threads():
        step()
        n += batch
    return n / ((time.process_time() - t0) / torch.get_num_threads())


MACS, CPU = {}, {}
THREADS = torch.get_num_threads()


def estimate(paper, ref_macs, loader_cap=None, cpu=True):
    table = load_tables([paper])[paper]
    config_runs = table.specs("paper", [0], "data/downloads", "auto")
    runs = {(r.row, r.seed): r for r in config_runs}
    for r in config_runs:
        if r.init == "pretrain":
            pre = table.pretrain_spec(r)
            runs.setdefault((pre.row, pre.seed), pre)
    cost, mac_cache = {}, MACS
    for row, spec in runs.items():
        cfg = spec.train_config
        n_train, n_test = SIZES[spec.dataset]
        key = (spec.model, spec.dataset, repr(sorted(spec.model_args.items())))
        if key not in mac_cache:
            mac_cache[key] = macs(spec)
        m = mac_cache[key]
        g = max(1, gpus(spec))
        steps = -(-n_train // cfg.batch_size)
        k = passes(spec, steps)
        per_gpu = min(REF_SAMPLES_S * ref_macs / m, cfg.batch_size / g / STEP_S) / k
        if loader_cap and spec.dataset == "imagenet":   # each pass reuses the batch: the loader caps samples
            per_gpu = min(per_gpu, loader_cap / k)
        rate = per_gpu * g * (REF_SCALING if g > 1 else 1.0)
        evals = cfg.epochs if cfg.eval_every == 1 else (cfg.epochs // cfg.eval_every if cfg.eval_every else 0)
        evals = max(evals, 1 if cfg.epochs else 0) + 1     # + the train job's final evaluation
        wall = cfg.epochs * n_train / rate + evals * n_test * k / (EVAL_SPEEDUP * per_gpu)
        cost[row] = dict(spec=spec, gpus=g, wall_s=wall, gpu_h=g * wall / 3600, macs=m, passes=k,
                         samples=cfg.epochs * n_train * k, key=key)

    def finish(row, seen=()):        # the longest chain ending with `row` (a (row, seed) key)
        spec = cost[row]["spec"]
        deps = []
        if spec.init == "pretrain":
            deps.append((table.pretrain_spec(spec).row, spec.seed))
        elif spec.init:
            deps.append((spec.init, spec.seed))
        if spec.budget.get("transfer"):
            deps.append((spec.budget["transfer"], spec.seed))
        return cost[row]["wall_s"] + max((finish(d, seen + (row,)) for d in deps if d in cost and d not in seen),
                                         default=0.0)

    critical = max((finish(r) for r in cost), default=0.0)
    by_model = defaultdict(lambda: {"runs": 0, "gpu_h": 0.0, "samples": 0})
    for c in cost.values():
        b = by_model[c["key"]]
        b["runs"] += 1
        b["gpu_h"] += c["gpu_h"]
        b["samples"] += c["samples"]
        b.update(macs=c["macs"], spec=c["spec"], gpus=c["gpus"])
    if cpu:
        for key, b in by_model.items():
            if key not in CPU:
                CPU[key] = cpu_samples_per_s(b["spec"])
            b["cpu_s"] = CPU[key]
    return dict(paper=paper, runs=len(config_runs), pretrain=len(runs) - len(config_runs),
                gpu_h=sum(c["gpu_h"] for c in cost.values()), critical_h=critical / 3600,
                longest_h=max((c["wall_s"] for c in cost.values()), default=0.0) / 3600,
                max_gpus=max((c["gpus"] for c in cost.values()), default=0), by_model=by_model)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--papers", nargs="*", help="default: every config/papers/*.yaml that loads")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU throughput measurement")
    ap.add_argument("--threads", type=int, help="CPU threads for the measurement (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global THREADS
    THREADS = torch.get_num_threads()
    from models.registry import create_model
    ref_macs = flops(create_model("resnet50", num_classes=1000, in_channels=3), (3, 224, 224))["dense_flops"]
    per_core = None if args.no_cpu else imagenet_decode_per_core()
    cap = per_core * LOADER_WORKERS if per_core else None
    results, skipped = [], []
    for paper in args.papers or paper_names():
        try:
            results.append(estimate(paper, ref_macs, cap, cpu=not args.no_cpu))
        except Exception as err:      # a table being written, or one without a paper scale
            skipped.append(f"{paper} ({type(err).__name__}: {str(err).splitlines()[0][:100]})")
    print(f"Assumed GPU rate: ResNet-50 {REF_SAMPLES_S:.0f} samples/s per A100 at {ref_macs / 1e9:.2f} GMACs "
          f"= {REF_SAMPLES_S * ref_macs / 1e12:.2f} TMAC/s (forward MACs per sample x samples/s), "
          f"scaled by MACs, at most one step per {STEP_S * 1e3:g} ms; "
          f"{REF_SCALING:.2f} per-GPU efficiency on several GPUs; "
          f"CPU: {THREADS} threads measured here.")
    if cap:
        print(f"ImageNet loader (measured here): {per_core:.0f} samples/s per core; x {LOADER_WORKERS} workers = "
              f"at most {cap:.0f} samples/s per GPU for ImageNet rows.")
    print()
    print("| paper | runs (+ shared dense) | GPUs per run | GPU hours | longest run (h) | wall time, all in parallel (h) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['paper']} | {r['runs']} (+{r['pretrain']}) | {r['max_gpus']} max | {r['gpu_h']:,.1f} | "
              f"{r['longest_h']:,.1f} | {r['critical_h']:,.1f} |")
    total = sum(r["gpu_h"] for r in results)
    print(f"| **all** | {sum(r['runs'] + r['pretrain'] for r in results)} | | **{total:,.1f}** | | "
          f"{max((r['critical_h'] for r in results), default=0):,.1f} |\n")
    print("| paper | model | dataset | runs | GMACs/sample | training samples (passes x epochs x set) | "
          "est. A100 samples/s per GPU | GPU hours | measured CPU samples/s (here) | CPU days at that rate |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for (model, dataset, _), b in sorted(r["by_model"].items()):
            per_gpu = min(REF_SAMPLES_S * ref_macs / b["macs"], b["spec"].train_config.batch_size / b["gpus"] / STEP_S)
            if cap and dataset == "imagenet":
                per_gpu = min(per_gpu, cap)
            cpu = b.get("cpu_s")
            cpu_cols = f"{cpu:,.1f} | {b['samples'] / cpu / 86400:,.1f}" if cpu else "- | -"
            print(f"| {r['paper']} | {model} | {dataset} | {b['runs']} | {b['macs'] / 1e9:.4f} | {b['samples']:,.0f} | "
                  f"{per_gpu:,.0f} | {b['gpu_h']:,.1f} | {cpu_cols} |")
    if skipped:
        print("\nnot estimated: " + "; ".join(skipped))


if __name__ == "__main__":
    main()
