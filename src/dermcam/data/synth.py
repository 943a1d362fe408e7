"""The synthetic dermoscopy benchmark: the embedded default data set.

It stands in for ISIC 2016 Part 3B (benign vs malignant) and is written in that
challenge's file layout, so one loader reads real and synthetic data::

    ISBI2016_ISIC_Part3B_Training_Data/ISIC_0000000.jpg              RGB JPEG, square
    ISBI2016_ISIC_Part3B_Training_Data/ISIC_0000000_Segmentation.png 8-bit L, exactly 0/255
    ISBI2016_ISIC_Part3B_Training_Data/ISIC_0000000_Artifacts.png    8-bit L, artifact code
    ISBI2016_ISIC_Part3B_Test_Data/...                               ids continue the numbering
    ISBI2016_ISIC_Part3B_Training_GroundTruth.csv   no header: ISIC_0000000,benign|malignant
    ISBI2016_ISIC_Part3B_Test_GroundTruth.csv       no header: ISIC_0000900,0.0|1.0
    metadata.csv                                    header, one row per image (see below)
    synth.json                                      config, realised counts, generator_version

How an image is made (all vectorised numpy, no per-pixel Python loops; the painters live in
:mod:`dermcam.data.painters`, this module draws the seeds, composites and writes):

1. **Skin**: a tone drawn from light to darker skin with a pink or yellow-brown hue,
   low-frequency blotches, faint erythema, dermoscope lighting (bright centre, slight
   gradient) and fine grain; the JPEG encoder adds a little block noise.
2. **Lesion**: a star-shaped region ``r < R0 * f(theta)`` whose binary mask is the ground
   truth the image is drawn from. The pigment (browns, optionally black, blue-grey, red,
   white) is painted inside the mask with internal structure (darker off-centre core,
   mottling, a pigment-network-like reticulation, globules/dots) and a soft edge that
   fades *inside* the mask, plus at most a one-pixel anti-aliasing halo outside it.
   Benign and malignant differ only through the ABCD cues, each with overlapping
   class distributions: Asymmetry (harmonics 1 and 3 of ``f`` and an off-centre
   pigment core), Border irregularity (harmonics 4-24 of ``f``), Colour variegation
   (number of distinct colours: benign mostly 1-2, malignant mostly 2-5) and Diameter
   (log-normal lesion area, sd 0.5 in log: median 0.14 of the image benign, 0.23
   malignant; lesion area alone gives an AUC of about 0.72-0.8: the lesion-size confound
   the leakage analysis has to handle). A small CNN trained from scratch at 64 px
   reaches a test AUC of about 0.9 after five epochs and 0.95-0.96 when trained longer.
3. **Artifacts**, painted only *outside* the lesion mask, in :data:`ARTIFACTS` order:
   ``ruler`` (dark band with tick marks near the edge farthest from the lesion), ``ink``
   (violet/blue pen arc round the lesion, or pen dots), ``patch`` (colour calibration
   square/disc towards a corner), ``vignette`` (dark corners outside the dermoscope's
   circular field) and ``hair`` (thin dark curves). The artifact map holds, per pixel,
   the code (index in :data:`ARTIFACTS` + 1; 0 = none) of the artifact that changed that
   pixel's 8-bit value before JPEG encoding; where several did, the **later one in
   ARTIFACTS order wins**. Artifact map pixels never lie inside the lesion mask.
   Whether an image carries an artifact is a Bernoulli draw with the rate of its
   ``(split, label)`` cell (see :data:`PRESETS`); geometry is chosen to keep a planted
   artifact visible (ruler on the side with most free skin, patch and pen marks inside
   the dermoscope field), and ``synth.json`` counts both ``planted`` and ``present``
   (code found in the map) per cell.

Determinism: every image's random numbers come from ``SeedSequence([seed, split_code,
i])`` (``split_code`` 0 train, 1 test, ``i`` the index within the split), spawned into
independent streams for the skin and lesion, the artifact draws, and each artifact's
geometry. So the same config gives byte-identical files whatever the worker count or
order (with the same numpy, Pillow and libjpeg; ``synth.json`` records the versions),
and two configs that differ only in artifact rates (``clean`` vs ``shortcut``
with one seed) give the *same* skin and lesions, differing only where artifacts were
added or removed: a counterfactual pair for the leakage audit. Labels: exactly
``round(n * prevalence)`` malignant per split (Python ``round``), positions shuffled by
``SeedSequence([seed, 100 + split_code])``.

``metadata.csv`` columns: ``image_id, split (train|test), label (0|1), lesion_area``
(fraction of mask pixels in the written mask), ``artifact_<name>`` (1 when the code
appears in the artifact map), ``asymmetry`` and ``border_irregularity`` (the generator's
shape parameters: RMS relative radius perturbation of the low-order asymmetric
harmonics and of the border harmonics), ``n_colours`` (distinct lesion colours painted)
and ``diameter_px`` (maximum Feret diameter of the written mask, pixels).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image

from dermcam.data.isic2016 import (
    ARTIFACT_SUFFIX,
    MASK_SUFFIX,
    TEST_CSV,
    TEST_DIR,
    TRAIN_CSV,
    TRAIN_DIR,
)
from dermcam.data.painters import (
    ARTIFACTS,
    PAINTERS,
    composite,
    lesion_geometry,
    lesion_params,
    lighting,
    paint_artifact,
    paint_lesion,
    paint_skin,
)
from dermcam.errors import DermcamError
from dermcam.io import write_bytes, write_json, write_text

__all__ = [
    "ARTIFACTS",
    "GENERATOR_VERSION",
    "PRESETS",
    "SynthConfig",
    "SynthSample",
    "generate",
    "paint_artifact",
    "render_sample",
    "split_labels",
]

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1.1.0"
_GENERATOR = "dermcam.data.synth"

SPLITS: tuple[str, ...] = ("train", "test")
_SPLIT_CODE = {"train": 0, "test": 1}
_CELLS = tuple((s, y) for s in SPLITS for y in (0, 1))

JPEG_QUALITY = 90
_PNG_LEVEL = 6
_MIN_SIZE = 32
_POOL_MIN_IMAGES = 16  # below this, one thread
METADATA = "metadata.csv"
SYNTH_JSON = "synth.json"
METADATA_COLUMNS = (
    ["image_id", "split", "label", "lesion_area"]
    + [f"artifact_{a}" for a in ARTIFACTS]
    + ["asymmetry", "border_irregularity", "n_colours", "diameter_px"]
)

_CLEAN_RATES = {"ruler": 0.2, "ink": 0.1, "patch": 0.1, "vignette": 0.3, "hair": 0.3}


def _flat(rate: float) -> dict[tuple[str, int], float]:
    return {cell: rate for cell in _CELLS}


PRESETS: dict[str, dict[str, dict[tuple[str, int], float]]] = {
    # every artifact at a fixed rate, independent of label and split
    "clean": {a: _flat(r) for a, r in _CLEAN_RATES.items()},
    # as clean, but the ruler is a training-only shortcut for malignancy
    "shortcut": {
        **{a: _flat(r) for a, r in _CLEAN_RATES.items()},
        "ruler": {("train", 0): 0.05, ("train", 1): 0.80, ("test", 0): 0.20, ("test", 1): 0.20},
    },
}
"""``PRESETS[preset][artifact][(split, label)]`` -> probability that an image carries it."""


# --------------------------------------------------------------------------- config

def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _parse_cell(key: Any) -> tuple[str, int]:
    """``("train", 1)`` or the JSON spelling ``"train/1"`` -> ``("train", 1)``."""
    if isinstance(key, str) and "/" in key:
        split, _, lab = key.partition("/")
        key = (split, int(lab) if lab.strip().isdigit() else lab)
    if (not isinstance(key, tuple) or len(key) != 2 or key[0] not in SPLITS
            or not _is_number(key[1]) or int(key[1]) not in (0, 1) or key[1] != int(key[1])):
        raise ValueError(f"artifact rate cell {key!r} is not (split, label) with split in "
                         f"{SPLITS} and label 0 or 1")
    return (key[0], int(key[1]))


@dataclass
class SynthConfig:
    """What to generate. Bad values raise :class:`ValueError` at construction.

    ``artifact_rates[artifact][(split, label)]`` is the probability that an image of that
    split and label carries the artifact. ``None`` takes the preset's rates. A given dict
    overrides the preset artifact by artifact: each value is either one number (all four
    cells) or a dict of all four ``(split, label)`` cells (``"train/1"`` spelling accepted,
    as written in ``synth.json``); artifacts it does not name keep the preset's rates.
    """

    n_train: int = 900
    n_test: int = 379
    image_size: int = 256
    prevalence: float = 0.19
    seed: int = 0
    preset: str = "clean"
    artifact_rates: dict | None = None

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test", "image_size", "seed"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise ValueError(f"{name} must be an integer, got {v!r}")
        if self.image_size < _MIN_SIZE:
            raise ValueError(f"image_size must be at least {_MIN_SIZE} px, got {self.image_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not _is_number(self.prevalence) or not 0.0 < float(self.prevalence) < 1.0:
            raise ValueError(f"prevalence must be strictly between 0 and 1, got "
                             f"{self.prevalence!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        for split, n in (("train", self.n_train), ("test", self.n_test)):
            k = self.n_malignant(split)
            if n < 2 or k < 1 or k > n - 1:
                raise ValueError(
                    f"n_{split}={n} with prevalence {self.prevalence} gives {k} malignant "
                    f"and {n - k} benign images; each split needs both classes")
        self.rates()  # validates artifact_rates

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> SynthConfig:
        """A config with ``preset``'s artifact rates; keyword ``overrides`` set other fields."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        return cls(preset=preset, **overrides)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SynthConfig:
        """Inverse of :meth:`to_dict` (also reads the ``"config"`` block of ``synth.json``)."""
        keys = ("n_train", "n_test", "image_size", "prevalence", "seed", "preset",
                "artifact_rates")
        return cls(**{k: d[k] for k in keys if k in d})

    def n_malignant(self, split: str) -> int:
        n = self.n_train if split == "train" else self.n_test
        return int(round(n * float(self.prevalence)))

    def rates(self) -> dict[str, dict[tuple[str, int], float]]:
        """The full rate table ``{artifact: {(split, label): p}}`` after the preset merge."""
        table = {a: dict(PRESETS[self.preset][a]) for a in ARTIFACTS}
        if self.artifact_rates is None:
            return table
        if not isinstance(self.artifact_rates, Mapping):
            raise ValueError("artifact_rates must be a dict {artifact: rate or {(split, label): "
                             "rate}}")
        for art, spec in self.artifact_rates.items():
            if art not in ARTIFACTS:
                raise ValueError(f"unknown artifact {art!r}; choose from {ARTIFACTS}")
            if _is_number(spec):
                cells = _flat(float(spec))
            elif isinstance(spec, Mapping):
                cells = {_parse_cell(k): v for k, v in spec.items()}
                missing = [c for c in _CELLS if c not in cells]
                if missing:
                    raise ValueError(f"artifact_rates[{art!r}] lacks cells {missing}; give all "
                                     f"four (split, label) cells or one number")
            else:
                raise ValueError(f"artifact_rates[{art!r}] must be a number or a dict, got "
                                 f"{spec!r}")
            for cell, p in cells.items():
                if not _is_number(p) or not 0.0 <= float(p) <= 1.0:
                    raise ValueError(f"artifact_rates[{art!r}][{cell}] = {p!r} is not a "
                                     "probability in [0, 1]")
                table[art][cell] = float(p)
        return table

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; rates fully resolved, cells spelled ``"train/1"``."""
        return {
            "n_train": int(self.n_train),
            "n_test": int(self.n_test),
            "image_size": int(self.image_size),
            "prevalence": float(self.prevalence),
            "seed": int(self.seed),
            "preset": self.preset,
            "artifact_rates": {a: {f"{s}/{y}": p for (s, y), p in cells.items()}
                               for a, cells in self.rates().items()},
        }


def split_labels(config: SynthConfig, split: str) -> np.ndarray:
    """``(n,)`` int labels of a split: exactly ``round(n * prevalence)`` ones, seeded shuffle."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n = config.n_train if split == "train" else config.n_test
    labels = np.zeros(n, dtype=np.int64)
    labels[: config.n_malignant(split)] = 1
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 100 + _SPLIT_CODE[split]]))
    return rng.permutation(labels)


