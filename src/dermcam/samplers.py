"""The single-device recipe's batches, shared among DDP processes.

``--batch-size`` is the global batch: :class:`EpochSampler` fixes one order per
``(seed, epoch)``, :class:`RankBatches` hands each process its rows of every global batch
(:func:`rank_slice`), and :class:`RankPositions` spreads the validation split. A process
left without a training row gets a repeat that :class:`KeepFlags` marks with weight 0
(:func:`dermcam.objective.global_mean_loss` reads it); validation repeats carry their
position (:class:`WithIndex`) so that :func:`dedupe_by_index` counts each image once.
:func:`process_loaders` builds one process's two DataLoaders from them.
"""

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
    """Shuffled (or class-balanced) order that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before each epoch, so a run resumed from a
    checkpoint sees exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, labels: np.ndarray, seed: int, balanced: bool = False):
        self.n = len(labels)
        self.seed = seed
        self.balanced = balanced
        self.epoch = 0
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
    """Rows ``[lo, hi)`` of an ``n``-row global batch that process ``rank`` of ``world`` takes.

    Contiguous, sizes differing by at most one (as ``np.array_split``); ``lo == hi`` when the
    batch has fewer rows than processes and this one gets none.
    """
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class RankBatches(torch.utils.data.Sampler):
    """One process's share of the single-device recipe's batches (a batch sampler).

    The global order is :class:`EpochSampler`'s; global batch ``k`` is
    ``order[k * batch_size:(k + 1) * batch_size]`` whatever the number of processes, and
    process ``rank`` takes :func:`rank_slice` of it. So ``--batch-size`` is the global batch
    and an epoch has the same optimizer steps on 1 or N devices. A process left without a
    row (a last batch smaller than the number of processes) gets the batch's first image
    again as index ``i + n``, which :class:`KeepFlags` marks with loss weight 0.
    """

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
    """Validation batches of one process: positions ``rank::world`` of the split, padded
    with repeats of the first images so that every process has as many (Lightning's
    DistributedSampler pads the same way); the gathered outputs are de-duplicated by index
    (:func:`dedupe_by_index`), so the metrics count each image once."""

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
    """Keep the first row of each index, ordered by index: gathered validation outputs
    (``(N,)`` each) without the repeats that pad processes to equal length."""
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
    # --batch-size is the global batch: each of the world's processes takes its share of
    # the single-device batches (RankBatches), so N devices run the 1-device recipe.
    order = EpochSampler(ytr, cfg.seed, balanced=cfg.imbalance == "balanced_sampler")
    train_dl = torch.utils.data.DataLoader(
        KeepFlags(train_ds), batch_sampler=RankBatches(order, cfg.batch_size, rank, world),
        **loader_kw)
    val_dl = torch.utils.data.DataLoader(
        WithIndex(val_ds), batch_sampler=RankPositions(len(val_ds), max(cfg.batch_size, 64),
                                                       rank, world), **loader_kw)
    return train_dl, val_dl
