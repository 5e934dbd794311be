"""Batch iterables that hand the trainer (x, y) on the training device.

TensorLoader holds a small data set as one normalised tensor on the device and does augmentation
on whole batches, so the training loop runs no per-sample Python. FolderLoader wraps torchvision's
ImageFolder + DataLoader for data sets too big for memory (ImageNet)."""
import math

import torch


def _epoch_generator(seed, epoch):
    """Shuffling and augmentation depend only on (seed, epoch): a resumed run sees the same batches."""
    return torch.Generator().manual_seed(1_000_003 * seed + epoch)


def random_crop_flip(x, pad_value, generator, pad=4):
    """Random `pad`-pixel translation (crop of a zero-padded image) and horizontal flip per sample."""
    b, c, h, w = x.shape
    padded = pad_value.view(1, c, 1, 1).expand(b, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad:pad + h, pad:pad + w] = x
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class TensorLoader:
    def __init__(self, x, y, info, batch_size, device, seed=0, train=True):
        x = torch.as_tensor(x)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = x.to(device)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
        self.x = (x - mean) / std
        self.y = torch.as_tensor(y).long().to(device)
        self.pad_value = (-mean / std).flatten()
        self.info, self.batch_size, self.seed, self.train = info, batch_size, seed, train
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return math.ceil(len(self.y) / self.batch_size)

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
            xb, yb = self.x[idx], self.y[idx]
            if self.info.augment == "crop_flip":
                xb = random_crop_flip(xb, self.pad_value, g)
            yield xb, yb


class FolderLoader:
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

    def __len__(self):
        return math.ceil(len(self.dataset) / self.batch_size)

    @property
    def num_samples(self):
        return len(self.dataset)

    def __iter__(self):
        loader = torch.utils.data.DataLoader(
            self.dataset, self.batch_size, shuffle=self.train, num_workers=self.workers,
            generator=_epoch_generator(self.seed, self.epoch), pin_memory=self.device.type == "cuda",
            persistent_workers=False)
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
