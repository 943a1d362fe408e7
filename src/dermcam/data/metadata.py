"""Per-image metadata a layout carries, as one table for subgroup analyses (``--by``).

What each layout offers (besides ``label`` and ``split``):

- HAM10000: ``lesion_id, dx, dx_type, age, sex, localization`` (``HAM10000_metadata.csv``);
- generic: every column of ``labels.csv`` beyond ``image_id, label, split, mask``
  (``group`` included);
- ISIC 2016 / the synthetic benchmark: ``metadata.csv`` beside the ground truth
  (the generator writes artifact flags and lesion areas there);
- any table a loader attaches to the :class:`~dermcam.data.dataset.DataSet` as a
  pandas DataFrame attribute with an ``image_id`` column (e.g. joined artifact labels).

Columns are read as they are; numbers stay numbers so subgroups can bin them.
"""

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
    """``DataFrame`` indexed by ``image_id``, one column per metadata field, or None.

    Tables from several sources are joined on ``image_id`` (the first source wins a
    column name both hold).
    """
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
        if out is None:
            out = t
        else:
            out = out.join(t[[c for c in t.columns if c not in out.columns]], how="outer")
    if out is None or not len(out.columns):
        return None
    return out
