"""Per-image artifact annotations a user holds (e.g. Bissoto et al.'s ``isic_bias.csv``),
joined to any layout by image id; each all-0/1 column becomes an ``artifact_<name>`` flag
that ``--by``, the attention summary and the probes split by (format: docs/data.md)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from dermcam.data.paths import check_id
from dermcam.errors import DermcamError

__all__ = ["PREFIX", "KNOWN", "read_artifact_labels", "attach", "artifact_columns", "join_note",
           "split_by_presence"]

PREFIX = "artifact_"
#: The artifact columns of Bissoto et al.'s isic_bias.csv.
KNOWN = ("dark_corner", "hair", "gel_border", "gel_bubble", "ruler", "ink", "patches")
#: Columns that are never artifact flags.
_NOT_FLAGS = {"label", "label_string", "diagnosis", "split", "mask"}
_ID_NAMES = ("image", "image_id", "image_name", "isic_id", "name")
_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def _strip_ext(name: str) -> str:
    return name[: -len(ext)] if (ext := next((e for e in _EXTS if name.lower().endswith(e)),
                                             "")) else name


def read_artifact_labels(path: str | Path) -> pd.DataFrame:
    """``DataFrame`` with ``image_id`` and one 0/1 ``artifact_<name>`` column per flag;
    one-line errors naming the file, line and image id for a bad row."""
    path = Path(path)
    if not path.is_file():
        raise DermcamError("artifact label file not found", path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DermcamError(f"not a UTF-8 text table ({exc.reason})", path) from exc
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    delim = ";" if first.count(";") >= first.count(",") else ","
    rows = [(i, [c.strip() for c in r]) for i, r in
            enumerate(csv.reader(io.StringIO("\n".join(lines)), delimiter=delim), start=1)
            if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise DermcamError("no header and rows found (expected e.g. "
                           "image;dark_corner;hair;...;ruler;ink;patches)", path)
    _, header = rows[0]
    lower = [h.lower() for h in header]
    id_col = next((lower.index(n) for n in _ID_NAMES if n in lower), 0)
    cand = [k for k, h in enumerate(lower) if k != id_col and h and h not in _NOT_FLAGS]
    ids: list[str] = []
    values: dict[int, list[int | None]] = {k: [] for k in cand}
    flags = set(cand)
    seen: dict[str, int] = {}
    for line, cells in rows[1:]:
        if len(cells) < len(header):
            raise DermcamError(f"line {line}: {len(cells)} fields, the header has "
                               f"{len(header)}", path)
        image_id = check_id(_strip_ext(cells[id_col]), path)
        if image_id in seen:
            raise DermcamError(f"line {line}: image {image_id} is listed twice (first on line "
                               f"{seen[image_id]})", path)
        seen[image_id] = line
        ids.append(image_id)
        for k in cand:
            v = cells[k]
            values[k].append(int(float(v)) if v in ("0", "1", "0.0", "1.0") else None)
            if v not in ("0", "1", "0.0", "1.0") and header[k].lower() in KNOWN:
                raise DermcamError(f"line {line}: image {image_id}: {header[k]} is {v!r}, "
                                   "expected 0 or 1", path)
            if values[k][-1] is None:
                flags.discard(k)  # not a 0/1 column: not an artifact flag
    if not flags:
        raise DermcamError("no 0/1 artifact columns found", path)
    out = pd.DataFrame({"image_id": ids})
    for k in (k for k in cand if k in flags):
        name = header[k].lower().removeprefix(PREFIX).replace(" ", "_")
        out[PREFIX + name] = pd.array(values[k], dtype="Int64")
    return out


def artifact_columns(table: pd.DataFrame | None) -> list[str]:
    """The ``artifact_<name>`` columns of a table (none for None)."""
    return [] if table is None else [c for c in table.columns if c.startswith(PREFIX)]


def attach(ds, path: str | Path):
    """Join the labels in ``path`` to ``ds`` as ``ds.artifact_labels`` (its images only),
    noting the matches, unknown ids and images without a row; returns ``ds``."""
    table = read_artifact_labels(path)
    have = {s.image_id for s in ds.samples}
    known = table["image_id"].isin(have)
    if not known.any():
        raise DermcamError(f"none of the {len(table)} image ids (e.g. "
                           f"{table['image_id'].iloc[0]}) is an image of {ds.name}", path)
    unknown = table.loc[~known, "image_id"].tolist()
    ds.artifact_labels = table[known].reset_index(drop=True)
    n_missing = len(have) - int(known.sum())
    note = (f"artifact labels from {Path(path).name}: {int(known.sum())} of {len(have)} "
            f"images ({', '.join(c.removeprefix(PREFIX) for c in artifact_columns(table))})")
    if unknown:
        note += (f"; {len(unknown)} id(s) in the file are not in the data set (e.g. "
                 f"{', '.join(unknown[:3])})")
    if n_missing:
        note += f"; {n_missing} image(s) have no row (their flags are missing)"
    ds.notes.append(note)
    return ds


def join_note(ds) -> str:
    """The note :func:`attach` left on ``ds`` (empty when no labels were joined)."""
    return next((n for n in reversed(ds.notes) if n.startswith("artifact labels from ")), "")


def split_by_presence(df: pd.DataFrame, columns, metrics) -> list[dict]:
    """Each metric on images with versus without each artifact: per column and metric,
    ``n`` and mean on each side (NaN values and missing flags left out), ``diff`` = with -
    without and a two-sided Mann-Whitney ``p`` (NaN when a side is empty)."""
    from scipy.stats import mannwhitneyu
    rows = []
    for col in columns:
        flag = pd.to_numeric(df[col], errors="coerce")
        for metric in metrics:
            v = pd.to_numeric(df[metric], errors="coerce")
            a, b = v[flag == 1].dropna(), v[flag == 0].dropna()
            both = len(a) and len(b)
            nan = float("nan")
            rows.append({"artifact": col.removeprefix(PREFIX), "metric": metric,
                         "n_with": int(len(a)), "n_without": int(len(b)),
                         "mean_with": float(a.mean()) if len(a) else nan,
                         "mean_without": float(b.mean()) if len(b) else nan,
                         "diff": float(a.mean() - b.mean()) if both else nan,
                         "p": float(mannwhitneyu(a, b).pvalue) if both else nan})
    return rows
