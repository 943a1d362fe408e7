"""PH2 (Hospital Pedro Hispano, 200 dermoscopic images) in its published layout.

::

    PH2Dataset/PH2_dataset.txt
    PH2Dataset/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp
    PH2Dataset/PH2 Dataset images/IMD002/IMD002_lesion/IMD002_lesion.bmp

The data root may be the folder holding ``PH2Dataset/`` or ``PH2Dataset`` itself.
``PH2_dataset.txt`` is a ``||``-delimited table; a data row reads
``|| IMD003 ||   (histology)   ||   0 ||   0 |  T | ...``: name, histological
diagnosis (often blank), **clinical diagnosis** (0 common nevus, 1 atypical
nevus, 2 melanoma), then the dermoscopic criteria. The column is found by its
header, ``Clinical Diagnosis``. Label 1 = melanoma. (``PH2_dataset.xlsx`` is
not read: use the ``.txt`` shipped beside it.)

There is no official split: a seeded stratified 20 % is held out as the test
split, as for the generic layout.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from dermcam.data.dataset import DataSet, Sample, check_duplicates
from dermcam.data.paths import check_id, safe_join
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


def base_dir(root: Path) -> Path:
    """``root/PH2Dataset`` when it exists, else ``root``."""
    inner = root / FOLDER
    return inner if inner.is_dir() else root


def matches(root: Path) -> bool:
    base = base_dir(root)
    return (base / IMAGES).is_dir() and ((base / TABLE).exists() or (base / TABLE_XLSX).exists())


def read_table(path: Path) -> dict[str, int]:
    """``{image id: clinical diagnosis code}`` from ``PH2_dataset.txt``, in file order."""
    try:
        text = path.read_bytes().decode("utf-8-sig", errors="replace")
    except OSError as exc:
        raise DermcamError(f"could not read file ({exc.strerror or exc})", path) from exc
    col = None
    out: dict[str, int] = {}
    for i, line in enumerate(text.splitlines(), start=1):
        if "|" not in line:
            continue
        cells = [c.strip() for c in _SPLIT.split(line)]
        lowered = [" ".join(c.lower().split()) for c in cells]
        if col is None and "clinical diagnosis" in lowered:
            col = lowered.index("clinical diagnosis")
            continue
        if len(cells) < 2 or not _ID.match(cells[1]):
            continue  # the legend and blank rows
        if col is None:
            col = DEFAULT_COLUMN  # no header: the published file's position
        image_id = check_id(cells[1], path)
        value = cells[col] if col < len(cells) else ""
        if value not in ("0", "1", "2"):
            raise DermcamError(f"line {i}: clinical diagnosis {value!r} for {image_id} is not "
                               "0 (common nevus), 1 (atypical nevus) or 2 (melanoma)", path)
        if image_id in out:
            raise DermcamError(f"line {i}: {image_id} is listed twice", path)
        out[image_id] = int(value)
    if not out:
        raise DermcamError("no image rows (|| IMDxxx || ...) found", path)
    return out


def load(root: Path, check_files: bool = True, seed: int = 0) -> DataSet:
    from dermcam.data.generic import TEST_FRACTION, _holdout

    base = base_dir(root)
    table = base / TABLE
    if not table.exists():
        raise DermcamError(f"{TABLE_XLSX} is not read; use {TABLE} from the PH2 archive "
                           "(or save the sheet as that text table)", base / TABLE_XLSX)
    codes = read_table(table)
    images = safe_join(base, IMAGES, table)
    samples = []
    for image_id, code in codes.items():
        image = safe_join(images, f"{image_id}/{image_id}_Dermoscopic_Image/{image_id}.bmp",
                          table)
        if check_files and not image.exists():
            raise DermcamError(f"no image file for {image_id} (expected {image})", table)
        mask = safe_join(images, f"{image_id}/{image_id}_lesion/{image_id}_lesion.bmp", table)
        samples.append(Sample(image_id, image, int(code in MALIGNANT_CODES), "",
                              mask if mask.exists() else None))
    check_duplicates(samples, table)
    ds = DataSet(name="PH2", root=root, layout="ph2", samples=_holdout(samples, seed))
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
