"""Saved heatmap batches scored against the lesion masks: attention.csv's rows (one per
image x model x method) with the localisation metrics, prediction, artifact and ``--by``
columns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermcam import leakage as lk
from dermcam import run as runmod
from dermcam.audit_set import AuditSet, image_columns
from dermcam.data.describe import read_metadata
from dermcam.data.synth import ARTIFACTS
from dermcam.errors import DermcamError
from dermcam.heatmap_files import heatmap_batches, heatmap_dir, read_heatmap_batch


def attention_table(run: runmod.Run, audit: AuditSet, selection, by=()
                    ) -> tuple[pd.DataFrame, float]:
    """``(attention rows, seconds scoring)`` of the saved heatmaps of ``selection``
    (``[{model, method, layer}]``) for ``audit``'s images: the last batch wins, sorted, with
    the ``--by`` columns, floats rounded to 6 decimals."""
    sc = _Scoring.of(run, audit.ds, audit.samples)
    att, metric_seconds = _scored_batches(audit.out, selection, sc)
    if by:  # the --by columns (metadata, ita from the image), one value per image
        cols = image_columns(audit.ds, [sc.by_id[i] for i in att["image_id"].unique()],
                             sc.cache, sc.size, by)
        att = att.merge(cols[[c for c in cols.columns if c == "image_id"
                              or c not in att.columns]], on="image_id", how="left")
    float_cols = att.select_dtypes("float").columns
    att[float_cols] = att[float_cols].round(6)
    return att, metric_seconds


@dataclass
class _Scoring:
    """What scoring a heatmap batch needs besides the batch."""
    by_id: dict[str, Any]
    size: int
    cache: Any
    thresholds: dict[str, float]
    grouped: bool  # some image has a group (lesion or patient id)
    art_names: tuple[str, ...]
    meta_by_id: pd.DataFrame | None  # metadata.csv (artifact_<name> columns)
    labels_by_id: pd.DataFrame | None  # a joined --artifact-labels FILE (#16)

    @classmethod
    def of(cls, run: runmod.Run, ds, samples) -> _Scoring:
        by_id = {s.image_id: s for s in samples}
        meta = read_metadata(ds)
        labels = getattr(ds, "artifact_labels", None)
        return cls(by_id, run.image_size, run.cache, run.thresholds,
                   any(s.group is not None for s in samples), tuple(ARTIFACTS),
                   meta.set_index("image_id") if meta is not None else None,
                   labels.set_index("image_id") if labels is not None else None)


def _scored_batches(out: runmod.Outputs, selection, sc: _Scoring) -> tuple[pd.DataFrame, float]:
    """``(attention rows, seconds scoring)`` of every saved batch of ``selection``."""
    frames = []
    metric_seconds = 0.0
    for sel in selection:
        name, method, layer = sel["model"], sel["method"], sel["layer"]
        folder = heatmap_dir(out.root, name, method, layer)
        files = heatmap_batches(folder)
        if not files:
            raise DermcamError(f"no saved heatmaps for {name}/{method} at {layer}; run "
                               "'dermcam explain' first", folder)
        for f in files:
            df, seconds = _batch_frame(f, name, method, layer, sc)
            frames.append(df)
            metric_seconds += seconds
    att = pd.concat(frames, ignore_index=True)
    att = att.drop_duplicates(["image_id", "model", "method"], keep="last")
    att = att.sort_values(["model", "method", "image_id"], kind="stable").reset_index(drop=True)
    return att, metric_seconds


def _batch_frame(f: Path, name: str, method: str, layer: str, sc: _Scoring
                 ) -> tuple[pd.DataFrame, float]:
    """``(rows, seconds scoring)`` of one saved heatmap batch against its masks."""
    b = read_heatmap_batch(f)
    ids = [str(i) for i in b["ids"]]
    unknown = [i for i in ids if i not in sc.by_id]
    if unknown:
        raise DermcamError(f"heatmaps for unknown image id(s) {unknown[:3]}", f)
    items = [sc.cache.get(sc.by_id[i], sc.size) for i in ids]
    masks = np.stack([it["mask"] for it in items]).astype(bool)
    cams = b["heatmaps"].astype(np.float32)
    t_m = time.perf_counter()
    values, reasons = lk.score_batch(cams, masks)
    seconds = time.perf_counter() - t_m
    probs = b["probs"].astype(np.float64)
    labels = b["labels"].astype(int)
    pred = (probs >= sc.thresholds[name]).astype(int)
    df = pd.DataFrame({"image_id": ids, "model": name, "method": method,
                       "layer": layer, "label": labels,
                       "prob_malignant": np.round(probs, 6),
                       "pred": pred, "correct": (pred == labels),
                       "cam_target": b["targets"].astype(int)})
    if sc.grouped:
        df["group"] = [sc.by_id[i].group for i in ids]
    for k, v in values.items():
        df[k] = v
    df["reason"] = reasons
    _add_artifact_columns(df, ids, items, cams, sc)
    return df, seconds


def _add_artifact_columns(df: pd.DataFrame, ids: list[str], items, cams: np.ndarray,
                          sc: _Scoring) -> None:
    """Heatmap mass and area per artifact pixel map, artifact presence (metadata.csv) and a
    joined label file's columns, added to ``df`` in place."""
    if all(it["artifacts"] is not None for it in items):
        arts = np.stack([it["artifacts"] for it in items])
        codes = list(range(1, len(sc.art_names) + 1))
        mass = lk.artifact_mass(cams, arts, codes)
        for code, an in zip(codes, sc.art_names):
            df[f"mass_{an}"] = mass[code]
            df[f"area_{an}"] = (arts == code).reshape(len(ids), -1).mean(axis=1)
    if sc.meta_by_id is not None:
        for an in sc.art_names:
            col = f"artifact_{an}"
            if col in sc.meta_by_id.columns:
                df[col] = sc.meta_by_id.loc[ids, col].to_numpy()
    if sc.labels_by_id is not None:
        for col in sc.labels_by_id.columns:
            if col not in df.columns:
                df[col] = sc.labels_by_id.reindex(ids)[col].to_numpy()
