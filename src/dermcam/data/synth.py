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

How an image is made (all vectorised numpy, no per-pixel Python loops):

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
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image, ImageDraw

from dermcam.data.isic2016 import (
    ARTIFACT_SUFFIX,
    MASK_SUFFIX,
    TEST_CSV,
    TEST_DIR,
    TRAIN_CSV,
    TRAIN_DIR,
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

ARTIFACTS: tuple[str, ...] = ("ruler", "ink", "patch", "vignette", "hair")
"""Artifact names; the code written in the artifact map is ``index + 1`` (0 = none)."""

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


# --------------------------------------------------------------------------- helpers

@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(xx, yy)``, each ``(S, S)`` float32, read-only."""
    c = np.arange(size, dtype=np.float32) + 0.5
    xx, yy = np.meshgrid(c, c)
    xx.flags.writeable = False
    yy.flags.writeable = False
    return xx, yy


@lru_cache(maxsize=256)
def _cubic_matrix(size: int, n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(size, n + 4)`` Catmull-Rom weights that interpolate ``n + 4`` coarse samples at
    ``size`` evenly spaced points of ``[1, n + 2)``, its transpose (both read-only), and
    the RMS gain that makes upsampled unit white noise unit variance on average."""
    x = 1.0 + (np.arange(size) + 0.5) * (n + 1) / size  # in [1, n + 2): taps stay in range
    i0 = np.floor(x).astype(int)
    t = x - i0
    w = np.stack([((-0.5 * t + 1.0) * t - 0.5) * t,
                  (1.5 * t - 2.5) * t * t + 1.0,
                  ((-1.5 * t + 2.0) * t + 0.5) * t,
                  (0.5 * t - 0.5) * t * t], axis=1)
    m = np.zeros((size, n + 4), np.float32)
    for k in range(4):
        np.add.at(m, (np.arange(size), np.clip(i0 - 1 + k, 0, n + 3)), w[:, k])
    gain = float(np.sqrt(np.mean(np.sum(m.astype(np.float64) ** 2, axis=1))))
    mt = np.ascontiguousarray(m.T)
    m.flags.writeable = False
    mt.flags.writeable = False
    return m, mt, gain


def _noise(rng: np.random.Generator, size: int, cells: float,
           win: tuple[slice, slice] | None = None) -> np.ndarray:
    """Smooth Gaussian noise with about ``cells`` features across the image: ``(S, S)``
    float32, mean 0 and variance about 1 (separable bicubic upsampling of a coarse random
    grid), or only its ``win = (rows, cols)`` window, with the same random draws."""
    n = max(2, int(round(cells)))
    m, mt, gain = _cubic_matrix(size, n)
    g = rng.standard_normal((n + 4, n + 4), dtype=np.float32)
    if win is not None:
        m, mt = m[win[0]], mt[:, win[1]]
    # einsum (not matmul): numpy's own loops, so no BLAS threads and no dependence of the
    # result on the BLAS build's blocking; keeps files byte-identical run to run
    a = np.einsum("ik,kj->ij", np.einsum("ik,kj->ij", m, g), mt)
    a *= np.float32(1.0 / (gain * gain))
    return a


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _canvas(size: int, ss: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    im = Image.new("L", (size * ss, size * ss), 0)
    return im, ImageDraw.Draw(im)


def _canvas_alpha(im: Image.Image, size: int) -> np.ndarray:
    """Box-downsample a supersampled drawing to an ``(S, S)`` alpha in [0, 1]."""
    small = im.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _supersample(size: int) -> int:
    return 4 if size <= 128 else 2


# --------------------------------------------------------------------------- skin

# Light (fair) and darker skin endpoints, for a yellow-brown and a pink hue.
_SKIN_LIGHT = (np.array([236, 212, 188], np.float32), np.array([240, 203, 200], np.float32))
_SKIN_DARK = (np.array([168, 118, 86], np.float32), np.array([160, 108, 94], np.float32))


def _skin(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skin ``(S, S, 3)`` float32, its mean colour ``(3,)`` and texture modulation ``(S, S)``."""
    tone = float(rng.beta(1.5, 4.0))           # 0 fair .. 1 darker; ISIC is mostly fair skin
    hue = float(rng.uniform())                 # 0 yellow-brown .. 1 pink
    light = _SKIN_LIGHT[0] * (1 - hue) + _SKIN_LIGHT[1] * hue
    dark = _SKIN_DARK[0] * (1 - hue) + _SKIN_DARK[1] * hue
    base = (light * (1 - tone) + dark * tone) * np.float32(rng.uniform(0.93, 1.03))
    blotch = (_noise(rng, size, rng.uniform(3, 5)) * rng.uniform(0.015, 0.035)
              + _noise(rng, size, rng.uniform(9, 14)) * rng.uniform(0.006, 0.015))
    texture = 1.0 + blotch
    skin = base[None, None, :] * texture[..., None]
    red = np.maximum(_noise(rng, size, rng.uniform(3, 6)), 0.0) * rng.uniform(0.0, 0.035)
    skin[..., 1] *= 1.0 - red
    skin[..., 2] *= 1.0 - 0.6 * red
    return skin, base, texture


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dermoscope illumination ``(S, S)``: bright centre, gentle fall-off and tilt."""
    xx, yy = _grid(size)
    cx, cy = (float(v) for v in size * (0.5 + rng.uniform(-0.08, 0.08, 2)))
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / np.float32((0.7 * size) ** 2)
    ang = rng.uniform(0, 2 * np.pi)
    tilt = ((xx - size / 2) * math.cos(ang) + (yy - size / 2) * math.sin(ang)) / size
    return (1.0 - rng.uniform(0.03, 0.12) * r2 + rng.uniform(0.0, 0.06) * tilt).astype(np.float32)


# --------------------------------------------------------------------------- lesion

# Lesion colours as seen on fair skin (sRGB). Pigments are applied as absorbance
# (transmittance relative to _REF_SKIN), so they darken any skin tone consistently;
# white (regression) is blended over.
_REF_SKIN = np.array([238, 210, 195], np.float32)
_COLOURS: dict[str, tuple[int, int, int]] = {
    "light_brown": (182, 122, 78),
    "dark_brown": (100, 58, 36),
    "black": (40, 32, 32),
    "blue_grey": (108, 116, 142),
    "red": (196, 70, 78),
    "white": (236, 230, 230),
}
_EXTRA_COLOURS = ("black", "blue_grey", "red", "white")
_EXTRA_WEIGHTS = np.array([0.33, 0.30, 0.20, 0.17])


def _colour_set(rng: np.random.Generator, label: int) -> list[str]:
    """Distinct lesion colours: benign mostly 1-2 browns, malignant mostly 2-5 colours."""
    if label == 0:
        n = int(rng.choice([1, 2, 3], p=[0.55, 0.40, 0.05]))
    else:
        n = int(rng.choice([1, 2, 3, 4, 5], p=[0.03, 0.15, 0.35, 0.30, 0.17]))
    browns = ["light_brown", "dark_brown"]
    if n == 1:
        return [browns[int(rng.uniform() < 0.4)]]
    both_browns = rng.uniform() < (0.8 if label == 0 else 0.75)
    chosen = list(browns) if both_browns else [browns[int(rng.uniform() < 0.5)]]
    k = n - len(chosen)
    if k > 0:
        idx = rng.choice(len(_EXTRA_COLOURS), size=min(k, 4), replace=False, p=_EXTRA_WEIGHTS)
        chosen += [_EXTRA_COLOURS[i] for i in sorted(idx)]
    return chosen


def _lesion_params(rng: np.random.Generator, label: int) -> dict[str, Any]:
    """Shape and colour parameters; the ABCD cues differ by label, with overlap."""
    mal = label == 1

    def lognorm(median: float, sd: float) -> float:
        return float(np.exp(rng.normal(math.log(median), sd)))

    params: dict[str, Any] = {
        "area": float(np.clip(lognorm(0.23 if mal else 0.14, 0.5), 0.03, 0.5)),
        "asymmetry": float(np.clip(lognorm(0.11 if mal else 0.06, 0.5), 0.005, 0.35)),
        "border": float(np.clip(lognorm(0.05 if mal else 0.022, 0.5), 0.003, 0.15)),
        "elongation": float(rng.uniform(0.0, 0.16)),
        "edge_width": float(rng.uniform(0.08, 0.4) if mal else rng.uniform(0.18, 0.5)),
        "edge_alpha": float(rng.uniform(0.4, 0.75) if mal else rng.uniform(0.25, 0.55)),
        "colours": _colour_set(rng, label),
    }
    return params


def _radius_table(rng: np.random.Generator, p: dict[str, Any], n: int = 2048):
    """Relative radius ``f(theta)`` on ``n`` angles (mean about 1) and the angles."""
    th = np.linspace(-np.pi, np.pi, n, endpoint=False)
    f = np.ones(n)
    f += p["elongation"] * np.cos(2 * (th - rng.uniform(0, np.pi)))
    # asymmetry: harmonics 1 and 3 with unrelated phases, RMS = asymmetry
    psi = rng.uniform(0.25, 1.3)
    a1, a3 = math.cos(psi), math.sin(psi)
    asym = (a1 * np.cos(th - rng.uniform(0, 2 * np.pi))
            + a3 * np.cos(3 * th - rng.uniform(0, 2 * np.pi)))
    f += p["asymmetry"] * asym / (asym.std() + 1e-9)
    # border irregularity: harmonics 4..24, 1/k^1.1 spectrum, RMS = border
    k = np.arange(4, 25)
    amp = rng.standard_normal((2, k.size)) * k ** -1.1
    bord = amp[0] @ np.cos(np.outer(k, th)) + amp[1] @ np.sin(np.outer(k, th))
    f += p["border"] * bord / (bord.std() + 1e-9)
    return th, np.maximum(f, 0.35)


def _paint_lesion(rng: np.random.Generator, size: int, skin: np.ndarray, base: np.ndarray,
                  texture: np.ndarray, p: dict[str, Any]) -> tuple[np.ndarray, float]:
    """Paint the lesion onto ``skin`` ``(S, S, 3)`` in place (``texture (S, S)``).

    Pigment is an absorbance field ``A`` applied as ``skin * exp(-A * d)``, with
    ``d`` the pigment density that fades towards the border inside the mask (so edges
    fade to a lighter shade of the same colour, as real pigment does). White (regression)
    is blended over. Returns the mask ``(S, S)`` bool and its Feret diameter in pixels.
    """
    th_tab, f_tab = _radius_table(rng, p)
    r0 = math.sqrt(p["area"] * size * size / (math.pi * float(np.mean(f_tab ** 2))))
    r0 *= min(1.0, 0.47 * size / (r0 * float(f_tab.max())))  # keep it inside the image
    reach = r0 * float(f_tab.max())
    jitter = min(0.07 * size, max(0.0, 0.47 * size - reach))
    cx, cy = (float(v) for v in 0.5 * size + rng.uniform(-jitter, jitter, 2))
    # work on the lesion's bounding box (+2 px for the anti-aliasing halo) only
    ex, ey = r0 * f_tab * np.cos(th_tab), r0 * f_tab * np.sin(th_tab)
    x0, x1 = max(0, int(cx + ex.min()) - 2), min(size, int(math.ceil(cx + ex.max())) + 3)
    y0, y1 = max(0, int(cy + ey.min()) - 2), min(size, int(math.ceil(cy + ey.max())) + 3)
    win = (slice(y0, y1), slice(x0, x1))
    xx, yy = _grid(size)
    xx, yy = xx[win], yy[win]
    skin, texture = skin[win], texture[win]  # views: painting them paints the image

    def noise(cells: float) -> np.ndarray:
        return _noise(rng, size, cells, win)

    dx, dy = xx - cx, yy - cy
    r = np.hypot(dx, dy)
    rad = r0 * np.interp(np.arctan2(dy, dx), th_tab, f_tab, period=2 * np.pi).astype(np.float32)
    rho = r / rad
    mask = rho < 1.0
    if not mask.any():  # cannot happen for area >= 0.03 and size >= 32; be safe
        mask[int(cy) - y0, int(cx) - x0] = True

    # pigment density: an off-centre core (offset grows with asymmetry) plus mottling
    off = p["asymmetry"] * 2.2 * r0
    ang = rng.uniform(0, 2 * np.pi)
    core = np.hypot(xx - (cx + off * math.cos(ang)), yy - (cy + off * math.sin(ang))) / r0
    dens = (1.0 - 0.6 * np.minimum(core, 1.6) ** 2 + 0.45 * noise(rng.uniform(4, 7))
            + 0.2 * noise(rng.uniform(12, 20)))
    inside = dens[mask]

    absorb = {name: _absorbance(name, rng) for name in p["colours"]}
    browns = [c for c in p["colours"] if c in ("light_brown", "dark_brown")]
    if len(browns) == 2:
        thr = float(np.quantile(inside, 1.0 - rng.uniform(0.3, 0.6)))
        t = _smoothstep((dens - thr) / 0.5 + 0.5)[..., None]
        A = absorb["light_brown"] * (1 - t) + absorb["dark_brown"] * t
    else:
        z = np.clip((dens - inside.mean()) / (inside.std() + 1e-6), -2.0, 2.0)
        A = absorb[browns[0]] * (1.0 + 0.12 * z)[..., None]
    # fine grainy mottling
    A *= (1.0 + 0.08 * noise(min(size / 4, 50)))[..., None]

    # pigment-network-like reticulation: zero crossings of band-limited noise
    if rng.uniform() < 0.65:
        cells = min(rng.uniform(40, 60), size / 3.2)
        lines = np.exp(-(noise(cells) / 0.45) ** 2)
        strength = rng.uniform(0.25, 0.5)
        if p["asymmetry"] > 0.08:  # atypical: broken, uneven network
            strength = strength * np.clip(0.6 + 0.8 * noise(5), 0.0, 1.6)
        A *= (1.0 + strength * lines)[..., None]

    # extra colours as soft, mottled regions inside the lesion
    interior = _smoothstep((1.0 - rho) / 0.15)
    white = None
    for name in ("red", "blue_grey", "white", "black"):
        if name not in absorb:
            continue
        field = noise(rng.uniform(3, 6)) + 0.3 * noise(14)
        if name in ("white", "black"):
            field = field + (1.2 if name == "white" else 0.8) * (1.0 - np.minimum(core, 1.5))
        cover = rng.uniform(0.08, 0.16) if name == "black" else rng.uniform(0.12, 0.3)
        thr = float(np.quantile(field[mask], 1.0 - cover))
        peak = {"red": (0.55, 0.85), "blue_grey": (0.6, 0.9), "white": (0.45, 0.75),
                "black": (0.75, 0.95)}[name]
        mottle = np.clip(0.75 + 0.35 * noise(min(size / 6, 30)), 0.3, 1.0)
        a = _smoothstep((field - thr) / 0.8 + 0.3) * rng.uniform(*peak) * mottle * interior
        if name == "white":
            white = a
        else:
            A += (absorb[name] - A) * a[..., None]

    # globules / dots: irregular black dots, or regular brown globules
    if "black" in absorb or rng.uniform() < 0.35:
        irregular = "black" in absorb
        dot_a = absorb["black"] if irregular else absorb.get("dark_brown", A.max((0, 1)) * 1.6)
        n_dots = int(rng.integers(4, 22))
        g_th = rng.uniform(-np.pi, np.pi, n_dots)
        g_rho = (rng.uniform(0.2, 0.85, n_dots) if irregular
                 else np.sqrt(rng.uniform(0.0, 0.7, n_dots)))
        g_rad = np.interp(g_th, th_tab, f_tab, period=2 * np.pi) * r0 * g_rho
        gx, gy = cx + g_rad * np.cos(g_th), cy + g_rad * np.sin(g_th)
        sig = (rng.uniform(0.004, 0.016, n_dots) if irregular
               else np.full(n_dots, rng.uniform(0.006, 0.01))) * size
        sig = np.maximum(sig, 0.6)
        dots = np.zeros(mask.shape, np.float32)
        for gxi, gyi, s in zip(gx - x0, gy - y0, sig):  # window coordinates
            h = int(math.ceil(3 * s))
            xa, xb = max(0, int(gxi) - h), min(mask.shape[1], int(gxi) + h + 1)
            ya, yb = max(0, int(gyi) - h), min(mask.shape[0], int(gyi) + h + 1)
            if xa >= xb or ya >= yb:
                continue
            d2 = (xx[ya:yb, xa:xb] - x0 - gxi) ** 2 + (yy[ya:yb, xa:xb] - y0 - gyi) ** 2
            np.maximum(dots[ya:yb, xa:xb], np.exp(-d2 / (2 * s * s)), out=dots[ya:yb, xa:xb])
        A += (dot_a - A) * (dots * rng.uniform(0.7, 0.95) * interior)[..., None]

    # density: fades inside the mask towards the border; <= 1 px anti-aliasing halo outside
    d = p["edge_alpha"] + (1.0 - p["edge_alpha"]) * _smoothstep((1.0 - rho) / p["edge_width"])
    d *= np.clip(1.0 + 0.15 * noise(rng.uniform(8, 14)), 0.7, 1.0)
    halo = np.clip(1.0 - (r - rad), 0.0, 1.0) * p["edge_alpha"] * 0.5
    d = np.where(mask, d, halo)
    skin *= np.exp(-A * d[..., None])
    if white is not None:
        col = np.array(_COLOURS["white"], np.float32) * np.float32(rng.uniform(0.92, 1.02))
        skin += (col * (0.9 + 0.1 * texture)[..., None] - skin) * (white * d)[..., None]
    full = np.zeros((size, size), bool)
    full[win] = mask
    return full, _feret(mask)


def _absorbance(name: str, rng: np.random.Generator) -> np.ndarray:
    """Absorbance ``(3,)`` of a lesion colour: ``-log`` of its transmittance on fair skin."""
    ref = np.asarray(_COLOURS[name], np.float32) * np.float32(rng.uniform(0.92, 1.06))
    ref = ref * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    return (-np.log(np.clip(ref / _REF_SKIN, 0.03, 1.0))).astype(np.float32)


def _feret(mask: np.ndarray, n_dir: int = 64) -> float:
    """Maximum Feret diameter of a binary mask in pixels (pixel extent included)."""
    edge = mask.copy()
    edge[1:-1, 1:-1] &= ~(mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:])
    ys, xs = np.nonzero(edge)
    if xs.size == 0:
        return 0.0
    ang = np.linspace(0, np.pi, n_dir, endpoint=False)
    proj = np.outer(xs, np.cos(ang)) + np.outer(ys, np.sin(ang))
    return float((proj.max(0) - proj.min(0)).max() + 1.0)


# --------------------------------------------------------------------------- artifacts

def _side_clearance(mask: np.ndarray) -> np.ndarray:
    """Free rows/columns between the lesion and the top, right, bottom, left edges."""
    rows = np.nonzero(mask.any(1))[0]
    cols = np.nonzero(mask.any(0))[0]
    s = mask.shape[0]
    return np.array([rows[0], s - 1 - cols[-1], s - 1 - rows[-1], cols[0]], dtype=float)


def _ruler(rng: np.random.Generator, size: int, mask: np.ndarray,
           lesion: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Dark band with tick marks along the edge with the most free skin."""
    ss = _supersample(size)
    clear = _side_clearance(mask)
    side = int(np.argmax(clear + rng.uniform(0, 0.05 * size, 4)))
    width = rng.uniform(0.045, 0.07) * size
    room = clear[side] - width - 0.03 * size
    dist = float(np.clip(rng.uniform(0.05, 0.11) * size, 0.05 * size, max(0.05 * size, room)))
    tilt = math.radians(rng.uniform(-7, 7))
    im, draw = _canvas(size, ss)
    # draw for the top edge; the canvas is rotated to ``side`` below (square images)
    c, sn = math.cos(tilt), math.sin(tilt)
    mid = np.array([0.5 * size, dist])

    def pt(u, v):  # u along the ruler from its middle, v inwards
        x, y = mid + np.array([u * c - v * sn, u * sn + v * c])
        return (float(x * ss), float(y * ss))

    half = 0.75 * size
    draw.polygon([pt(-half, 0), pt(half, 0), pt(half, width), pt(-half, width)], fill=150)
    band = _canvas_alpha(im, size)
    im2, draw2 = _canvas(size, ss)
    step = rng.uniform(0.035, 0.05) * size
    lw = max(1, int(round(rng.uniform(0.004, 0.007) * size * ss)))
    for j, u in enumerate(np.arange(-half, half, step)):
        length = (0.55 if j % 5 == 0 else 0.3) * width
        draw2.line([pt(u, width - length), pt(u, width + 0.35 * length)], fill=255, width=lw)
    ticks = _canvas_alpha(im2, size)
    k = side  # top, right, bottom, left -> rotate the top drawing clockwise k quarter turns
    band, ticks = np.rot90(band, -k), np.rot90(ticks, -k)
    dark = np.array([48, 42, 40], np.float32) * np.float32(rng.uniform(0.8, 1.2))
    tick_col = np.array([18, 16, 16], np.float32)
    alpha_b = band * rng.uniform(0.6, 0.85)
    col = np.where((ticks > band * 0.5)[..., None], tick_col, dark)
    alpha = np.maximum(alpha_b, ticks * 0.95)
    return alpha, col


def _ink(rng: np.random.Generator, size: int, mask: np.ndarray,
         lesion: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Violet/blue pen mark: an arc round the lesion, or pen dots on free skin."""
    ss = _supersample(size)
    im, draw = _canvas(size, ss)
    cx, cy, reach = lesion["cx"], lesion["cy"], lesion["reach"]
    rad = reach + rng.uniform(0.05, 0.1) * size
    width = max(1, int(round(max(rng.uniform(0.012, 0.02) * size, 1.2) * ss)))
    if rad < 0.42 * size and rng.uniform() < 0.75:
        start = rng.uniform(0, 360)
        span = rng.uniform(110, 280)
        box = [(cx - rad) * ss, (cy - rad) * ss, (cx + rad) * ss, (cy + rad) * ss]
        draw.arc(box, start, start + span, fill=255, width=width)
    else:
        for _ in range(int(rng.integers(1, 4))):
            for _try in range(20):  # a point on free, visible skin
                ang = rng.uniform(0, 2 * np.pi)
                rr = rng.uniform(0.2, 0.42) * size
                x, y = 0.5 * size + rr * math.cos(ang), 0.5 * size + rr * math.sin(ang)
                if not mask[int(y), int(x)]:
                    break
            d = rng.uniform(0.015, 0.03) * size * ss
            if rng.uniform() < 0.5:
                draw.ellipse([x * ss - d, y * ss - d, x * ss + d, y * ss + d], fill=255)
            else:
                a2 = rng.uniform(0, 2 * np.pi)
                ln = rng.uniform(0.06, 0.14) * size * ss
                draw.line([(x * ss, y * ss), (x * ss + ln * math.cos(a2),
                                              y * ss + ln * math.sin(a2))], fill=255, width=width)
    alpha = _canvas_alpha(im, size)
    alpha *= np.clip(rng.uniform(0.6, 0.85) + 0.12 * _noise(rng, size, 20), 0.3, 1.0)
    hues = [(118, 64, 158), (92, 58, 150), (62, 78, 168)]
    col = np.array(hues[int(rng.integers(len(hues)))], np.float32)
    return alpha, col


def _patch(rng: np.random.Generator, size: int, mask: np.ndarray,
           lesion: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Colour calibration patch (square with a dark rim, or a disc) towards a corner."""
    ss = _supersample(size)
    half = rng.uniform(0.035, 0.06) * size
    # the diagonal direction with the least lesion nearby, inside the always-visible field
    best, where = None, None
    for ang in np.deg2rad([45, 135, 225, 315]) + rng.uniform(-0.2, 0.2):
        rr = 0.44 * size - half * 1.5
        x, y = 0.5 * size + rr * math.cos(ang), 0.5 * size + rr * math.sin(ang)
        ya, yb = int(max(0, y - 2 * half)), int(min(size, y + 2 * half + 1))
        xa, xb = int(max(0, x - 2 * half)), int(min(size, x + 2 * half + 1))
        overlap = mask[ya:yb, xa:xb].sum()
        if best is None or overlap < best:
            best, where = overlap, (x, y)
    x, y = where
    im, draw = _canvas(size, ss)
    box = [(x - half) * ss, (y - half) * ss, (x + half) * ss, (y + half) * ss]
    palette = [(200, 40, 40), (40, 150, 60), (40, 70, 180), (230, 200, 40), (128, 128, 128),
               (245, 245, 245)]
    fill = np.array(palette[int(rng.integers(len(palette)))], np.float32)
    if rng.uniform() < 0.6:
        draw.rectangle(box, fill=255)
        alpha = _canvas_alpha(im, size)
        im2, draw2 = _canvas(size, ss)
        rim = max(1, int(round(0.008 * size * ss)))
        draw2.rectangle(box, outline=255, width=rim)
        rim_a = _canvas_alpha(im2, size)
        col = np.where((rim_a > 0.5)[..., None], np.array([25, 25, 25], np.float32), fill)
    else:
        draw.ellipse(box, fill=255)
        alpha = _canvas_alpha(im, size)
        col = fill
    return alpha, col


def _vignette(rng: np.random.Generator, size: int, mask: np.ndarray,
              lesion: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Dark corners outside the dermoscope's circular field of view."""
    xx, yy = _grid(size)
    cx, cy = (float(v) for v in size * (0.5 + rng.uniform(-0.02, 0.02, 2)))
    rad = rng.uniform(0.5, 0.66) * size
    soft = max(1.0, 0.025 * size)
    alpha = _smoothstep((np.hypot(xx - cx, yy - cy) - rad) / soft + 0.5)
    col = np.array([10, 8, 8], np.float32) * np.float32(rng.uniform(0.5, 2.0))
    return alpha.astype(np.float32), col


def _hair(rng: np.random.Generator, size: int, mask: np.ndarray,
          lesion: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """A few thin dark curved hairs (quadratic Bezier curves)."""
    ss = _supersample(size)
    im, draw = _canvas(size, ss)
    t = np.linspace(0, 1, 48)[:, None]
    for _ in range(int(rng.integers(2, 8))):
        ang = rng.uniform(0, 2 * np.pi)
        rr = rng.uniform(0.0, 0.45) * size
        p0 = np.array([0.5 * size + rr * math.cos(ang), 0.5 * size + rr * math.sin(ang)])
        d = rng.uniform(0, 2 * np.pi)
        ln = rng.uniform(0.25, 0.8) * size
        p2 = p0 + ln * np.array([math.cos(d), math.sin(d)])
        bend = rng.uniform(-0.3, 0.3) * ln
        p1 = (p0 + p2) / 2 + bend * np.array([-math.sin(d), math.cos(d)])
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        w = max(1, int(round(rng.uniform(0.004, 0.008) * size * ss)))
        draw.line([(float(a) * ss, float(b) * ss) for a, b in pts], fill=255, width=w,
                  joint="curve")
    alpha = _canvas_alpha(im, size) * rng.uniform(0.8, 1.0)
    col = np.array([38, 28, 24], np.float32) * np.float32(rng.uniform(0.7, 1.5))
    return alpha, col


def _lesion_geometry(mask: np.ndarray) -> dict[str, float]:
    """Centre ``cx, cy`` and ``reach`` (largest centre-to-pixel distance) of a ``(S, S)`` mask.

    An empty mask counts as a point lesion in the image centre.
    """
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        c = 0.5 * mask.shape[0]
        return {"cx": c, "cy": c, "reach": 0.0}
    lesion = {"cx": float(xs.mean()) + 0.5, "cy": float(ys.mean()) + 0.5}
    lesion["reach"] = float(np.hypot(xs + 0.5 - lesion["cx"], ys + 0.5 - lesion["cy"]).max())
    return lesion


def _composite(img: np.ndarray, alpha: np.ndarray, col: np.ndarray, allowed: np.ndarray):
    """Blend a painter's output into ``img (S, S, 3) float32`` in place, only where ``allowed``.

    Returns ``(window, changed)``: the bounding window of the painted pixels and, within it,
    the ``bool`` pixels whose rounded value changed (``(None, None)`` when nothing painted).
    """
    alpha = np.where(allowed, np.clip(alpha, 0.0, 1.0), np.float32(0.0))
    rows, cols = np.nonzero(alpha.any(1))[0], np.nonzero(alpha.any(0))[0]
    if rows.size == 0:
        return None, None
    win = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    old = img[win]
    col = col[win] if np.ndim(col) == 3 else col
    new = old + (col - old) * alpha[win][..., None]
    np.clip(new, 0.0, 255.0, out=new)
    changed = (np.rint(new) != np.rint(old)).any(-1)
    old[changed] = new[changed]  # a view: writes into img
    return win, changed


def paint_artifact(image: np.ndarray, keep_clear: np.ndarray, name: str,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint artifact ``name`` (one of :data:`ARTIFACTS`) onto a copy of ``image``.

    ``image``: ``(S, S, 3) uint8``; ``keep_clear``: ``(S, S) bool``, pixels that must stay
    bit-identical (the lesion, usually dilated). The painter is the synthetic generator's
    own, placed by ``rng`` (same seed, same pixels). Returns ``(new (S, S, 3) uint8,
    changed (S, S) bool)``.
    """
    if name not in _PAINTERS:
        raise ValueError(f"unknown artifact {name!r}; choose from {', '.join(ARTIFACTS)}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"image must be (S, S, 3), got shape {image.shape}")
    keep_clear = np.asarray(keep_clear, bool)
    if keep_clear.shape != image.shape[:2]:
        raise ValueError(f"keep_clear must be {image.shape[:2]}, got {keep_clear.shape}")
    size = image.shape[0]
    img = image.astype(np.float32)
    alpha, col = _PAINTERS[name](rng, size, keep_clear, _lesion_geometry(keep_clear))
    win, ch = _composite(img, alpha, col, ~keep_clear)
    changed = np.zeros(image.shape[:2], bool)
    out = image.copy()
    if win is not None:
        changed[win] = ch
        out[changed] = np.rint(img[changed]).astype(np.uint8)
    return out, changed


# Each painter returns ``alpha (S, S)`` in [0, 1] and a colour ``(3,)`` or ``(S, S, 3)``;
# the caller zeroes alpha inside the lesion and composites ``img + (colour - img) * alpha``.
_PAINTERS = {"ruler": _ruler, "ink": _ink, "patch": _patch, "vignette": _vignette, "hair": _hair}


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


def _render(seed: int, split: str, index: int, label: int, size: int,
            rates: Mapping[str, Mapping[tuple[str, int], float]]) -> SynthSample:
    ss = np.random.SeedSequence([seed, _SPLIT_CODE[split], index])
    streams = [np.random.default_rng(s) for s in ss.spawn(2 + len(ARTIFACTS))]
    rng, rng_draw = streams[0], streams[1]

    skin, base, texture = _skin(rng, size)
    params = _lesion_params(rng, label)
    mask, diameter = _paint_lesion(rng, size, skin, base, texture, params)
    img = skin * _lighting(rng, size)[..., None]
    grain = rng.standard_normal((size, size), dtype=np.float32) * np.float32(rng.uniform(1.5, 3.5))
    img += grain[..., None]
    img += rng.random((size, size, 3), dtype=np.float32) * np.float32(3.4) - np.float32(1.7)
    np.clip(img, 0.0, 255.0, out=img)

    lesion = _lesion_geometry(mask)

    draws = rng_draw.random(len(ARTIFACTS))  # drawn in full, so rates never shift streams
    planted = _chosen(draws, split, label, rates)
    codes = np.zeros((size, size), np.uint8)
    outside = ~mask
    for k, name in enumerate(ARTIFACTS):
        if name not in planted:
            continue
        alpha, col = _PAINTERS[name](streams[2 + k], size, mask, lesion)
        win, changed = _composite(img, alpha, col, outside)
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
    ss = np.random.SeedSequence([seed, _SPLIT_CODE[split], index])
    draws = np.random.default_rng(ss.spawn(2 + len(ARTIFACTS))[1]).random(len(ARTIFACTS))
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
    write_bytes(folder / f"{image_id}.jpg", _jpeg_bytes(s.image))
    write_bytes(folder / f"{image_id}{MASK_SUFFIX}", _png_bytes(mask8))
    write_bytes(folder / f"{image_id}{ARTIFACT_SUFFIX}", _png_bytes(s.artifacts))
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
    jobs = []
    wanted: dict[str, set[str]] = {TRAIN_DIR: set(), TEST_DIR: set()}
    offset = 0
    for split, folder in (("train", TRAIN_DIR), ("test", TEST_DIR)):
        for i, y in enumerate(split_labels(config, split)):
            image_id = f"ISIC_{offset + i:07d}"
            wanted[folder].add(image_id)
            jobs.append((out / folder, image_id, int(config.seed), split, i, int(y)))
        offset += config.n_train if split == "train" else 0
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
        def make(job, _render_job=make):  # noqa: F811 - the reference-aware variant
            _, image_id, seed, split, index, label = job
            planted = _planted(seed, split, index, label, rates)
            row = ref_rows.get(image_id)
            if (row is not None and row.get("split") == split and row.get("label") == str(label)
                    and planted == _planted(seed, split, index, label, ref_rates)):
                reused = _reuse(job, row, Path(reference), planted)
                if reused is not None:
                    return reused
            return _render_job(job)

    rows = _run(jobs, make, n_workers, progress)

    # completeness markers last: ground truth, metadata, then synth.json
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
    log.info("synthetic data set complete: %s", out)
    return out


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
