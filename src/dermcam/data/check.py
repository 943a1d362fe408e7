"""Check a whole data set at once: every CSV row, image, mask and artifact map, listing every
problem (``error``: unusable as it is, ``warning``: converted on the way in). Logs, never prints."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dermcam.data import generic, isic2016
from dermcam.data.cache import ImageCache
from dermcam.data.dataset import LABEL_NAMES, SPLITS, DataSet, Problem, Sample, pool_map
from dermcam.data.describe import read_metadata
from dermcam.data.images import SWAPS_AXES, open_checked, open_image_sized, open_mask
from dermcam.data.layouts import load_dataset
from dermcam.errors import DermcamError

log = logging.getLogger(__name__)

__all__ = ["CheckReport", "Problem", "check_dataset"]

#: An image whose shorter side is under this share of the model input is "much smaller".
SMALL_SHARE = 0.5
#: The validation share 'dermcam train' uses by default (for the class-count warning).
DEFAULT_VAL_FRACTION = 0.2
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass
class CheckReport:
    """What :func:`check_dataset` found; ``problems`` in a stable order."""

    root: Path
    problems: list[Problem] = field(default_factory=list)
    n_images: int = 0
    n_masks: int = 0
    decoded: bool = False
    dataset: DataSet | None = None
    mask_areas: dict[str, float] = field(default_factory=dict)  # image id -> lesion share

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line: the counts, and what was checked."""
        e, w = len(self.errors), len(self.warnings)
        how = "decoded" if self.decoded else "checked (file headers only)"
        checked = (f"{self.n_images} image(s) and {self.n_masks} mask(s) {how}"
                   if self.dataset is not None else "the data set could not be read")
        return (f"{e} error{'s' * (e != 1)}, {w} warning{'s' * (w != 1)} in {self.root}: "
                f"{checked}")


@dataclass
class _Header:
    size: tuple[int, int]  # (W, H) after EXIF orientation
    mode: str
    orientation: int


def _header(path: Path) -> _Header | Problem:
    """Read a file's image header only; a Problem with the same wording as decoding's."""
    try:
        im = open_checked(path, load=False)
    except DermcamError as exc:
        return Problem.from_error(exc, path)
    with im:
        w, h = im.size
        mode = im.mode
        try:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
        except Exception:  # malformed EXIF: decoding ignores it too
            orientation = 1
    if orientation in SWAPS_AXES:
        w, h = h, w
    return _Header((w, h), mode, orientation)


def _warnings(sample: Sample, img: _Header, mask: _Header | None, size: int) -> list[Problem]:
    out = []
    p = str(sample.image_path)
    if img.mode in _SIXTEEN_BIT:
        out.append(Problem(p, f"16-bit image (mode {img.mode}): scaled to 8 bits", "warning"))
    elif img.mode == "P":
        out.append(Problem(p, "palette image: converted to RGB", "warning"))
    if img.orientation != 1:
        out.append(Problem(p, f"EXIF orientation {img.orientation}: rotated upright before use "
                              "(its mask must match the rotated image)", "warning"))
    if min(img.size) < SMALL_SHARE * size:
        out.append(Problem(p, f"image is {img.size[0]}x{img.size[1]} px, much smaller than the "
                              f"{size} px model input: upscaled", "warning"))
    if mask is not None and mask.orientation != 1:
        out.append(Problem(str(sample.mask_path), f"EXIF orientation {mask.orientation}: "
                                                  "rotated before use", "warning"))
    return out


def _mask_levels(path: Path) -> Problem | None:
    """A warning when a mask holds values other than background and foreground."""
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    vals = np.unique(arr)
    hi = 65535 if vals.max(initial=0) > 255 else (255 if vals.max(initial=0) > 1 else 1)
    grey = vals[(vals != 0) & (vals != hi)]
    if len(grey):
        share = float(np.isin(arr, grey).mean())
        return Problem(str(path), f"mask is not binary ({len(grey)} grey level(s) on "
                                  f"{share:.1%} of pixels): thresholded at half intensity",
                       "warning")
    return None


def _decode_alone(path: Path, kind: str, size: int) -> Problem | None:
    """Decode one file by itself (image, mask or artifact map); its Problem, if any."""
    opener = {"image": lambda p: open_image_sized(p, draft_size=size), "mask": open_mask}
    try:
        opener.get(kind, open_checked)(path)
    except DermcamError as exc:
        return Problem.from_error(exc, path)
    return None