# --------------------------------------------------------------------------- one sample

@dataclass(eq=False)
class SynthSample:
    """One rendered sample, before encoding.

    ``image (S, S, 3) uint8`` (the pixels handed to the JPEG encoder), ``mask (S, S) bool``,
    ``artifacts (S, S) uint8`` codes, ``label`` 0/1, ``planted`` the artifacts drawn for
    this image, ``present`` those that changed at least one pixel, and the lesion
    attributes written to ``metadata.csv``.
    """

    image: np.ndarray
    mask: np.ndarray
    artifacts: np.ndarray
    label: int
    planted: tuple[str, ...]
    present: tuple[str, ...]
    asymmetry: float
    border_irregularity: float
    n_colours: int
    diameter_px: float


def _chosen(draws: np.ndarray, split: str, label: int,
            rates: Mapping[str, Mapping[tuple[str, int], float]]) -> tuple[str, ...]:
    """The artifacts an image carries: those whose uniform draw is below its cell's rate."""
    return tuple(a for k, a in enumerate(ARTIFACTS) if draws[k] < rates[a][(split, label)])


def _seeds(seed: int, split: str, index: int) -> list[np.random.SeedSequence]:
    """An image's independent streams (module docstring): skin and lesion, the artifact
    draws, then one per artifact's geometry in :data:`ARTIFACTS` order."""
    return np.random.SeedSequence([seed, _SPLIT_CODE[split], index]).spawn(2 + len(ARTIFACTS))


