"""Decode-and-resize cache (decoding big ISIC JPEGs every epoch was the reference study's main
waste): an item per (file, size, mtime) as an ``.npz`` of ``image (S, S, 3)``, ``mask`` and
``artifacts (S, S)``, uint8; :data:`RESIZE_RULES`: ``Resize((S, S))`` or ``Resize(S)`` then
``CenterCrop(S)``, each of image, mask and map cut in its own pixel coordinates."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dermcam.data.dataset import Sample, pool_map
from dermcam.data.images import open_checked, open_image_sized, open_mask
from dermcam.errors import DermcamError
from dermcam.io import atomic_path

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: masks resized with reducing_gap

#: How an image becomes ``S x S``: squashed whole, or its centred square resized.
RESIZE_RULES = ("squash", "shorter-side-crop")


def check_resize(resize: str) -> str:
    """Return ``resize`` if it is one of :data:`RESIZE_RULES`, else raise DermcamError."""
    if resize not in RESIZE_RULES:
        raise DermcamError(f"unknown resize rule {resize!r}; choose one of "
                           f"{', '.join(RESIZE_RULES)}")
    return resize


def default_cache_dir() -> Path:
    env = os.environ.get("DERMCAM_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dermcam"


def _stat_key(path: Path | None) -> str:
    if path is None:
        return "-"
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


@dataclass
class Arrays:
    """A split held as arrays: ``images (N, S, S, 3) uint8``, ``labels (N,) int64``."""

    ids: list[str]
    labels: np.ndarray
    images: np.ndarray
    masks: np.ndarray | None
    artifacts: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)


class ImageCache:
    """Decode/resize cache keyed by (file identity, size, resize rule). ``enabled=False``
    bypasses disk; ``resize`` is one of :data:`RESIZE_RULES`."""

    def __init__(self, cache_dir: str | Path | None = None, enabled: bool = True,
                 resize: str = "squash"):
        self.dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.enabled = enabled
        self.resize = check_resize(resize)
        self.hits = 0
        self.misses = 0

    def key(self, sample: Sample, size: int) -> str:
        parts = [str(CACHE_VERSION), str(size), _stat_key(sample.image_path),
                 _stat_key(sample.mask_path), _stat_key(sample.artifact_path)]
        if self.resize != "squash":  # squash keeps the key it always had: old caches stay valid
            parts.append(self.resize)
        return hashlib.sha1("||".join(parts).encode()).hexdigest()

    def get(self, sample: Sample, size: int) -> dict[str, np.ndarray | None]:
        try:
            key = self.key(sample, size)
        except FileNotFoundError as exc:
            raise DermcamError("file not found", exc.filename) from exc
        path = self.dir / key[:2] / f"{key}.npz"
        if self.enabled and path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    item = {k: z[k] for k in z.files}
                item = {k: item.get(k) for k in ("image", "mask", "artifacts")}
                _check_item(item, sample, size)
                self.hits += 1
                return item
            except Exception as exc:  # a damaged cache entry is rebuilt, not trusted
                log.warning("%s: unreadable cache entry, rebuilding (%s)", path, exc)
        self.misses += 1
        item = decode_sample(sample, size, self.resize)
        if self.enabled:
            try:
                with atomic_path(path) as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez(fh, **{k: v for k, v in item.items() if v is not None})
            except DermcamError as exc:
                log.warning("cache not written: %s", exc)
        return item


def _check_item(item: dict[str, np.ndarray | None], sample: Sample, size: int) -> None:
    """Raise ``ValueError`` unless a cached item has the arrays ``sample`` needs at ``size``."""
    want = {"image": (size, size, 3), "mask": (size, size) if sample.mask_path else None,
            "artifacts": (size, size) if sample.artifact_path else None}
    for k, shape in want.items():
        a = item.get(k)
        got = None if a is None else (a.shape, a.dtype)
        if got != (None if shape is None else (shape, np.dtype(np.uint8))):
            raise ValueError(f"{k}: expected {shape} uint8, got {got}")


def _centre_square(im: Image.Image) -> Image.Image:
    """The largest centred square of ``im`` (``im`` itself when already square)."""
    w, h = im.size
    if w == h:
        return im
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im.crop((left, top, left + side, top + side))


def decode_sample(sample: Sample, size: int, resize: str = "squash"
                  ) -> dict[str, np.ndarray | None]:
    """One sample's image (and mask, artifacts) at ``(size, size)`` by the rule ``resize``."""
    crop = _centre_square if check_resize(resize) == "shorter-side-crop" else (lambda im: im)
    # a drafted JPEG's centred square is cut in its own (scale-free) coordinates
    img, full = open_image_sized(sample.image_path, draft_size=size)
    image = np.asarray(crop(img).resize((size, size), Image.BILINEAR, reducing_gap=2.0),
                       np.uint8)
    mask = artifacts = None
    if sample.mask_path is not None:
        m = open_mask(sample.mask_path)
        if m.size != full:
            raise DermcamError(
                f"mask is {m.size[0]}x{m.size[1]} but its image is {full[0]}x{full[1]}",
                sample.mask_path)
        # reducing_gap: box-reduce first (like the image), then the antialiased resize
        mask = (np.asarray(crop(m).resize((size, size), Image.BILINEAR, reducing_gap=2.0))
                >= 128).astype(np.uint8)
    if sample.artifact_path is not None:
        a = open_checked(sample.artifact_path)  # one-line errors for bad files, like images
        if a.size != full:
            raise DermcamError("artifact map size differs from its image", sample.artifact_path)
        artifacts = np.asarray(crop(a).convert("L").resize((size, size), Image.NEAREST),
                               np.uint8)
    return {"image": image, "mask": mask, "artifacts": artifacts}


def load_arrays(samples: Sequence[Sample], size: int, cache: ImageCache | None = None,
                progress: Callable[[int, int], None] | None = None,
                workers: int | None = None) -> Arrays:
    """Decode (or fetch from the cache) every sample at ``size`` into arrays; ``masks`` and
    ``artifacts`` only when every sample has one."""
    cache = cache or ImageCache(enabled=False)
    n = len(samples)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), np.uint8) if n and all(
        s.mask_path is not None for s in samples) else None
    arts = np.empty((n, size, size), np.uint8) if n and all(
        s.artifact_path is not None for s in samples) else None
    items = pool_map(lambda s: cache.get(s, size), samples, workers or os.cpu_count() or 1,
                     progress)  # PIL decodes without the GIL: every core
    for i, item in enumerate(items):
        images[i] = item["image"]
        if masks is not None:
            masks[i] = item["mask"]
        if arts is not None:
            arts[i] = item["artifacts"]
    labels = np.array([s.label for s in samples], dtype=np.int64)
    return Arrays([s.image_id for s in samples], labels, images, masks, arts)


def warm_cache(samples: Sequence[Sample], size: int, cache: ImageCache,
               progress: Callable[[int, int], None] | None = None,
               workers: int | None = None) -> None:
    """Decode every sample once into the cache (nothing is kept in memory)."""
    for _ in pool_map(lambda s: cache.get(s, size) and None, samples,
                      workers or os.cpu_count() or 1, progress):
        pass
