"""The images a stage audits, opened once (:class:`AuditSet`): the run's own test split, or
another data set's official test split where it has one, else every image (``--data OTHER``,
into ``RUN/external/<name>/``); and the per-image columns (skin tone, ``--by`` metadata)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermcam import run as runmod
from dermcam.data import load_dataset
from dermcam.data.cache import warm_cache
from dermcam.data.cached_split import CachedSplit
from dermcam.data.dataset import read_csv_rows
from dermcam.data.generic import CSV_NAME
from dermcam.data.metadata import metadata_table
from dermcam.errors import DermcamError
from dermcam.skin import ita_category, ita_with_reason

__all__ = ["AuditSet", "SKIN_COLUMNS", "annotate_predictions", "by_columns", "by_names",
           "check_by", "cluster_name", "external_samples", "image_columns", "safe_name",
           "stage_key"]

#: ``--by`` names served by the image itself rather than the metadata.
SKIN_COLUMNS = ("ita", "ita_category")
#: Layouts whose test split is official; the others are scored whole.
_OFFICIAL_SPLIT = ("isic2016", "isic2017")


@dataclass
class AuditSet:
    """The images one stage audits (``samples`` of ``ds``, at the run's ``size`` through its
    ``cache``) and where its outputs go (``out``); ``stage``: its manifest key; ``name``,
    ``which``: the external set's folder and images in words (None for the run's own split)."""

    ds: Any
    samples: list
    size: int
    cache: Any
    out: runmod.Outputs
    stage: str
    name: str | None = None
    which: str | None = None
    labels: str | Path | None = None

    @classmethod
    def open(cls, run: runmod.Run, data: str | Path | None = None, *, name: str | None = None,
             artifacts: str | Path | None = None) -> AuditSet:
        """The run's own test split (``data`` None) or another set's images
        (:func:`external_samples`); ``artifacts``: a label file joined instead."""
        if data is None:
            ds = run.dataset if artifacts is None else load_dataset(run.data_root,
                                                                    artifacts=artifacts)
            return cls(ds, ds.split("test"), run.image_size, run.cache, run.outputs, "",
                       labels=artifacts or run.data.get("artifacts"))
        ds = load_dataset(data, artifacts=artifacts)
        name = safe_name(name or Path(data).resolve().name)
        samples, which = external_samples(ds)
        return cls(ds, samples, run.image_size, run.cache, run.external(name), "", name, which,
                   labels=artifacts)

    def at(self, stage: str, *, masks: bool = False, limit: int | None = None,
           what: str = "attention leakage", missing: str | None = None, warm: bool = False,
           progress=None) -> AuditSet:
        """These images as stage ``stage`` audits them: with a lesion mask only (``masks``), the
        first ``limit``; refused in one line when none is left. ``warm``: fill the cache now."""
        samples = [s for s in self.samples if s.mask_path is not None] if masks else \
            self.samples
        if not samples:
            if missing is None and self.external:
                missing = (f"the external set has no lesion masks among the "
                           f"{len(self.samples)} images scored ({self.which}): {what} needs "
                           "them")
            raise DermcamError(missing or "the data set has no test images" +
                               " with masks" * masks, self.ds.root)
        samples = samples[:limit] if limit else samples
        if warm and self.cache.enabled:
            warm_cache(samples, self.size, self.cache, progress=progress)
        return replace(self, samples=samples, stage=self.key(stage))

    @property
    def external(self) -> bool:
        return self.name is not None

    @cached_property
    def split(self):
        """The samples read through the decode cache (built on first use)."""
        return CachedSplit(self.samples, self.size, self.cache)

    def key(self, stage: str) -> str:
        """The manifest key of ``stage`` on these images."""
        if self.name is None:
            return stage
        return stage_key(self.name, None if stage == "evaluate" else stage)

    @property
    def where(self) -> dict[str, str]:
        """What a stage's manifest entry records of an external set (``{}`` for the own split)."""
        if self.name is None:
            return {}
        return {"data": str(Path(self.ds.root).resolve()),
                "folder": f"{runmod.EXTERNAL_DIR}/{self.name}"}

    def about(self) -> dict[str, Any]:
        """The first fields of a summary's ``external`` block."""
        return {"name": self.out.root.name, "data": self.ds.name,
                "root": str(Path(self.ds.root).resolve()), "layout": self.ds.layout}


def safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    if not name:
        raise DermcamError(f"--name {text!r} holds no usable characters (letters, digits, . _ -)")
    return name


def external_samples(ds) -> tuple[list, str]:
    """The samples scored from ``ds`` and a phrase saying which (module docstring)."""
    if ds.layout in _OFFICIAL_SPLIT and ds.split("test"):
        return ds.split("test"), "its official test split"
    if ds.layout == "generic":
        header = [h.lower() for h in read_csv_rows(Path(ds.root) / CSV_NAME)[0]]
        if "split" in header and ds.split("train") and ds.split("test"):
            return ds.split("test"), "its test split (split column)"
    return list(ds.samples), "every image (no official split)"


def stage_key(name: str, stage: str | None = None) -> str:
    """``external:<name>`` for evaluate (``stage`` None), else ``external:<name>/<stage>``."""
    return f"external:{name}" if stage is None else f"external:{name}/{stage}"


def cluster_name(ds) -> str:
    """What a sample's ``group`` is called in outputs: lesion_id for HAM10000, else group."""
    return "lesion_id" if getattr(ds, "layout", "") == "ham10000" else "group"


def by_columns(by) -> tuple[str, ...]:
    """``"age,sex"`` or ``["age", "sex"]`` -> ``("age", "sex")`` (empty parts dropped)."""
    if not by:
        return ()
    parts = [by] if isinstance(by, str) else list(by)
    return tuple(dict.fromkeys(c.strip() for p in parts for c in str(p).split(",")
                               if c.strip()))


def check_by(ds, by) -> None:
    """Refuse (one line) a ``--by`` column the data set does not carry."""
    meta = metadata_table(ds)
    cols = list(SKIN_COLUMNS) + (list(meta.columns) if meta is not None else [])
    if any(s.group is not None for s in ds.samples) and "group" not in cols:
        cols.append("group")
    for c in by_columns(by):
        if c not in cols:
            raise DermcamError(f"--by {c}: no such column; {ds.name} offers "
                               f"{', '.join(cols)}", ds.root)


def by_names(by) -> list[str]:
    """The ``--by`` columns as analysed (``ita_category`` served by ``ita``), each once."""
    return list(dict.fromkeys("ita" if c in SKIN_COLUMNS else c for c in by_columns(by)))


def annotate_predictions(preds: pd.DataFrame, ds, samples, split, by=()) -> pd.DataFrame:
    """``preds`` with ``ita``, ``ita_category``, ``ita_source`` and each ``by`` column; ITA is
    measured on the cached image, outside the lesion mask where there is one."""
    angle, source = _ita(samples, split.cache, split.size)
    out = preds.copy()
    out["ita"] = out["image_id"].map(angle)
    out["ita_category"] = out["ita"].map(ita_category)
    out["ita_source"] = out["image_id"].map(source)
    wanted = [c for c in by_columns(by) if c not in out.columns]
    if wanted:
        check_by(ds, wanted)
        meta = metadata_table(ds)
        for c in wanted:
            out[c] = out["image_id"].map(meta[c]) if meta is not None else np.nan
    return out


def _ita(samples, cache, size: int) -> tuple[dict[str, float], dict[str, str]]:
    """``({image_id: ITA in degrees or NaN}, {image_id: where it was measured})``."""
    angle, source = {}, {}
    for s in samples:
        item = cache.get(s, size)
        a, why = ita_with_reason(item["image"], item["mask"])
        angle[s.image_id] = round(a, 2) if np.isfinite(a) else np.nan
        source[s.image_id] = (f"undefined: {why}" if why else
                              "outside lesion mask" if item["mask"] is not None else
                              "whole image (no mask)")
    return angle, source


def image_columns(ds, samples, cache, size: int, by) -> pd.DataFrame:
    """One row per sample: ``image_id`` and each ``--by`` column (``ita`` with ``ita_source``)."""
    check_by(ds, by)
    out = pd.DataFrame({"image_id": [s.image_id for s in samples]})
    cols = by_names(by)
    if "ita" in cols:
        angle, source = _ita(samples, cache, size)
        out["ita"] = out["image_id"].map(angle)
        out["ita_source"] = out["image_id"].map(source)
    meta = metadata_table(ds)
    for c in cols:
        if c == "group":
            out[c] = [s.group for s in samples]
        elif c != "ita":
            out[c] = out["image_id"].map(meta[c]) if meta is not None else np.nan
    return out
