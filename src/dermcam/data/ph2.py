"""PH2 (Hospital Pedro Hispano, 200 dermoscopic images) in its published layout::

    PH2Dataset/PH2_dataset.txt
    PH2Dataset/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp
    PH2Dataset/PH2 Dataset images/IMD002/IMD002_lesion/IMD002_lesion.bmp

The root may be ``PH2Dataset`` or the folder holding it. Label 1 = melanoma (clinical
diagnosis 2; 0 and 1 are common and atypical nevi). :func:`read_table` reads the table's
three forms in circulation. No official split: a seeded stratified 20 % is the test split."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from dermcam.data.dataset import DataSet, Sample, check_duplicates, existing
from dermcam.data.paths import check_id, safe_join
from dermcam.data.splits import TEST_FRACTION, holdout
from dermcam.errors import DermcamError

FOLDER = "PH2Dataset"
TABLE = "PH2_dataset.txt"
TABLE_XLSX = "PH2_dataset.xlsx"
IMAGES = "PH2 Dataset images"
CLINICAL = {0: "common nevus", 1: "atypical nevus", 2: "melanoma"}
MALIGNANT_CODES = (2,)
#: Published counts by clinical diagnosis.
OFFICIAL = {"common nevus": 80, "atypical nevus": 80, "melanoma": 40}
_SPLIT = re.compile(r"\|{1,2}")
#: Cell index of the clinical diagnosis in a row split on '|' or '||' (name is cell 1).
DEFAULT_COLUMN = 3
_ID = re.compile(r"^IMD\d+$")
#: Clinical diagnosis cell (normalised) -> code; "0.0" as a spreadsheet saved as text has it.
_CODES = {**{str(k): k for k in CLINICAL}, **{f"{k}.0": k for k in CLINICAL},
          **{v: k for k, v in CLINICAL.items()}}


def base_dir(root: Path) -> Path:
    """``root/PH2Dataset`` when it exists, else ``root``."""
    return root / FOLDER if (root / FOLDER).is_dir() else root


def matches(root: Path) -> bool:
    base = base_dir(root)
    return (base / IMAGES).is_dir() and ((base / TABLE).exists() or (base / TABLE_XLSX).exists())


def _text_rows(path: Path) -> list[tuple[int, list[str]]]:
    """``(line number, cells)`` of a ``||``/``|``- or tab-separated table (any line ends);
    the name is cell 1 in both dialects."""
    try:
        text = path.read_bytes().decode("utf-8-sig", errors="replace")
    except OSError as exc:
        raise DermcamError(f"could not read file ({exc.strerror or exc})", path) from exc
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):  # \n, \r\n and \r
        if "|" in line:
            rows.append((i, [c.strip() for c in _SPLIT.split(line)]))
        elif "\t" in line:
            rows.append((i, [""] + [c.strip() for c in line.split("\t")]))
    return rows


def _sheet_rows(path: Path) -> list[tuple[int, list[str]]]:
    """``(sheet row number, cells)`` of the first sheet of ``PH2_dataset.xlsx``."""
    import pandas as pd
    try:
        df = pd.read_excel(path, header=None, dtype=str, engine="openpyxl")
    except ImportError as exc:
        raise DermcamError("reading PH2_dataset.xlsx needs openpyxl (pip install openpyxl)",
                           path) from exc
    except Exception as exc:  # zip/XML errors of a damaged file
        raise DermcamError(f"unreadable spreadsheet ({type(exc).__name__}: {exc})",
                           path) from exc
    return [(i + 1, [""] + ["" if pd.isna(v) else str(v).strip() for v in row])
            for i, row in enumerate(df.itertuples(index=False, name=None))]


def _norm(cell: str) -> str:
    return " ".join(cell.lower().split())


def read_table(path: Path) -> dict[str, int]:
    """``{image id: clinical diagnosis code}`` from the PH2 table, in file order.
    The published ``||``-separated or a tab-separated ``PH2_dataset.txt`` (the ``Clinical
    Diagnosis`` column, found by its header, holds 0, 1, 2 or the class name), or
    ``PH2_dataset.xlsx`` (``Common Nevus`` / ``Atypical Nevus`` / ``Melanoma``, one marked X).
    """
    path = Path(path)
    xlsx = path.suffix.lower() in (".xlsx", ".xlsm")
    rows = _sheet_rows(path) if xlsx else _text_rows(path)
    where = "row" if xlsx else "line"
    col = None
    marks: list[int] | None = None  # columns of the three X-marked classes
    out: dict[str, int] = {}
    for i, cells in rows:
        lowered = [_norm(c) for c in cells]
        if not out and all(name in lowered for name in CLINICAL.values()):
            # the spreadsheet's sub-header under "Clinical Diagnosis": X-marked classes
            marks, col = [lowered.index(name) for name in CLINICAL.values()], None
            continue
        if col is None and marks is None and "clinical diagnosis" in lowered:
            col = lowered.index("clinical diagnosis")
            continue
        if len(cells) < 2 or not _ID.match(cells[1]):
            continue  # the legend, sub-headers and blank rows
        image_id = check_id(cells[1], path)
        if marks is not None:
            marked = [k for k, c in zip(CLINICAL, marks) if c < len(cells) and cells[c]]
            if len(marked) != 1:
                raise DermcamError(
                    f"{where} {i}: {image_id} has {len(marked)} of the Common Nevus / "
                    "Atypical Nevus / Melanoma columns marked; exactly one is expected", path)
            code = marked[0]
        else:
            if col is None:
                if xlsx:
                    raise DermcamError("no 'Common Nevus', 'Atypical Nevus' and 'Melanoma' "
                                       "header row above the first image row", path)
                col = DEFAULT_COLUMN  # no header: the published file's position
            value = cells[col] if col < len(cells) else ""
            code = _CODES.get(_norm(value))
            if code is None:
                raise DermcamError(f"{where} {i}: clinical diagnosis {value!r} for {image_id} "
                                   "is not 0 (common nevus), 1 (atypical nevus) or 2 "
                                   "(melanoma)", path)
        if image_id in out:
            raise DermcamError(f"{where} {i}: {image_id} is listed twice", path)
        out[image_id] = code
    if not out:
        raise DermcamError("no image rows (IMDxxx) found: expected the '||'-separated or "
                           "tab-separated PH2_dataset.txt, or PH2_dataset.xlsx", path)
    return out


def load(root: Path, check_files: bool = True, seed: int = 0) -> DataSet:
    base = base_dir(root)
    table = base / TABLE if (base / TABLE).exists() else base / TABLE_XLSX  # .txt first
    codes = read_table(table)
    images = safe_join(base, IMAGES, table)
    samples = []
    for image_id, code in codes.items():
        image = safe_join(images, f"{image_id}/{image_id}_Dermoscopic_Image/{image_id}.bmp",
                          table)
        if check_files and not image.exists():
            raise DermcamError(f"no image file for {image_id} (expected {image})", table)
        mask = safe_join(images, f"{image_id}/{image_id}_lesion/{image_id}_lesion.bmp", table)
        samples.append(Sample(image_id, image, int(code in MALIGNANT_CODES), "", existing(mask)))
    check_duplicates(samples, table)
    ds = DataSet(name="PH2", root=root, layout="ph2", samples=holdout(samples, seed))
    by_dx = Counter(CLINICAL[c] for c in codes.values())
    got = {name: by_dx.get(name, 0) for name in CLINICAL.values()}
    ds.notes.append("label 1 = melanoma (clinical diagnosis 2); common and atypical nevi = 0")
    ds.notes.append(f"no official split: a seeded stratified {TEST_FRACTION:.0%} of images is "
                    "held out as the test split")
    ds.notes.append("counts match the published PH2 counts (80 common nevi, 80 atypical nevi, "
                    "40 melanomas)" if got == OFFICIAL else
                    f"counts {got} differ from the published PH2 counts {OFFICIAL}")
    n_missing = sum(1 for s in samples if s.mask_path is None)
    if n_missing:
        ds.notes.append(f"{n_missing} image(s) have no _lesion.bmp mask")
    return ds
