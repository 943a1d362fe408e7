"""The single-device recipe's batches, shared among DDP processes.

``--batch-size`` is the global batch: each process takes its rows of every global batch, so
N devices run the 1-device recipe; padded repeats are weighted 0 (training) or de-duplicated
by index (validation)."""

from __future__ import annotations

import math

import numpy as np
import torch

from dermcam.config import TrainConfig
from dermcam.device import default_num_workers
from dermcam.errors import DermcamError

__all__ = ["EpochSampler", "KeepFlags", "RankBatches", "RankPositions", "WithIndex",
           "dedupe_by_index", "process_loaders", "rank_slice"]


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled (or class-balanced) order that depends only on ``(seed, epoch)``, so a
    resumed run sees the batches an uninterrupted one would."""

    def __init__(self, labels: np.ndarray, seed: int, balanced: bool = False):
        self.n, self.seed, self.balanced, self.epoch = len(labels), seed, balanced, 0
        counts = np.bincount(labels, minlength=2).astype(np.float64)
        self.weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.balanced:
            idx = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            idx = torch.randperm(self.n, generator=g)
        return iter(idx.tolist())


def rank_slice(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of an ``n``-row global batch for process ``rank`` of ``world``:
    contiguous, sizes differing by at most one; ``lo == hi`` when it gets none."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class RankBatches(torch.utils.data.Sampler):
    """One process's share of the single-device batches (a batch sampler).

    Global batch ``k`` is ``order[k * batch_size:(k + 1) * batch_size]`` whatever the number of
    processes; a process left without a row gets the batch's first image as index ``i + n``,
    which :class:`KeepFlags` weights 0."""

    def __init__(self, order: EpochSampler, batch_size: int, rank: int = 0, world: int = 1):
        if batch_size < 1:
            raise DermcamError(f"--batch-size must be >= 1, got {batch_size}")
        self.order, self.batch_size, self.rank, self.world = order, batch_size, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(self.order.n / self.batch_size)

    def __iter__(self):
        idx = list(self.order)
        for start in range(0, len(idx), self.batch_size):
            chunk = idx[start:start + self.batch_size]
            lo, hi = rank_slice(len(chunk), self.world, self.rank)
            yield chunk[lo:hi] if hi > lo else [chunk[0] + self.order.n]


class RankPositions(torch.utils.data.Sampler):
    """Validation positions ``rank::world`` of the split, padded with repeats so every process
    has as many (as DistributedSampler); :func:`dedupe_by_index` removes them."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world

    def _mine(self) -> list[int]:
        total = math.ceil(self.n / self.world) * self.world
        return [i % self.n for i in range(self.rank, total, self.world)]

    def __len__(self) -> int:
        return math.ceil(len(self._mine()) / self.batch_size)

    def __iter__(self):
        mine = self._mine()
        for start in range(0, len(mine), self.batch_size):
            yield mine[start:start + self.batch_size]


class KeepFlags(torch.utils.data.Dataset):
    """``(image, label, keep)``: index ``i + n`` is item ``i`` again with ``keep = 0``."""

    def __init__(self, ds):
        self.ds, self.n = ds, len(ds)

    def __len__(self) -> int:
        return 2 * self.n

    def __getitem__(self, j):
        img, label = self.ds[j % self.n]
        return img, label, torch.tensor(1.0 if j < self.n else 0.0)


class WithIndex(torch.utils.data.Dataset):
    """``(image, label, index)``: the validation image's position in its split."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, j):
        img, label = self.ds[j]
        return img, label, j


def dedupe_by_index(index: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Keep the first row of each index, ordered by index: ``(N,)`` gathered validation
    outputs without the padding repeats."""
    if index.ndim != 1 or any(v.shape[:1] != index.shape for v in values):
        raise ValueError(f"expected (N,) index and values, got {tuple(index.shape)} and "
                         f"{[tuple(v.shape) for v in values]}")
    idx = index.cpu().numpy()
    _, first = np.unique(idx, return_index=True)  # sorted by index
    keep = torch.as_tensor(first, device=index.device)
    return tuple(v[keep.to(v.device)] for v in values)


def process_loaders(cfg: TrainConfig, trainer, ytr: np.ndarray, train_ds, val_ds):
    """``(train, validation)`` DataLoaders of this process's share of each batch."""
    rank, world = trainer.global_rank, trainer.world_size
    on_gpu = trainer.strategy.root_device.type == "cuda"
    workers = (cfg.num_workers if cfg.num_workers is not None
               else default_num_workers(on_gpu, trainer.num_devices))
    loader_kw = {"num_workers": workers, "pin_memory": on_gpu,
                 "persistent_workers": workers > 0}
    order = EpochSampler(ytr, cfg.seed, balanced=cfg.imbalance == "balanced_sampler")
    train_dl = torch.utils.data.DataLoader(
        KeepFlags(train_ds), batch_sampler=RankBatches(order, cfg.batch_size, rank, world),
        **loader_kw)
    val_dl = torch.utils.data.DataLoader(
        WithIndex(val_ds), batch_sampler=RankPositions(len(val_ds), max(cfg.batch_size, 64),
                                                       rank, world), **loader_kw)
    return train_dl, val_dl