def _render(seed: int, split: str, index: int, label: int, size: int,
            rates: Mapping[str, Mapping[tuple[str, int], float]]) -> SynthSample:
    streams = [np.random.default_rng(s) for s in _seeds(seed, split, index)]
    rng, rng_draw = streams[0], streams[1]

    skin, texture = paint_skin(rng, size)
    params = lesion_params(rng, label)
    mask, diameter = paint_lesion(rng, size, skin, texture, params)
    img = skin * lighting(rng, size)[..., None]
    grain = rng.standard_normal((size, size), dtype=np.float32) * np.float32(rng.uniform(1.5, 3.5))
    img += grain[..., None]
    img += rng.random((size, size, 3), dtype=np.float32) * np.float32(3.4) - np.float32(1.7)
    np.clip(img, 0.0, 255.0, out=img)

    lesion = lesion_geometry(mask)

    draws = rng_draw.random(len(ARTIFACTS))  # drawn in full, so rates never shift streams
    planted = _chosen(draws, split, label, rates)
    codes = np.zeros((size, size), np.uint8)
    outside = ~mask
    for k, name in enumerate(ARTIFACTS):
        if name not in planted:
            continue
        alpha, col = PAINTERS[name](streams[2 + k], size, mask, lesion)
        win, changed = composite(img, alpha, col, outside)
        if win is not None:
            codes[win][changed] = k + 1
    image = np.rint(img).astype(np.uint8)
    present = tuple(a for k, a in enumerate(ARTIFACTS) if (codes == k + 1).any())
    return SynthSample(
        image=image, mask=mask, artifacts=codes, label=int(label), planted=planted,
        present=present, asymmetry=params["asymmetry"], border_irregularity=params["border"],
        n_colours=len(params["colours"]), diameter_px=diameter)