def _check_sample(sample: Sample, decode: bool, size: int, cache
                  ) -> tuple[list[Problem], float | None]:
    """Every problem of one sample's files, and its lesion share when decoded."""
    files = [("image", sample.image_path), ("mask", sample.mask_path),
             ("artifact map", sample.artifact_path)]
    heads = {kind: _header(path) for kind, path in files if path is not None}
    problems = [h for h in heads.values() if isinstance(h, Problem)]
    img = heads["image"]
    if isinstance(img, _Header):
        for kind in ("mask", "artifact map"):
            h = heads.get(kind)
            if isinstance(h, _Header) and h.size != img.size:
                path = sample.mask_path if kind == "mask" else sample.artifact_path
                problems.append(Problem(str(path), f"{kind} is {h.size[0]}x{h.size[1]} but its "
                                                   f"image is {img.size[0]}x{img.size[1]}"))
    area = None
    if decode:
        if not problems:
            try:  # the one decode that also fills the cache
                item = cache.get(sample, size)
                if item.get("mask") is not None:
                    area = float(item["mask"].mean())
            except DermcamError as exc:
                problems.append(Problem.from_error(exc, sample.image_path))
                if exc.path == str(sample.image_path):  # the mask was not reached: try it
                    problems += filter(None, [_decode_alone(path, kind, size)
                                              for kind, path in files[1:] if path is not None])
        else:  # decode the files whose header was fine, each alone, for their own problems
            bad = {p.path for p in problems}
            problems += filter(None, [_decode_alone(path, kind, size) for kind, path in files
                                      if path is not None and str(path) not in bad])
    if isinstance(img, _Header):
        mask = heads.get("mask")
        problems += _warnings(sample, img, mask if isinstance(mask, _Header) else None, size)
    if decode and isinstance(heads.get("mask"), _Header):
        try:
            problems += filter(None, [_mask_levels(sample.mask_path)])
        except Exception as exc:  # already reported as an error when it matters
            log.debug("%s: mask levels not checked (%s)", sample.mask_path, exc)
    return problems, area


def _split_source(ds: DataSet, split: str) -> Path:
    if ds.layout == "isic2016":
        return ds.root / (isic2016.TRAIN_CSV if split == "train" else isic2016.TEST_CSV)
    if ds.layout == "generic":
        return ds.root / generic.CSV_NAME
    return ds.root


def _split_problems(ds: DataSet, found: list[Problem]) -> list[Problem]:
    """Empty splits, one-class splits, too few of a class for a validation split; not for
    a split whose source already has an error (its counts are a consequence)."""
    out = []
    for split in SPLITS:
        samples = ds.split(split)
        src = _split_source(ds, split)
        if any(p.path == str(src) and p.severity == "error" for p in found):
            continue
        if not samples:
            what = ("file not found" if not src.exists() else
                    "file is empty" if src.is_file() and not src.read_bytes().strip() else
                    "lists no usable images")
            out.append(Problem(str(src), f"{what}: the {split} split is empty (train and "
                                         "evaluate need both splits)"))
            continue
        counts = np.bincount([s.label for s in samples], minlength=2)
        if counts.min() == 0:
            have, lack = LABEL_NAMES if counts[1] == 0 else LABEL_NAMES[::-1]
            why = ("training needs both classes" if split == "train" else
                   "ROC AUC, sensitivity and specificity are undefined")
            out.append(Problem(str(src), f"the {split} split holds only {have} images "
                                         f"({len(samples)}), no {lack}: {why}"))
        elif split == "train":
            need = max(2, int(np.ceil(1 / DEFAULT_VAL_FRACTION)))
            if counts.min() < need:
                out.append(Problem(str(src), f"the train split has {counts[0]} benign and "
                                             f"{counts[1]} malignant images: 'dermcam train' "
                                             f"needs at least {need} of each class for its "
                                             f"default {DEFAULT_VAL_FRACTION:.0%} validation "
                                             "split (or a larger --val-fraction)", "warning"))
    return out


def check_dataset(root: str | Path, decode: bool = True, image_size: int = 224, cache=None,
                  workers: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Check every CSV row, image, mask and artifact map under ``root`` (``decode``: through
    ``cache``, default the user's, at ``image_size``); raises nothing for bad data."""
    root = Path(root)
    report = CheckReport(root, decoded=decode)
    problems: list[Problem] = []
    try:
        ds = load_dataset(root, problems=problems)
    except DermcamError as exc:
        report.problems = problems + [Problem.from_error(exc, root)]
        log.info("%s", report.summary())
        return report
    report.dataset = ds
    problems += _split_problems(ds, problems)
    try:
        read_metadata(ds)
    except DermcamError as exc:
        problems.append(Problem.from_error(exc, ds.metadata_path or root))
    if decode and cache is None:
        cache = ImageCache()
    samples = ds.samples
    report.n_images, report.n_masks = len(samples), sum(s.mask_path is not None for s in samples)
    results = pool_map(lambda s: _check_sample(s, decode, image_size, cache), samples,
                       workers or min(4, os.cpu_count() or 1), progress)
    for s, (found, area) in zip(samples, results):
        problems += found
        if area is not None:
            report.mask_areas[s.image_id] = area
    report.problems = problems
    log.info("%s", report.summary())
    return report
