"""Resources a run asks its scheduler for (GPUs, cores, memory, time), derived from its spec so that
a SLURM profile can place each job without per-rule settings, and how its training is launched."""

BIG_DATA = {"imagenet"}
LOADER_WORKERS = 4      # data-loading worker processes per training process for BIG_DATA (FolderLoader)


def gpus(spec):
    """Paper-scale rows ask for their `train.gpus` (default 1); laptop and smoke rows for none."""
    return spec.train.get("gpus", 1) if spec.scale == "paper" else 0


def processes(spec, gpus_granted=None):
    """Training processes (DDP ranks) of a run: `train.processes` where set (a row, or a test, that
    trains on CPU with gloo), else one per GPU the job gets: `gpus_granted` (the rule's `gpu`
    resource, so `--set-resources train:gpu=2` runs a 4-GPU row on 2) or the row's request."""
    n = spec.train.get("processes", 0)
    if n:
        return n
    return max(1, gpus(spec) if gpus_granted is None else gpus_granted)


def cpus_per_task(spec, threads=1):
    """Cores per job of the run's training processes: for BIG_DATA one per process plus its
    LOADER_WORKERS (5 per GPU); data held on the device needs one core per process; never fewer
    than the rule's threads."""
    n = processes(spec)
    return max(threads, n * (1 + LOADER_WORKERS) if spec.dataset in BIG_DATA else n)


def launcher(python, nproc):
    """The command that runs `-m harness ...` with `nproc` processes. Several: under torchrun
    (`python -m torch.distributed.run` is torchrun's own entry point, and names the interpreter so
    that the venv's torch runs on compute nodes whose PATH lacks .venv/bin). `--standalone` starts
    a rendezvous on a free local port, so jobs sharing a node do not collide; torchrun sets RANK,
    LOCAL_RANK and WORLD_SIZE, from which the trainer sets up DistributedDataParallel. One: plain."""
    return f"{python} {launch_args(nproc)}"


def launch_args(nproc):
    """`launcher` without the interpreter (the train rule's param: where Python lives decides no result)."""
    if nproc <= 1:
        return "-m harness"
    return f"-m torch.distributed.run --standalone --nproc_per_node={nproc} -m harness"


def mem_mb(spec):
    return 64000 if spec.dataset in BIG_DATA else (8000 if spec.scale == "paper" else 2000)


def runtime_min(spec):
    """Wall-time request: generous for paper scale; retries double it."""
    if spec.scale == "smoke":
        return 10
    if spec.scale == "laptop":
        return 60
    return 48 * 60 if spec.dataset in BIG_DATA else 12 * 60


def chain_lengths(parents):
    """{run: the number of runs in the longest chain that starts at it}, from {run: the runs it
    starts from}. As a job priority it starts a long chain (ADMM's pretrain -> 160x -> 533x -> 1975x
    -> finetune) before single runs, which then fill the other cores, instead of leaving it to run
    alone at the end with the other cores idle."""
    children = {}
    for run, ps in parents.items():
        for parent in ps:
            children.setdefault(parent, []).append(run)
    lengths = {}

    def length(run):
        if run not in lengths:
            lengths[run] = 1 + max((length(c) for c in children.get(run, ())), default=0)
        return lengths[run]
    for run in set(parents) | set(children):
        length(run)
    return lengths