def render_sample(config: SynthConfig, split: str, index: int) -> SynthSample:
    """Render image ``index`` (0-based within ``split``) of ``config`` without writing it."""
    labels = split_labels(config, split)
    if not 0 <= index < labels.size:
        raise ValueError(f"index {index} outside the {split} split of {labels.size} images")
    return _render(config.seed, split, index, int(labels[index]), config.image_size,
                   config.rates())


# --------------------------------------------------------------------------- writing

def _png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=_PNG_LEVEL)
    return buf.getvalue()


def _jpeg_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0",
                            optimize=False, progressive=False)
    return buf.getvalue()


def _planted(seed: int, split: str, index: int, label: int,
             rates: Mapping[str, Mapping[tuple[str, int], float]]) -> tuple[str, ...]:
    """The artifacts :func:`_render` plants in this image, without rendering it: the
    artifact draws have their own stream (the second of the image's spawned seeds)."""
    draws = np.random.default_rng(_seeds(seed, split, index)[1]).random(len(ARTIFACTS))
    return _chosen(draws, split, label, rates)


def _files(folder: Path, image_id: str) -> tuple[Path, Path, Path]:
    return (folder / f"{image_id}.jpg", folder / f"{image_id}{MASK_SUFFIX}",
            folder / f"{image_id}{ARTIFACT_SUFFIX}")


