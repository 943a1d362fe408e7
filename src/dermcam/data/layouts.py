"""The registry of data layouts, and loading a folder with the one that fits. Each layout
module offers ``matches(root)`` and ``load(root, check_files)``."""

from __future__ import annotations

import inspect
from pathlib import Path

from dermcam.data import generic, ham10000, isic2016, isic2017, ph2
from dermcam.data.artifact_labels import attach
from dermcam.data.dataset import SPLITS, DataSet, Problem
from dermcam.errors import DermcamError

__all__ = ["LAYOUTS", "detect_layout", "load_dataset"]

#: Layout name -> loader module (``matches(root)``, ``load(root, check_files)``), in
#: detection order: the official layouts first, the generic ``labels.csv`` last.
LAYOUTS = {"isic2016": isic2016, "isic2017": isic2017, "ham10000": ham10000, "ph2": ph2,
           "generic": generic}


def detect_layout(root: str | Path) -> str:
    """Name the layout of ``root``: one of :data:`LAYOUTS` (``isic2016``, ..., ``generic``)."""
    root = Path(root)
    if not root.exists():
        raise DermcamError("data folder not found", root)
    if not root.is_dir():
        raise DermcamError("not a folder (expected a data set folder)", root)
    for name, module in LAYOUTS.items():
        if module.matches(root):
            return name
    raise DermcamError(
        "no known data layout found: expected the ISIC 2016 Part 3B files "
        f"({isic2016.TRAIN_CSV}, ...), ISIC 2017, HAM10000 (HAM10000_metadata.csv), PH2 "
        f"(PH2_dataset.txt) or a generic '{generic.CSV_NAME}' with image_id,label "
        "columns; create one with 'dermcam synth'", root)


def load_dataset(root: str | Path, check_files: bool = True,
                 problems: list[Problem] | None = None,
                 artifacts: str | Path | None = None) -> DataSet:
    """Load any supported layout under ``root``; ``artifacts``: an artifact label table
    (:mod:`dermcam.data.artifact_labels`). With ``problems``, the layouts that can (ISIC
    2016, generic) record each bad row there and skip it, and an empty set is the caller's
    to report."""
    module = LAYOUTS[detect_layout(root)]
    if problems is not None and "problems" in inspect.signature(module.load).parameters:
        ds = module.load(Path(root), check_files=check_files, problems=problems)
    else:
        ds = module.load(Path(root), check_files=check_files)
    if not ds.samples and problems is None:
        raise DermcamError("the data set holds no images", root)
    if artifacts is not None and ds.samples:
        attach(ds, artifacts)
    for split in SPLITS:
        if not ds.split(split):
            ds.notes.append(f"the {split} split holds no images: training and evaluation "
                            "need both splits")
    return ds
