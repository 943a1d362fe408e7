"""HAM10000 (the ISIC 2018 Task 3 training set) in its published layout.

::

    HAM10000_metadata.csv      header: lesion_id,image_id,dx,dx_type,age,sex,localization
    HAM10000_images_part_1/ISIC_0024306.jpg     and HAM10000_images_part_2/
                                                (or one HAM10000_images/ folder)
    HAM10000_segmentations_lesion_tschandl/ISIC_0024306_segmentation.png   (optional;
                                                or masks/ISIC_0024306[_segmentation].png)

Labels: ``dx`` in ``malignant`` (default melanoma, basal cell carcinoma and
actinic keratosis / intraepithelial carcinoma) is 1, every other diagnosis 0.

HAM10000 holds several images of many lesions (10015 images of 7470 lesions).
The test split is therefore drawn by lesion: a seeded 20 % of the lesions of
each class (a lesion is malignant when any of its images is), so all images of
one lesion are on the same side. The split is computed here rather than with
scikit-learn's group splitters so that it does not change between library
versions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from dermcam.data.dataset import (
    IMAGE_EXTS,
    DataSet,
    Sample,
    check_duplicates,
    read_csv_rows,
)
from dermcam.data.paths import check_id, safe_join
from dermcam.data.splits import TEST_FRACTION, lesion_holdout
from dermcam.errors import DermcamError

METADATA = "HAM10000_metadata.csv"
IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images",
              "ham10000_images_part_1", "ham10000_images_part_2")
MASK_DIRS = ("HAM10000_segmentations_lesion_tschandl", "masks")
MASK_SUFFIXES = ("_segmentation.png", "_Segmentation.png", ".png")
DIAGNOSES = {
    "akiec": "actinic keratosis / Bowen's disease (intraepithelial carcinoma)",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}
DEFAULT_MALIGNANT = ("mel", "bcc", "akiec")
#: Published totals: images, lesions, and per-diagnosis image counts.
OFFICIAL = {"images": 10015, "lesions": 7470,
            "dx": {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327,
                   "vasc": 142, "df": 115}}


def matches(root: Path) -> bool:
    return (root / METADATA).exists()


def _index(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """``{id: path}`` for files in ``folder`` (not recursive) ending in one of ``suffixes``.

    The first suffix that fits wins; for ``.png`` masks the id is the stem.
    """
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    with os.scandir(folder) as it:
        for entry in it:
            for suf in suffixes:
                if entry.name.endswith(suf) and len(entry.name) > len(suf):
                    out.setdefault(entry.name[: -len(suf)], Path(entry.path))
                    break
    return out


def load(root: Path, check_files: bool = True,
         malignant: Iterable[str] = DEFAULT_MALIGNANT, seed: int = 0) -> DataSet:
    """Load HAM10000 under ``root``; ``malignant`` lists the ``dx`` codes labelled 1."""
    csv_path = root / METADATA
    malignant = {m.strip().lower() for m in malignant}
    unknown = sorted(malignant - set(DIAGNOSES))
    if unknown:
        raise DermcamError(f"unknown diagnosis code(s) {unknown} in the malignant set; "
                           f"HAM10000 uses {', '.join(DIAGNOSES)}")
    rows = read_csv_rows(csv_path)
    if not rows:
        raise DermcamError("empty metadata CSV", csv_path)
    header = [h.lower() for h in rows[0]]
    for col in ("lesion_id", "image_id", "dx"):
        if col not in header:
            raise DermcamError(f"header must name lesion_id, image_id and dx columns, got "
                               f"{','.join(rows[0])!r}", csv_path)
    c_lesion, c_id, c_dx = (header.index(c) for c in ("lesion_id", "image_id", "dx"))
    images: dict[str, Path] = {}
    dirs = [safe_join(root, d, csv_path) for d in IMAGE_DIRS]
    for d in dirs:
        for k, v in _index(d, IMAGE_EXTS).items():
            images.setdefault(k, v)  # Kaggle copies hold both part_1 and ham10000_images_part_1
    if check_files and not any(d.is_dir() for d in dirs):
        raise DermcamError(f"no image folder beside the metadata (expected "
                           f"{IMAGE_DIRS[0]}/ and {IMAGE_DIRS[1]}/ or {IMAGE_DIRS[2]}/)", csv_path)
    masks: dict[str, Path] = {}
    for d in MASK_DIRS:
        for k, v in _index(safe_join(root, d, csv_path), MASK_SUFFIXES).items():
            masks.setdefault(k, v)
    samples, groups, dx_counts = [], {}, {}
    for i, row in enumerate(rows[1:], start=2):
        if len(row) <= max(c_lesion, c_id, c_dx):
            raise DermcamError(f"line {i}: expected {len(header)} columns, got "
                               f"{','.join(row)!r}", csv_path)
        image_id = check_id(row[c_id], csv_path)
        lesion = row[c_lesion].strip()
        if not lesion:
            raise DermcamError(f"line {i}: empty lesion_id", csv_path)
        dx = row[c_dx].strip().lower()
        if dx not in DIAGNOSES:
            raise DermcamError(f"line {i}: diagnosis {row[c_dx]!r} is not one of "
                               f"{', '.join(DIAGNOSES)}", csv_path)
        path = images.get(image_id)
        if path is None:
            if check_files:
                raise DermcamError(f"line {i}: no image file for id {image_id!r} in "
                                   f"{' or '.join(IMAGE_DIRS[:3])}", csv_path)
            path = dirs[0] / f"{image_id}.jpg"
        samples.append(Sample(image_id, path, int(dx in malignant), "", masks.get(image_id),
                              group=lesion))
        groups[image_id] = lesion
        dx_counts[dx] = dx_counts.get(dx, 0) + 1
    check_duplicates(samples, csv_path)
    samples = lesion_holdout(samples, groups, TEST_FRACTION, seed)
    n_lesions = len(set(groups.values()))
    n_test = sum(1 for s in samples if s.split == "test")
    ds = DataSet(name="HAM10000", root=root, layout="ham10000", samples=samples,
                 metadata_path=None)
    ds.notes.append(f"label 1 = dx in {{{', '.join(sorted(malignant))}}}; "
                    f"{len(samples)} images of {n_lesions} lesions")
    ds.notes.append(f"split by lesion_id: a seeded stratified {TEST_FRACTION:.0%} of lesions "
                    f"({n_test} images) is held out as the test split; no lesion is in both")
    got = {"images": len(samples), "lesions": n_lesions, "dx": dx_counts}
    if got == OFFICIAL:
        ds.notes.append("counts match the published HAM10000 counts (10015 images, 7470 "
                        "lesions)")
    else:
        ds.notes.append(f"counts differ from the published HAM10000 counts "
                        f"({OFFICIAL['images']} images, {OFFICIAL['lesions']} lesions): a subset?")
    n_masked = sum(1 for s in samples if s.mask_path is not None)
    if n_masked < len(samples):
        ds.notes.append(f"{len(samples) - n_masked} image(s) have no lesion mask "
                        f"(masks come from {MASK_DIRS[0]}/ or masks/)")
    return ds
