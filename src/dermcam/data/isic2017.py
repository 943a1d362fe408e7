"""ISIC 2017 Challenge (Part 3, lesion classification) in its official layout::

    ISIC-2017_Training_Data/ISIC_0000000.jpg           (also *_superpixels.png: ignored)
    ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png
    ISIC-2017_Training_Part3_GroundTruth.csv   header: image_id,melanoma,seborrheic_keratosis
    ISIC-2017_Validation_{Data,Part1_GroundTruth,Part3_GroundTruth.csv}
    ISIC-2017_Test_v2_{Data,Part1_GroundTruth,Part3_GroundTruth.csv}

Label 1 = melanoma (Part 3a), or another 0/1 ``target`` column. Training and validation
form the train split."""

from __future__ import annotations

from pathlib import Path

from dermcam.data.dataset import (
    DataSet,
    Sample,
    check_duplicates,
    class_counts,
    csv_table,
    existing,
    image_path,
    short_row,
)
from dermcam.data.paths import check_id, safe_join
from dermcam.errors import DermcamError

#: (challenge part, dermcam split) in load order.
PARTS = (("Training", "train"), ("Validation", "train"), ("Test_v2", "test"))
MASK_SUFFIX = "_segmentation.png"
DEFAULT_TARGET = "melanoma"
#: Published image counts (all, melanoma) per challenge part.
OFFICIAL = {"Training": (2000, 374), "Validation": (150, 30), "Test_v2": (600, 117)}


def data_dir(part: str) -> str:
    return f"ISIC-2017_{part}_Data"


def mask_dir(part: str) -> str:
    return f"ISIC-2017_{part}_Part1_GroundTruth"


def label_csv(part: str) -> str:
    return f"ISIC-2017_{part}_Part3_GroundTruth.csv"


def matches(root: Path) -> bool:
    return any((root / label_csv(part)).exists() for part, _ in PARTS)


def _read_part(root: Path, part: str, split: str, target: str, check_files: bool) -> list[Sample]:
    csv_path = root / label_csv(part)
    if not csv_path.exists():
        return []
    header, rows = csv_table(csv_path, ("image_id", target), "empty ground-truth CSV",
                              f"header must name 'image_id' and '{target}' columns")
    id_col, y_col = header.index("image_id"), header.index(target)
    img_dir = safe_join(root, data_dir(part), csv_path)
    if check_files and not img_dir.is_dir():
        raise DermcamError(f"image folder {data_dir(part)} is missing beside the ground truth",
                           csv_path)
    m_dir = safe_join(root, mask_dir(part), csv_path)
    samples = []
    for i, row in enumerate(rows[1:], start=2):
        if len(row) <= max(id_col, y_col):
            raise short_row(i, row, header, csv_path)
        image_id = check_id(row[id_col], csv_path)
        try:
            label = float(row[y_col])
        except ValueError:
            label = float("nan")
        if label not in (0.0, 1.0):
            raise DermcamError(f"line {i}: {target} value {row[y_col]!r} is not 0/1", csv_path)
        path = image_path(img_dir, image_id, csv_path, check_files)
        mask = existing(safe_join(m_dir, image_id + MASK_SUFFIX, csv_path))
        samples.append(Sample(image_id, path, int(label), split, mask))
    check_duplicates(samples, csv_path)
    return samples


def load(root: Path, check_files: bool = True, target: str = DEFAULT_TARGET) -> DataSet:
    """Load the parts present under ``root``; label 1 = ``target`` column is 1."""
    target = target.strip().lower()
    by_part = {part: _read_part(root, part, split, target, check_files) for part, split in PARTS}
    seen: dict[str, str] = {}
    for part, samples in by_part.items():
        for s in samples:
            if s.image_id in seen:
                raise DermcamError(f"image id {s.image_id!r} is also in "
                                   f"{label_csv(seen[s.image_id])}", root / label_csv(part))
            seen[s.image_id] = part
    samples = [s for part, _ in PARTS for s in by_part[part]]
    ds = DataSet(name="ISIC 2017", root=root, layout="isic2017", samples=samples,
                 notes=[f"label 1 = {target}; training + validation form the train split"])
    missing = [label_csv(part) for part, _ in PARTS if not by_part[part]]
    if missing:
        ds.notes.append(f"not found or empty: {', '.join(missing)}")
    if target == DEFAULT_TARGET and not missing:
        got = {part: (len(s), class_counts(s)["malignant"]) for part, s in by_part.items()}
        ds.notes.append("counts match the published ISIC 2017 counts" if got == OFFICIAL else
                        f"counts (images, melanoma) {got} differ from the published {OFFICIAL}")
    n_missing = sum(1 for s in samples if s.mask_path is None)
    if n_missing:
        ds.notes.append(f"{n_missing} image(s) have no Part 1 {MASK_SUFFIX} mask")
    return ds
