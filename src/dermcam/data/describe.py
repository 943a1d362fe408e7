"""What ``dermcam info`` reports about a data set."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from dermcam.data.artifact_labels import artifact_columns
from dermcam.data.cache import decode_sample
from dermcam.data.dataset import LABEL_NAMES, class_counts
from dermcam.data.images import read_mask
from dermcam.data.isic2016 import OFFICIAL_COUNTS
from dermcam.data.layouts import load_dataset
from dermcam.data.paths import check_id
from dermcam.errors import DermcamError

log = logging.getLogger(__name__)


def read_metadata(ds):
    """The data set's metadata CSV as a DataFrame (None where it has none); one-line errors
    for an unreadable file, a missing ``image_id`` column or a bad id."""
    if ds.metadata_path is None:
        return None
    try:
        meta = pd.read_csv(ds.metadata_path)
    except Exception as exc:
        raise DermcamError(f"unreadable metadata CSV ({exc})", ds.metadata_path) from exc
    if "image_id" not in meta.columns:
        raise DermcamError("metadata CSV has no image_id column", ds.metadata_path)
    for i in meta["image_id"]:
        check_id(i, ds.metadata_path)
    return meta


def describe(root: str | Path, check: bool = False,
             mask_areas: dict[str, float] | None = None) -> dict[str, Any]:
    """Counts per split and class, mask coverage, sampled image sizes, artifact rates;
    ``mask_areas`` (image id -> lesion share, from a check) fills the mean lesion area
    where the metadata has none."""
    ds = load_dataset(root)
    meta = read_metadata(ds)
    area = dict(zip(meta["image_id"], meta["lesion_area"])) if (
        meta is not None and "lesion_area" in meta.columns) else {}
    out: dict[str, Any] = {"name": ds.name, "layout": ds.layout, "root": str(ds.root),
                           "splits": {}, "notes": list(ds.notes)}
    for split in ("train", "test"):
        samples = ds.split(split)
        areas = [area[s.image_id] for s in samples if s.image_id in area]
        if not areas and mask_areas:
            areas = [mask_areas[s.image_id] for s in samples if s.image_id in mask_areas]
        if check and not areas:
            areas = [float(read_mask(s.mask_path).mean()) for s in samples if s.mask_path]
        out["splits"][split] = {
            "n": len(samples), **class_counts(samples),
            "with_mask": sum(1 for s in samples if s.mask_path is not None),
            "mean_lesion_area": float(np.mean(areas)) if areas else None}
    sizes = Counter()
    probe = ds.samples if check else ds.samples[:: max(1, len(ds.samples) // 20)]
    for s in probe:
        if check:
            decode_sample(s, 32)  # decodes image and mask, checks sizes match
        try:
            with Image.open(s.image_path) as im:
                sizes[f"{im.size[0]}x{im.size[1]}"] += 1
        except Exception as exc:
            raise DermcamError(f"not a readable image ({exc})", s.image_path) from exc
    out["image_sizes"] = ", ".join(f"{k} ({v})" for k, v in sizes.most_common(5))
    cols = artifact_columns(meta)
    if cols:
        cells = {f"{split} {lname}": meta[(meta["split"] == split) & (meta["label"] == label)]
                 for split in ("train", "test") for label, lname in enumerate(LABEL_NAMES)}
        out["artifacts"] = {col.removeprefix("artifact_"): {
            k: float(sel[col].mean()) if len(sel) else 0.0 for k, sel in cells.items()}
            for col in cols}
    if ds.name == "ISIC 2016 Part 3B":
        out["official_check"] = compare_official(out["splits"])[1]
    return out


def compare_official(splits: dict[str, dict[str, Any]]) -> tuple[bool, str]:
    """``(match, sentence)``: per-split class counts (``describe()["splits"]``) against ISIC
    2016's published ones."""
    def fmt(c: dict) -> str:
        return "; ".join(f"{sp} {c[sp][LABEL_NAMES[0]] + c[sp][LABEL_NAMES[1]]} = "
                         f"{c[sp][LABEL_NAMES[0]]} {LABEL_NAMES[0]} + {c[sp][LABEL_NAMES[1]]} "
                         f"{LABEL_NAMES[1]}" for sp in OFFICIAL_COUNTS)
    got = {sp: {k: int(splits.get(sp, {}).get(k, 0)) for k in LABEL_NAMES}
           for sp in OFFICIAL_COUNTS}
    if got == OFFICIAL_COUNTS:
        return True, f"counts match the published ISIC 2016 Part 3B counts ({fmt(got)})"
    return False, (f"counts differ from the published ISIC 2016 Part 3B counts: found "
                   f"{fmt(got)}, published {fmt(OFFICIAL_COUNTS)} (a subset or a modified copy?)")
