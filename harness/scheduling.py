"""Resources a run asks its scheduler for (GPUs, memory, time), derived from its spec so that a
SLURM profile can place each job without per-rule settings."""

BIG_DATA = {"imagenet"}


def gpus(spec):
    """Paper-scale rows ask for their `train.gpus` (default 1); laptop and smoke rows for none."""
    return spec.train.get("gpus", 1) if spec.scale == "paper" else 0


def mem_mb(spec):
    return 64000 if spec.dataset in BIG_DATA else (8000 if spec.scale == "paper" else 2000)


def runtime_min(spec):
    """Wall-time request: generous for paper scale; retries double it."""
    if spec.scale == "smoke":
        return 10
    if spec.scale == "laptop":
        return 60
    return 48 * 60 if spec.dataset in BIG_DATA else 12 * 60
