"""Heatmap batches computed for a run: which batches (all, a shard's, none when merging),
computed through :class:`CamExplainer` into batch files; one already on disk is kept."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from dermcam import run as runmod
from dermcam.attribution import CamExplainer
from dermcam.augment import preprocess
from dermcam.errors import DermcamError
from dermcam.heatmap_files import batch_file, read_heatmap_batch, write_heatmap_batch

log = logging.getLogger(__name__)


def stack_samples(cache, samples, size: int):
    """``(x (N, 3, S, S) model input, masks (N, S, S) bool, labels (N,) int64)`` of ``samples``."""
    import torch
    items = [cache.get(s, size) for s in samples]
    x = preprocess(torch.from_numpy(np.stack([it["image"] for it in items])))
    masks = np.stack([it["mask"] for it in items]).astype(bool)
    return x, masks, np.array([s.label for s in samples], np.int64)


def batch_starts(run: runmod.Run, out: runmod.Outputs, selection, n_samples: int,
                 batch_size: int, shard, merge: bool) -> list[int]:
    """The first image of each batch to compute: all, one shard's, or none when merging
    (every batch must then be on disk)."""
    starts = list(range(0, n_samples, batch_size))
    if merge:
        missing = [str(p) for sel in selection for st in starts
                   if not (p := batch_file(out.root, sel["model"], sel["method"],
                                            sel["layer"], st)).exists()]
        if missing:
            raise DermcamError(f"cannot merge: {len(missing)} heatmap batch(es) missing, e.g. "
                               f"{missing[0]}; run the missing --shard (same --batch-size)",
                               run.dir)
        return []
    if shard is not None:
        return [st for k, st in enumerate(starts) if k % shard[1] == shard[0]]
    return starts


def _already_saved(path: Path, ids: np.ndarray) -> bool:
    """Whether ``path`` holds exactly ``ids``' heatmaps (a damaged or stale file is logged)."""
    if not path.exists():
        return False
    try:
        if np.array_equal(read_heatmap_batch(path)["ids"], ids):
            return True
    except DermcamError:
        pass
    log.warning("%s: stale heatmap batch, recomputing", path)
    return False


def compute_heatmaps(run: runmod.Run, out: runmod.Outputs, names, selection, samples,
                     starts, batch_size: int, dev, fast: bool, target: str, normalize: str,
                     progress) -> tuple[float, int]:
    """Heatmap batches ``starts`` of every selected model x method x layer under ``out``;
    returns ``(seconds computing CAMs, images computed)``."""
    size, cache = run.image_size, run.cache
    total = len(selection) * len(starts)
    done = n_computed = 0
    t_cam = 0.0
    for model_name in names:
        model, info, payload = run.load_model(model_name)
        model.to(dev)  # CamExplainer.compute moves each batch to the model's device
        threshold = float(payload["threshold"])
        for sel in (s for s in selection if s["model"] == model_name):
            method, lay = sel["method"], sel["layer"]
            with CamExplainer(model, lay, method, fast=fast) as ex:
                for start in starts:
                    path = batch_file(out.root, model_name, method, lay, start)
                    chunk = samples[start:start + batch_size]
                    ids = np.array([s.image_id for s in chunk])
                    if not _already_saved(path, ids):
                        x, _, labels = stack_samples(cache, chunk, size)
                        t1 = time.perf_counter()
                        cb = ex.compute(x, target=target, labels=labels, size=size,
                                        normalize=normalize, threshold=threshold)
                        t_cam += time.perf_counter() - t1
                        n_computed += len(chunk)
                        write_heatmap_batch(path, ids, cb.heatmaps, cb.probs, cb.targets,
                                            labels)
                    done += 1
                    if progress:
                        progress(done, total)
    return t_cam, n_computed