def _reusable(reference: Path, config: SynthConfig
              ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[tuple[str, int], float]]]:
    """``(metadata.csv rows by image id, artifact rates)`` of ``reference`` when its images
    can stand in for this config's (a complete set from this generator version, numpy and
    Pillow, with the same fields but the artifact rates); else ``({}, {})`` (and the log
    says why)."""
    try:
        meta = json.loads((reference / SYNTH_JSON).read_text("utf-8"))
        block = meta.get("config")
        if not isinstance(block, dict):
            raise ValueError(f"{SYNTH_JSON} has no config")
        ref = SynthConfig.from_dict(block)
        same = (meta.get("generator") == _GENERATOR and meta.get("status") == "complete"
                and meta.get("generator_version") == GENERATOR_VERSION
                and meta.get("numpy_version") == np.__version__
                and meta.get("pillow_version") == PIL.__version__
                and all(getattr(ref, f) == getattr(config, f)
                        for f in ("n_train", "n_test", "image_size", "prevalence", "seed")))
        if not same:
            log.info("%s: not reusing its images (another config, generator or library "
                     "version)", reference)
            return {}, {}
        with open(reference / METADATA, newline="", encoding="utf-8") as fh:
            return {r["image_id"]: r for r in csv.DictReader(fh)}, ref.rates()
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as err:
        log.info("%s: not reusing its images (%s)", reference, err)
        return {}, {}


