"""Batch iterables that hand the trainer (x, y) on the training device.

TensorLoader holds a small data set as one normalised tensor on the device and does augmentation
on whole batches, so the training loop runs no per-sample Python. FolderLoader wraps torchvision's
ImageFolder + DataLoader for data sets too big for memory (ImageNet).

Under DistributedDataParallel (`shard(rank, world)`) every rank draws the same permutation of the
training set (and, for TensorLoader, the same augmentation) for each global batch of `batch_size`
and keeps its contiguous slice (sizes differ by at most one): the ranks together see exactly the
batches of a single process. A last batch with fewer samples than ranks is left out. Test loaders
are not sharded (rank 0 evaluates)."""
import math

import torch


def _epoch_generator(seed, epoch):
    """Shuffling and augmentation depend only on (seed, epoch): a resumed run sees the same batches."""
    return torch.Generator().manual_seed(1_000_003 * seed + epoch)


def shard_bounds(size, rank, world):
    """[lo, hi) of part `rank` of `world` of a batch of `size` samples (as torch.tensor_split)."""
    q, rem = divmod(size, world)
    lo = rank * q + min(rank, rem)
    return lo, lo + q + (rank < rem)


class Sharded:
    """Which part of every training batch this process trains on (rank, world) and the batch plan."""
    rank, world = 0, 1

    def shard(self, rank, world):
        self.rank, self.world = rank, world

    def __len__(self):
        """Optimizer steps per epoch (the same on every rank)."""
        n, b = self.num_samples, self.batch_size
        steps = math.ceil(n / b)
        return steps - 1 if self.train and 0 < n % b < self.world else steps

    def global_size(self, step):
        """Samples of the whole (all ranks') batch `step`: a rank's loss is weighted by its share."""
        return min(self.batch_size, self.num_samples - step * self.batch_size)


def random_crop_flip(x, pad_value, generator, pad=4, part=None):
    """Random `pad`-pixel translation (crop of a zero-padded image) and horizontal flip per sample.
    `part=(size, lo, hi)`: x is samples lo:hi of a batch of `size`; the draws are the whole batch's."""
    b, c, h, w = x.shape
    size, lo, hi = part or (b, 0, b)
    padded = pad_value.view(1, c, 1, 1).expand(b, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad:pad + h, pad:pad + w] = x
    dy = torch.randint(0, 2 * pad + 1, (size,), generator=generator)[lo:hi].to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (size,), generator=generator)[lo:hi].to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    flip = (torch.rand(size, generator=generator)[lo:hi] < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class TensorLoader(Sharded):
    def __init__(self, x, y, info, batch_size, device, seed=0, train=True):
        x = torch.as_tensor(x)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        pixels = x.dtype == torch.uint8
        x = x.to(device=device, dtype=torch.float32, copy=True)   # the one copy, normalised in place
        if pixels:
            x.div_(255)
        mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
        self.x = x.sub_(mean).div_(std)
        self.y = torch.as_tensor(y).long().to(device)
        self.pad_value = (-mean / std).flatten()
        self.info, self.batch_size, self.seed, self.train = info, batch_size, seed, train
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    @property
    def num_samples(self):
        return len(self.y)

    def __iter__(self):
        n = len(self.y)
        if not self.train:
            for i in range(0, n, self.batch_size):
                yield self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]
            return
        g = _epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=g).to(self.x.device)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            size = len(idx)
            if size < self.world:
                break
            lo, hi = shard_bounds(size, self.rank, self.world)
            idx = idx[lo:hi]
            xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)   # [idx]: 3-7x slower on a CPU
            if self.info.augment == "crop_flip":
                xb = random_crop_flip(xb, self.pad_value, g, part=(size, lo, hi))
            yield xb, yb


class FolderLoader(Sharded):
    """ImageNet-style folders through torchvision transforms and a multi-worker DataLoader."""

    def __init__(self, folder, info, batch_size, device, seed, train, workers):
        from torchvision import datasets, transforms
        norm = transforms.Normalize(info.mean, info.std)
        if train:
            tf = [transforms.RandomResizedCrop(info.shape[-1]), transforms.RandomHorizontalFlip()]
        else:
            tf = [transforms.Resize(int(info.shape[-1] * 256 / 224)), transforms.CenterCrop(info.shape[-1])]
        self.dataset = datasets.ImageFolder(folder, transforms.Compose(tf + [transforms.ToTensor(), norm]))
        self.batch_size, self.device, self.seed, self.train = batch_size, device, seed, train
        self.workers, self.epoch = workers, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    @property
    def num_samples(self):
        return len(self.dataset)

    def __iter__(self):
        n, b = len(self.dataset), self.batch_size
        if self.train:  # the same permutation on every rank; each keeps its slice of every batch
            order = torch.randperm(n, generator=_epoch_generator(self.seed, self.epoch))
            batches = [batch[slice(*shard_bounds(len(batch), self.rank, self.world))].tolist()
                       for batch in order.split(b) if len(batch) >= self.world]
        else:
            batches = [list(range(i, min(i + b, n))) for i in range(0, n, b)]
        # the workers' random crops and flips: seeded per (seed, epoch, rank)
        workers_seed = torch.Generator().manual_seed(1_000_003 * (1_000_003 * self.seed + self.epoch) + self.rank)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.workers, generator=workers_seed,
            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
