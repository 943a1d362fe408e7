"""A split read through the decode cache, as torch Datasets (its own module: torch)."""

from __future__ import annotations

import numpy as np
import torch

from dermcam.data.cache import load_arrays

__all__ = ["CachedSplit"]


class CachedSplit:
    """``dataset(idx)``: a torch Dataset of ``(uint8 (S, S, 3), label)``, each item read from
    the cache as asked (memory does not grow with the images) until :meth:`hold_in_memory`,
    then from one ``(N, S, S, 3)`` array (shared copy-on-write with forked workers)."""

    def __init__(self, samples, size: int, cache):
        self.samples = list(samples)
        self.size = size
        self.cache = cache
        self.labels = np.array([s.label for s in self.samples], dtype=np.int64)
        self.images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def image_bytes(self) -> int:
        """Bytes the split's decoded images take in memory."""
        return len(self.samples) * self.size * self.size * 3

    def hold_in_memory(self, progress=None) -> None:
        """Read every image once (decoding, into the cache, what it lacks) and keep them."""
        self.images = load_arrays(self.samples, self.size, self.cache,
                                  progress=progress).images

    def dataset(self, idx) -> torch.utils.data.Dataset:
        idx = np.asarray(idx, dtype=np.int64)
        if self.images is not None:
            return _HeldImages(self.images, idx, self.labels[idx])
        return _CachedImages([self.samples[i] for i in idx], self.labels[idx], self.size,
                             self.cache)


class _HeldImages(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, idx: np.ndarray, labels: np.ndarray):
        self.images, self.idx, self.labels = images, idx, labels

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[self.idx[i]]), int(self.labels[i])


class _CachedImages(torch.utils.data.Dataset):
    def __init__(self, samples, labels: np.ndarray, size: int, cache):
        self.samples, self.labels, self.size, self.cache = samples, labels, size, cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        img = self.cache.get(self.samples[i], self.size)["image"]
        return torch.from_numpy(np.ascontiguousarray(img)), int(self.labels[i])
