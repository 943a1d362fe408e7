"""Heatmap batch files of a run: where they live, writing and reading them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dermcam import run as runmod
from dermcam.errors import DermcamError
from dermcam.io import atomic_path

log = logging.getLogger(__name__)

HEATMAP_DIR = runmod.HEATMAP_DIR  # file names: dermcam.run, the one place they are spelled


def heatmap_dir(root: Path, model: str, method: str, layer: str) -> Path:
    return Path(root) / HEATMAP_DIR / model / method / layer


def batch_file(root: Path, model: str, method: str, layer: str, start: int) -> Path:
    return heatmap_dir(root, model, method, layer) / f"batch_{start:06d}.npz"


def heatmap_batches(folder: Path) -> list[Path]:
    """The heatmap batch files of one model x method x layer folder, in image order."""
    return sorted(Path(folder).glob("batch_*.npz"))


def write_heatmap_batch(path: Path, ids, heatmaps, probs, targets, labels) -> None:
    """Write one batch atomically: ``ids`` (B,), ``heatmaps`` (B, S, S) as float16, ``probs``,
    explained ``targets`` and ``labels`` (B,)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, ids=ids, heatmaps=heatmaps.astype(np.float16), probs=probs,
                            targets=targets, labels=labels)


def read_heatmap_batch(path: Path) -> dict[str, np.ndarray]:
    """One batch (``allow_pickle=False``); a damaged file is a one-line DermcamError."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise DermcamError(f"unreadable heatmap file ({type(exc).__name__}); delete it and "
                           "re-run 'dermcam explain' to recompute it", path) from exc


def load_heatmaps(folder: Path, ids: set[str]) -> dict[str, np.ndarray]:
    """Heatmaps ``(S, S) float32`` of ``ids`` for readers that show what they can (a damaged
    batch is logged and skipped, a missing id left out)."""
    out: dict[str, np.ndarray] = {}
    for f in heatmap_batches(folder):
        if len(out) == len(ids):
            break
        try:
            b = read_heatmap_batch(f)
            bids = [str(i) for i in b["ids"]]
            for k in (k for k, i in enumerate(bids) if i in ids):
                out[bids[k]] = b["heatmaps"][k].astype(np.float32)
        except (DermcamError, KeyError) as exc:  # a damaged batch costs its cards only
            log.warning("%s: unreadable heatmap batch (%s)", f, exc)
    return out


def heatmaps_in_order(root: Path, model: str, method: str, layer: str, ids
                      ) -> dict[str, np.ndarray]:
    """Saved heatmaps ``(N, S, S) float32`` and targets ``(N,) int64`` of ``ids`` in order; a
    damaged batch or missing id is a DermcamError."""
    want = set(map(str, ids))
    heat, targ = {}, {}
    for f in heatmap_batches(heatmap_dir(root, model, method, layer)):
        if len(heat) == len(want):
            break
        b = read_heatmap_batch(f)
        for i, iid in enumerate(b["ids"]):
            if str(iid) in want:
                heat[str(iid)] = b["heatmaps"][i].astype(np.float32)
                targ[str(iid)] = int(b["targets"][i])
    missing = want - heat.keys()
    if missing:
        raise DermcamError(f"no saved heatmap for {sorted(missing)[0]}",
                           heatmap_dir(root, model, method, layer))
    return {"heatmaps": np.stack([heat[str(i)] for i in ids]),
            "targets": np.array([targ[str(i)] for i in ids], np.int64)}


def heatmaps_by_id(root: Path, model: str, method: str, layer: str, image_ids: set[str]
                   ) -> dict[str, np.ndarray]:
    """The saved heatmaps of ``image_ids`` by id."""
    ids = sorted(image_ids)
    if not ids:
        return {}
    got = heatmaps_in_order(root, model, method, layer, ids)
    return dict(zip(ids, got["heatmaps"]))
