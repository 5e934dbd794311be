"""Several processes training one run (DistributedDataParallel): which process this is, its
device, the process group, the wrapped model and the digest that checks the ranks stay alike.

The train rule starts one process per GPU under torchrun (core/scheduling.py: launcher), which
sets RANK, LOCAL_RANK and WORLD_SIZE; see harness/trainer.py for what each rank does."""
import datetime
import os
from pathlib import Path

import torch
import torch.distributed as dist

from harness.building import select_device, state_digest
from core.errors import HarnessError


def distributed_env():
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) for a single process."""
    return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))


def rank_device(name, local_rank, world):
    """A DDP process's device: cuda:LOCAL_RANK where CUDA is used, else the CPU (gloo)."""
    device = select_device(name)
    if device.type != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise HarnessError(f"this run trains with {world} processes, one per GPU, but {torch.cuda.device_count()} "
                           f"GPU(s) are visible; give the job {world} GPUs, or fewer processes with "
                           f"--set-resources train:gpu=N (the global batch stays train.batch_size)")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def start_distributed(device):
    """The process group of one run: NCCL between GPUs, gloo on the CPU. The timeout leaves time
    for rank 0 to evaluate and write a checkpoint while the others wait."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=60))


def distributed(model, device, world):
    """DistributedDataParallel for several processes (it averages gradients in backward); hooks,
    metrics and checkpoints keep using the unwrapped model."""
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def summed(device, *values):
    """Each value summed over the ranks (as float64 tensors)."""
    t = torch.stack([torch.as_tensor(v, device=device).double() for v in values])
    dist.all_reduce(t)
    return t.unbind()


def from_rank0(value):
    """Rank 0's `value` on every rank (any picklable object)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_replicas(model, world, epoch):
    """DDP keeps the ranks' weights equal only if every method hook acts alike on every rank:
    compare their digests after each epoch and stop with an error where they differ. Buffers
    that forward passes update on each rank's own data (norm statistics) are rank 0's first,
    as DDP makes them before every forward pass."""
    for buffer in model.buffers():
        sent = buffer.to(torch.uint8) if buffer.dtype == torch.bool else buffer   # gloo sends no bool
        dist.broadcast(sent, src=0)
        if sent is not buffer:
            buffer.copy_(sent.bool())
    digests = [None] * world
    dist.all_gather_object(digests, state_digest(model.state_dict()))
    if len(set(digests)) > 1:
        raise HarnessError(f"the {world} DDP processes hold different weights after epoch {epoch} "
                           f"({', '.join(digests)}): a method hook acts differently per rank")


def finish(model, rank):
    """Every rank ends once rank 0's files are written. HARNESS_RANK_DIGESTS (tests): a folder where
    each rank writes the digest of its final weights."""
    digests = os.environ.get("HARNESS_RANK_DIGESTS")
    if digests:
        Path(digests, f"rank{rank}.txt").write_text(state_digest(model.state_dict()))
    dist.barrier()
    dist.destroy_process_group()
