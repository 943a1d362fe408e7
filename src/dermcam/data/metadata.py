"""Per-image metadata a layout carries, as one table for subgroup analyses (``--by``):
HAM10000's metadata CSV, the extra columns of a generic ``labels.csv``, a ``metadata.csv``
beside the ground truth (ISIC 2016, the synthetic benchmark) and any ``image_id`` table a
loader attached to the data set (joined artifact labels). Numbers stay numbers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dermcam.data import generic, ham10000
from dermcam.errors import DermcamError

#: Columns that are not metadata (the sample already carries them).
_NOT_METADATA = {"image_id", "label", "split", "mask"}


def _read(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, encoding="utf-8-sig")
    except Exception as exc:
        raise DermcamError(f"unreadable metadata CSV ({exc})", path) from exc
    df.columns = [str(c).strip() for c in df.columns]
    lower = {c: c.lower() for c in df.columns if c.lower() in _NOT_METADATA}
    df = df.rename(columns=lower)
    if "image_id" not in df.columns:
        raise DermcamError("metadata CSV has no image_id column", path)
    df["image_id"] = df["image_id"].astype(str).str.strip()
    return df


def metadata_table(ds) -> pd.DataFrame | None:
    """``DataFrame`` indexed by ``image_id``, one column per metadata field, or None; the
    first source wins a column name two hold."""
    tables: list[pd.DataFrame] = []
    if ds.layout == "ham10000":
        tables.append(_read(Path(ds.root) / ham10000.METADATA))
    elif ds.layout == "generic":
        tables.append(_read(Path(ds.root) / generic.CSV_NAME))
    if ds.metadata_path is not None:
        tables.append(_read(Path(ds.metadata_path)))
    for value in vars(ds).values():  # tables a loader attached (e.g. artifact labels)
        if isinstance(value, pd.DataFrame) and "image_id" in value.columns:
            tables.append(value.assign(image_id=value["image_id"].astype(str)))
    out = None
    for t in tables:
        t = t.drop(columns=[c for c in t.columns if c in _NOT_METADATA - {"image_id"}])
        t = t.drop_duplicates("image_id").set_index("image_id")
        out = t if out is None else out.join(t[[c for c in t.columns if c not in out.columns]],
                                             how="outer")
    if out is None or not len(out.columns):
        return None
    return out
