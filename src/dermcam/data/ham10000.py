"""HAM10000 (ISIC 2018 Task 3 training) as published: ``HAM10000_metadata.csv``
(``lesion_id,image_id,dx,...``), images in ``HAM10000_images_part_{1,2}/`` (or one
``HAM10000_images/``), optional masks ``HAM10000_segmentations_lesion_tschandl/<id>
_segmentation.png`` or ``masks/``. Label 1 = ``dx`` in ``malignant`` (default mel, bcc,
akiec). Many lesions have several images, so the test split is a seeded 20 % of each class's
*lesions* (malignant when any image is), computed here so it does not change with
scikit-learn's versions."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from dermcam.data.dataset import IMAGE_EXTS, DataSet, Sample, check_duplicates, csv_table, short_row
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


def _index(folders: Iterable[Path], suffixes: tuple[str, ...]) -> dict[str, Path]:
    """``{id: path}`` of the files in ``folders`` (not recursive) ending in one of
    ``suffixes``; the first folder and the first suffix that fit win."""
    out: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            for entry in it:
                suf = next((s for s in suffixes
                            if entry.name.endswith(s) and len(entry.name) > len(s)), None)
                if suf is not None:
                    out.setdefault(entry.name[: -len(suf)], Path(entry.path))
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
    header, rows = csv_table(csv_path, ("lesion_id", "image_id", "dx"), "empty metadata CSV",
                              "header must name lesion_id, image_id and dx columns")
    c_lesion, c_id, c_dx = (header.index(c) for c in ("lesion_id", "image_id", "dx"))
    dirs = [safe_join(root, d, csv_path) for d in IMAGE_DIRS]
    images = _index(dirs, IMAGE_EXTS)  # Kaggle copies hold both part_1 and ham10000_images_part_1
    if check_files and not any(d.is_dir() for d in dirs):
        raise DermcamError(f"no image folder beside the metadata (expected "
                           f"{IMAGE_DIRS[0]}/ and {IMAGE_DIRS[1]}/ or {IMAGE_DIRS[2]}/)", csv_path)
    masks = _index([safe_join(root, d, csv_path) for d in MASK_DIRS], MASK_SUFFIXES)
    samples, groups, dx_counts = [], {}, {}
    for i, row in enumerate(rows[1:], start=2):
        if len(row) <= max(c_lesion, c_id, c_dx):
            raise short_row(i, row, header, csv_path)
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
    ds = DataSet(name="HAM10000", root=root, layout="ham10000", samples=samples)
    ds.notes.append(f"label 1 = dx in {{{', '.join(sorted(malignant))}}}; "
                    f"{len(samples)} images of {n_lesions} lesions")
    ds.notes.append(f"split by lesion_id: a seeded stratified {TEST_FRACTION:.0%} of lesions "
                    f"({n_test} images) is held out as the test split; no lesion is in both")
    if {"images": len(samples), "lesions": n_lesions, "dx": dx_counts} == OFFICIAL:
        ds.notes.append("counts match the published HAM10000 counts (10015 images, 7470 "
                        "lesions)")
    else:
        ds.notes.append(f"counts differ from the published HAM10000 counts "
                        f"({OFFICIAL['images']} images, {OFFICIAL['lesions']} lesions): a subset?")
    n_unmasked = sum(1 for s in samples if s.mask_path is None)
    if n_unmasked:
        ds.notes.append(f"{n_unmasked} image(s) have no lesion mask "
                        f"(masks come from {MASK_DIRS[0]}/ or masks/)")
    return ds