def _reuse(job: tuple[Path, str, int, str, int, int], row: dict[str, Any], reference: Path,
           planted: tuple[str, ...]) -> dict[str, Any] | None:
    """Hard-link (or copy) the reference's three files of this image and return its
    ``metadata.csv`` row, or ``None`` when a file is missing."""
    folder, image_id = job[0], job[1]
    sources = _files(reference / folder.name, image_id)
    if not all(p.is_file() for p in sources):
        return None
    for src, dst in zip(sources, _files(folder, image_id), strict=True):
        tmp = dst.with_name(f".{dst.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:  # another device, or no hard links here
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    out: dict[str, Any] = dict(row)
    out["label"] = int(row["label"])
    for a in ARTIFACTS:
        out[f"artifact_{a}"] = int(row[f"artifact_{a}"])
    out["_planted"] = planted
    return out


def _make_and_write(job: tuple[Path, str, int, str, int, int], size: int,
                    rates: Mapping[str, Mapping[tuple[str, int], float]]) -> dict[str, Any]:
    """Render one image, write its three files, return its ``metadata.csv`` row."""
    folder, image_id, seed, split, index, label = job
    s = _render(seed, split, index, label, size, rates)
    mask8 = np.where(s.mask, 255, 0).astype(np.uint8)
    jpg, mask_png, artifact_png = _files(folder, image_id)
    write_bytes(jpg, _jpeg_bytes(s.image))
    write_bytes(mask_png, _png_bytes(mask8))
    write_bytes(artifact_png, _png_bytes(s.artifacts))
    row: dict[str, Any] = {
        "image_id": image_id, "split": split, "label": s.label,
        "lesion_area": repr(float(np.count_nonzero(mask8) / mask8.size)),
    }
    for a in ARTIFACTS:
        row[f"artifact_{a}"] = int(a in s.present)
    row.update(asymmetry=f"{s.asymmetry:.5f}", border_irregularity=f"{s.border_irregularity:.5f}",
               n_colours=s.n_colours, diameter_px=f"{s.diameter_px:.1f}")
    row["_planted"] = s.planted
    return row


def _run(jobs: list, fn: Callable[[Any], dict[str, Any]], n_workers: int,
         progress: Callable[[int, int], None] | None) -> list[dict[str, Any]]:
    """``[fn(job) for job in jobs]`` in order, on ``n_workers`` threads when > 1.

    Threads, not processes: numpy, the noise einsums and the PIL encoders release the GIL
    for their inner loops, and a process pool would need ``spawn`` (``fork`` is unsafe
    under a parent holding threads or torch) which breaks unguarded scripts. Every image
    draws from its own seeds, so the files never depend on the worker count.
    """
    rows: list[dict[str, Any]] = []

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        if progress is not None:
            progress(len(rows), len(jobs))

    if n_workers <= 1:
        for job in jobs:
            done(fn(job))
        return rows
    with ThreadPoolExecutor(n_workers) as pool:
        for row in pool.map(fn, jobs):  # in order; the workers run ahead
            done(row)
    return rows


_OWN_FILE = re.compile(r"^ISIC_\d{7}(?:|_Segmentation|_Artifacts)\.(?:jpg|png)$")


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _prepare(out: Path, config: SynthConfig, wanted: dict[str, set[str]]) -> None:
    """Make ``out`` ready: new, empty, or a previous synthetic set (never anything else).

    The ground-truth CSVs and ``metadata.csv`` (what makes a folder look complete) are
    removed first, and ``synth.json`` is rewritten with ``"status": "generating"`` so an
    interrupted run stays recognisable as ours and can be re-run into the same folder.
    Stale images of a previous, larger set and leftover temporary files are removed.
    """
    if out.exists() and not out.is_dir():
        raise DermcamError("output path exists and is not a folder", out)
    out.mkdir(parents=True, exist_ok=True)
    entries = [p for p in out.iterdir() if not _is_tmp(p.name)]
    if entries:
        try:
            ours = json.loads((out / SYNTH_JSON).read_text("utf-8")).get("generator") == _GENERATOR
        except (OSError, ValueError, AttributeError):
            ours = False
        top = {TRAIN_DIR, TEST_DIR, TRAIN_CSV, TEST_CSV, METADATA, SYNTH_JSON}
        foreign = [p.name for p in entries if p.name not in top]
        for d in (TRAIN_DIR, TEST_DIR):
            if (out / d).is_dir():
                foreign += [f"{d}/{p.name}" for p in (out / d).iterdir()
                            if not _OWN_FILE.match(p.name) and not _is_tmp(p.name)]
        if not ours or foreign:
            shown = ", ".join(sorted(foreign)[:3]) + (", ..." if len(foreign) > 3 else "")
            why = f"holds files that are not part of a synthetic data set ({shown})" if foreign \
                else f"is not empty and has no {SYNTH_JSON} from a previous synthetic set"
            raise DermcamError(f"folder {why}; choose an empty or new folder", out)
    for name in (METADATA, TRAIN_CSV, TEST_CSV):
        (out / name).unlink(missing_ok=True)
    write_json(out / SYNTH_JSON, {"generator": _GENERATOR, "generator_version": GENERATOR_VERSION,
                                  "status": "generating", "config": config.to_dict()})
    for d in (TRAIN_DIR, TEST_DIR):
        (out / d).mkdir(exist_ok=True)
        for p in (out / d).iterdir():
            if _is_tmp(p.name) or p.name[:12] not in wanted[d]:
                p.unlink()


def generate(out_dir: str | Path, config: SynthConfig,
             progress: Callable[[int, int], None] | None = None, *,
             workers: int | None = None, reference: str | Path | None = None) -> Path:
    """Write the synthetic data set for ``config`` into ``out_dir`` and return its path.

    ``progress(n_done, n_total)`` is called (in this thread) as images complete.
    ``workers`` threads render in parallel (default: up to 2); the files do not depend
    on it. ``out_dir`` must be new, empty or a previous synthetic set (which is
    overwritten); anything else is a :class:`DermcamError`. Images are written first and
    the ground-truth CSVs, ``metadata.csv`` and the final ``synth.json``
    (``"status": "complete"``) last, every file atomically.

    ``reference``: a complete synthetic set of the same seed, sizes and prevalence with
    other artifact rates (the demo's default data for its shortcut data). An image whose
    planted artifacts are the same under both rate tables is byte-identical in both sets
    (module docstring), so its files are hard-linked (or copied) from the reference
    instead of rendered; the output is the same bytes either way. A reference that does
    not match is ignored (rendered in full; the log says why).
    """
    if not isinstance(config, SynthConfig):
        raise TypeError(f"config must be a SynthConfig, got {type(config).__name__}")
    SynthConfig.__post_init__(config)  # re-validate: fields may have been changed since
    out = Path(out_dir)
    rates = config.rates()
    jobs, wanted = _jobs(out, config)
    _prepare(out, config, wanted)

    total = len(jobs)
    n_workers = max(1, min(workers if workers is not None else min(2, os.cpu_count() or 1), 8))
    if total < _POOL_MIN_IMAGES:
        n_workers = 1
    log.info("generating %d synthetic images (%d px, preset %s, seed %d) in %s with %d "
             "thread(s)", total, config.image_size, config.preset, config.seed, out, n_workers)
    make = partial(_make_and_write, size=config.image_size, rates=rates)
    ref_rows, ref_rates = _reusable(Path(reference), config) if reference is not None \
        else ({}, {})
    if ref_rows:
        make = partial(_make_or_reuse, render=make, reference=Path(reference),
                       ref_rows=ref_rows, rates=rates, ref_rates=ref_rates)
    rows = _run(jobs, make, n_workers, progress)
    _write_tables(out, config, rows)
    log.info("synthetic data set complete: %s", out)
    return out


def _jobs(out: Path, config: SynthConfig
          ) -> tuple[list[tuple[Path, str, int, str, int, int]], dict[str, set[str]]]:
    """One job ``(folder, image_id, seed, split, index, label)`` per image (test ids continue
    the training numbering) and the image ids wanted in each image folder."""
    jobs = []
    wanted: dict[str, set[str]] = {TRAIN_DIR: set(), TEST_DIR: set()}
    offset = 0
    for split, folder in (("train", TRAIN_DIR), ("test", TEST_DIR)):
        for i, y in enumerate(split_labels(config, split)):
            image_id = f"ISIC_{offset + i:07d}"
            wanted[folder].add(image_id)
            jobs.append((out / folder, image_id, int(config.seed), split, i, int(y)))
        offset += config.n_train if split == "train" else 0
    return jobs, wanted


def _make_or_reuse(job: tuple[Path, str, int, str, int, int],
                   render: Callable[[Any], dict[str, Any]], reference: Path,
                   ref_rows: dict[str, dict[str, Any]],
                   rates: Mapping[str, Mapping[tuple[str, int], float]],
                   ref_rates: Mapping[str, Mapping[tuple[str, int], float]]) -> dict[str, Any]:
    """The reference's files of this image when it plants the same artifacts under both
    rate tables (so the bytes are the same), else ``render(job)``; its ``metadata.csv`` row."""
    _, image_id, seed, split, index, label = job
    planted = _planted(seed, split, index, label, rates)
    row = ref_rows.get(image_id)
    if (row is not None and row.get("split") == split and row.get("label") == str(label)
            and planted == _planted(seed, split, index, label, ref_rates)):
        reused = _reuse(job, row, reference, planted)
        if reused is not None:
            return reused
    return render(job)


def _write_tables(out: Path, config: SynthConfig, rows: list[dict[str, Any]]) -> None:
    """The completeness markers, last: ground truth, ``metadata.csv``, then ``synth.json``."""
    train_rows = [r for r in rows if r["split"] == "train"]
    test_rows = [r for r in rows if r["split"] == "test"]
    write_text(out / TRAIN_CSV, "".join(
        f"{r['image_id']},{'malignant' if r['label'] else 'benign'}\n" for r in train_rows))
    write_text(out / TEST_CSV, "".join(
        f"{r['image_id']},{float(r['label']):.1f}\n" for r in test_rows))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METADATA_COLUMNS, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / METADATA, buf.getvalue())
    write_json(out / SYNTH_JSON, _summary(config, rows))


