"""A generic layout for other data sets: ``labels.csv`` (header ``image_id,label[,mask]
[,split][,group]``; label benign/malignant or 0/1), ``images/<image_id>.jpg|.png`` and
optional ``masks/<image_id>.png`` (or a relative path in ``mask``). Without a split a seeded
stratified 20 % is the test split; a ``group`` (lesion or patient) stays on one side of
every split, and bootstrap CIs resample whole groups."""

from __future__ import annotations

from pathlib import Path

from dermcam.data.dataset import (
    SPLITS,
    DataSet,
    Problem,
    Sample,
    csv_table,
    image_path,
    parse_label,
    rows_to_samples,
)
from dermcam.data.paths import check_id, safe_join
from dermcam.data.splits import TEST_FRACTION, holdout, lesion_holdout
from dermcam.errors import DermcamError

CSV_NAME = "labels.csv"
IMAGE_DIR = "images"
MASK_DIR = "masks"


def matches(root: Path) -> bool:
    return (root / CSV_NAME).exists()


def load(root: Path, check_files: bool = True, problems: list[Problem] | None = None) -> DataSet:
    """The data set under ``root``; with ``problems``, each bad row is recorded there and
    left out instead of raising at the first."""
    csv_path = root / CSV_NAME
    header, rows = csv_table(csv_path, ("image_id", "label"), "empty CSV",
                              "header row must name 'image_id' and 'label' columns")
    col = {name: header.index(name) for name in header}
    img_dir = safe_join(root, IMAGE_DIR, csv_path)
    mask_dir = safe_join(root, MASK_DIR, csv_path)
    def parse(i: int, row: list[str]) -> Sample:
        image_id = check_id(row[col["image_id"]], csv_path)
        label = parse_label(row[col["label"]], csv_path, i)
        split = row[col["split"]].lower() if "split" in col else ""
        if split and split not in SPLITS:
            raise DermcamError(f"line {i}: split {split!r} is not one of {SPLITS}", csv_path)
        path = image_path(img_dir, image_id, csv_path, check_files)
        mask_path = None
        if "mask" in col and row[col["mask"]]:
            mask_path = safe_join(root, row[col["mask"]], csv_path)
            if not mask_path.exists():
                raise DermcamError(f"line {i}: mask file {row[col['mask']]!r} not found",
                                   csv_path)
        elif mask_dir.is_dir():
            masks = (safe_join(mask_dir, image_id + ext, csv_path)
                     for ext in (".png", "_segmentation.png", "_Segmentation.png", ".jpg"))
            mask_path = next((p for p in masks if p.exists()), None)
        group = row[col["group"]].strip() if "group" in col else ""
        return Sample(image_id, path, label, split, mask_path, group=group or None)
    padded = [(i, row + [""] * (len(header) - len(row))) for i, row in enumerate(rows[1:], 2)]
    samples = rows_to_samples(padded, col["image_id"], csv_path, problems, parse)
    ds = DataSet(name=root.name, root=root, layout="generic", samples=samples)
    if "split" not in col or all(not s.split for s in samples):
        grouped = any(s.group for s in samples)
        if grouped:  # whole groups, as HAM10000's lesion_id
            ds.samples = lesion_holdout(samples, {s.image_id: s.group or "\0" + s.image_id
                                                  for s in samples}, TEST_FRACTION)
        else:
            ds.samples = holdout(samples)
        ds.notes.append(f"no split column: a seeded stratified {TEST_FRACTION:.0%} "
                        "of images is held out as the test split"
                        + (" (whole groups)" if grouped else ""))
    elif any(not s.split for s in samples):
        raise DermcamError("some rows have a split and some do not; fill the split column",
                           csv_path)
    return ds
