"""ISIC 2016 Challenge Part 3B (lesion classification) in its official layout::

    ISBI2016_ISIC_Part3B_Training_Data/ISIC_0000000.jpg
    ISBI2016_ISIC_Part3B_Training_Data/ISIC_0000000_Segmentation.png   (0/255 mask)
    ISBI2016_ISIC_Part3B_Test_Data/...
    ISBI2016_ISIC_Part3B_Training_GroundTruth.csv    no header: ISIC_0000000,benign|malignant
    ISBI2016_ISIC_Part3B_Test_GroundTruth.csv        no header: ISIC_0000000,0.0|1.0

The synthetic benchmark adds ``ISIC_xxx_Artifacts.png`` maps and ``metadata.csv``."""

from __future__ import annotations

from pathlib import Path

from dermcam.data.dataset import (
    DataSet,
    Problem,
    Sample,
    existing,
    image_path,
    parse_label,
    read_csv_rows,
    rows_to_samples,
)
from dermcam.data.paths import check_id, safe_join
from dermcam.errors import DermcamError

TRAIN_DIR = "ISBI2016_ISIC_Part3B_Training_Data"
TEST_DIR = "ISBI2016_ISIC_Part3B_Test_Data"
TRAIN_CSV = "ISBI2016_ISIC_Part3B_Training_GroundTruth.csv"
TEST_CSV = "ISBI2016_ISIC_Part3B_Test_GroundTruth.csv"
MASK_SUFFIX = "_Segmentation.png"
ARTIFACT_SUFFIX = "_Artifacts.png"

# Counts the challenge published, for checking a real download.
OFFICIAL_COUNTS = {"train": {"benign": 727, "malignant": 173},
                   "test": {"benign": 304, "malignant": 75}}


def matches(root: Path) -> bool:
    return (root / TRAIN_CSV).exists() or (root / TEST_CSV).exists()


def _read_split(root: Path, csv_name: str, folder: str, split: str, check_files: bool,
                problems: list[Problem] | None = None) -> list[Sample]:
    csv_path = root / csv_name
    if not csv_path.exists():
        return []
    img_dir = safe_join(root, folder, csv_path)
    if not img_dir.is_dir():
        raise DermcamError(f"image folder {folder} is missing beside the ground truth", csv_path)
    def parse(i: int, row: list[str]) -> Sample:
        if len(row) < 2:
            raise DermcamError(f"line {i}: expected 'image_id,label', got {','.join(row)!r}",
                               csv_path)
        image_id = check_id(row[0], csv_path)
        label = parse_label(row[1], csv_path, i)
        path = image_path(img_dir, image_id, csv_path, check_files)
        mask = safe_join(img_dir, image_id + MASK_SUFFIX, csv_path)
        art = safe_join(img_dir, image_id + ARTIFACT_SUFFIX, csv_path)
        return Sample(image_id, path, label, split, existing(mask), existing(art))
    rows = list(enumerate(read_csv_rows(csv_path), start=1))
    if rows and rows[0][1][0].lower() in ("image_id", "image", "id", "isic_id"):
        rows = rows[1:]  # tolerate a header row some re-packagings add
    return rows_to_samples(rows, 0, csv_path, problems, parse)


def load(root: Path, check_files: bool = True, problems: list[Problem] | None = None) -> DataSet:
    """The data set under ``root``; with ``problems``, every bad row (or unreadable ground
    truth) is recorded there and left out instead of raising at the first."""
    def read(csv_name: str, folder: str, split: str) -> list[Sample]:
        if problems is None:
            return _read_split(root, csv_name, folder, split, check_files)
        try:
            return _read_split(root, csv_name, folder, split, check_files, problems)
        except DermcamError as exc:
            problems.append(Problem.from_error(exc, root / csv_name))
            return []
    train = read(TRAIN_CSV, TRAIN_DIR, "train")
    test = read(TEST_CSV, TEST_DIR, "test")
    both = sorted({s.image_id for s in train} & {s.image_id for s in test})
    if both and problems is None:
        raise DermcamError(f"image id(s) also in {TRAIN_CSV}: {', '.join(both[:5])}",
                           root / TEST_CSV)
    for image_id in both:
        problems.append(Problem(str(root / TEST_CSV), f"image id also in {TRAIN_CSV}",
                                image_id=image_id))
    samples = train + [s for s in test if s.image_id not in both]
    name = "synthetic dermoscopy benchmark" if (root / "synth.json").exists() else "ISIC 2016 Part 3B"
    ds = DataSet(name=name, root=root, layout="isic2016", samples=samples,
                 metadata_path=existing(root / "metadata.csv"))
    missing = sum(1 for s in samples if s.mask_path is None)
    if missing:
        ds.notes.append(f"{missing} image(s) have no {MASK_SUFFIX} mask")
    return ds