def _summary(config: SynthConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for split in SPLITS:
        sr = [r for r in rows if r["split"] == split]
        counts[split] = {"n": len(sr), "malignant": sum(r["label"] for r in sr),
                         "benign": sum(1 - r["label"] for r in sr)}
    realised: dict[str, Any] = {}
    for a in ARTIFACTS:
        realised[a] = {}
        for split, y in _CELLS:
            cell = [r for r in rows if r["split"] == split and r["label"] == y]
            realised[a][f"{split}/{y}"] = {
                "n": len(cell),
                "planted": sum(a in r["_planted"] for r in cell),
                "present": sum(r[f"artifact_{a}"] for r in cell),
            }
    return {
        "generator": _GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "status": "complete",
        "layout": "isic2016",
        "config": config.to_dict(),
        "jpeg_quality": JPEG_QUALITY,
        "artifact_codes": {a: k + 1 for k, a in enumerate(ARTIFACTS)},
        "artifact_map_rule": ("code of the artifact that changed the pixel's 8-bit value "
                              "before JPEG encoding; where several did, the later one in "
                              "artifact_codes order wins; never inside the lesion mask"),
        "counts": counts,
        "artifacts_realised": realised,
        "numpy_version": np.__version__,
        "pillow_version": PIL.__version__,
    }
