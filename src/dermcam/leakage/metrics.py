"""Per-image localisation metrics of CAM heatmaps against lesion masks.

Pure functions on arrays: no I/O, no plotting, no torch. Every per-image metric
takes

- ``cams``  ``(N, H, W)`` real, non-negative heatmaps (high = attended), and
- ``masks`` ``(N, H, W)`` bool or 0/1 lesion masks (True = lesion),

and returns an ``(N,)`` float64 array. Shapes that are not 3-D or that disagree
raise :class:`ValueError` naming both shapes.

Undefined cases give NaN, never a fake 0; :func:`score_batch` also returns the
reason per image (one of :data:`REASONS`, ``""`` when valid). Which metrics each
reason blanks is in :data:`UNDEFINED_WHEN`. In short: a heatmap that is all
zero, has a negative or a non-finite value blanks every heatmap metric (only
``lesion_area`` and ``chance_leakage`` stay); an empty mask blanks everything
that needs lesion pixels, a full mask everything that needs background pixels.

The reference study's three numbers are :func:`leakage`, :func:`inside_score`
and :func:`outside_score`. They do not correct for lesion size: under a uniform
heatmap the leakage equals the background share ``1 - lesion_area``, so a
large lesion "leaks" less without any better localisation. The size-aware
scores :func:`excess_leakage`, :func:`localisation_gain`, :func:`pixel_auroc`,
:func:`rank_accuracy` and :func:`pointing_game` each have a known chance level
(:data:`CHANCE`; ``lesion_area`` for the last two), stated in :data:`METRICS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["REASONS", "UNDEFINED_WHEN", "METRICS", "CHANCE", "Metric", "leakage",
           "inside_score", "outside_score", "lesion_area", "chance_leakage",
           "excess_leakage", "localisation_gain", "pixel_auroc", "rank_accuracy",
           "pointing_game", "artifact_mass", "score_batch"]

# Images per internal chunk: bounds the temporary memory (about 16 x H x W x 8 bytes
# per temporary) while keeping every operation vectorised.
_CHUNK = 16

# ---------------------------------------------------------------------------
# Reasons and which metrics they make undefined
# ---------------------------------------------------------------------------

#: Reasons an image's metrics are undefined, in order of precedence (the first
#: that applies is reported).
REASONS = ("nonfinite_heatmap", "negative_heatmap", "zero_heatmap", "empty_mask", "full_mask")

_HEATMAP_METRICS = frozenset({
    "leakage", "inside_score", "outside_score", "excess_leakage", "localisation_gain",
    "pixel_auroc", "rank_accuracy", "pointing_game",
})
_NEEDS_BOTH = frozenset({
    "leakage", "excess_leakage", "localisation_gain", "pixel_auroc", "rank_accuracy",
    "pointing_game",
})

#: reason -> the metrics set to NaN for an image with that reason. ``lesion_area``
#: and ``chance_leakage`` depend on the mask only and are always defined.
#: ``leakage`` is NaN for an empty mask (it would be 1 whatever the heatmap) and
#: for a full mask (it would be 0): a number that does not depend on the heatmap
#: is not a localisation measurement.
UNDEFINED_WHEN: dict[str, frozenset[str]] = {
    "nonfinite_heatmap": _HEATMAP_METRICS,
    "negative_heatmap": _HEATMAP_METRICS,
    "zero_heatmap": _HEATMAP_METRICS,
    "empty_mask": _NEEDS_BOTH | {"inside_score"},
    "full_mask": _NEEDS_BOTH | {"outside_score"},
}


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------

def _as_cams(cams, name: str = "cams") -> np.ndarray:
    arr = np.asarray(cams)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W), got shape {arr.shape}")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"{name} must have H, W > 0, got shape {arr.shape}")
    if arr.dtype == bool or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    elif arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
    elif arr.dtype.kind != "f":
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr


def _as_masks(masks, name: str = "masks") -> np.ndarray:
    arr = np.asarray(masks)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be bool or 0/1, got dtype {arr.dtype}")
    ok = (arr == 0) | (arr == 1)
    if not ok.all():
        bad = arr[~ok].flat[0]
        raise ValueError(
            f"{name} must be bool or 0/1, found the value {bad!r}: threshold the mask first "
            "(dermcam.data.images.mask_to_bool)"
        )
    return arr != 0


def _check_pair(cams, masks) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten to ``(N, H*W)``."""
    c = _as_cams(cams)
    m = _as_masks(masks)
    if c.shape != m.shape:
        raise ValueError(
            f"cams and masks must have the same (N, H, W) shape, got cams {c.shape} "
            f"and masks {m.shape}"
        )
    n = c.shape[0]
    p = c.shape[1] * c.shape[2]
    return c.reshape(n, p), m.reshape(n, p)


# ---------------------------------------------------------------------------
# Kernels on one chunk of flattened arrays
# ---------------------------------------------------------------------------

def _label_keys(c: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Unsigned keys ``(value bits << 1) | label`` that sort by value, then label.

    For non-negative floats the IEEE bit pattern is order-preserving and leaves
    the top bit free, so a float32 heatmap gives exact uint32 keys and a float64
    one exact uint64 keys; integer sorts are several times faster than
    ``argsort`` or ``scipy.stats.rankdata``. The sign bit is cleared (folding
    -0.0 into +0.0); rows with negative or non-finite values get meaningless keys,
    which is harmless because those rows are blanked (see :data:`UNDEFINED_WHEN`).
    """
    if c.dtype == np.float32:
        k = c.view(np.uint32) & np.uint32(0x7FFFFFFF)
    else:
        k = c.astype(np.float64, copy=False).view(np.uint64) & np.uint64(0x7FFFFFFFFFFFFFFF)
    np.left_shift(k, 1, out=k, dtype=k.dtype)
    np.bitwise_or(k, m, out=k, dtype=k.dtype)
    return k


def _chunk_reasons(c: np.ndarray, m: np.ndarray) -> np.ndarray:
    n, p = c.shape
    reasons = np.full(n, "", dtype=object)
    n_in = np.count_nonzero(m, axis=1)
    finite = np.isfinite(c).all(axis=1)
    with np.errstate(invalid="ignore"):
        negative = (c < 0).any(axis=1) & finite
        zero = ~(c != 0).any(axis=1) & finite
    # Assign in reverse precedence so the first applicable reason wins.
    reasons[n_in == p] = "full_mask"
    reasons[n_in == 0] = "empty_mask"
    reasons[zero] = "zero_heatmap"
    reasons[negative] = "negative_heatmap"
    reasons[~finite] = "nonfinite_heatmap"
    return reasons


def _chunk_metrics(c: np.ndarray, m: np.ndarray, wanted: set[str]) -> dict[str, np.ndarray]:
    """Raw metric values for a chunk; undefined cases are blanked by the caller."""
    n, p = c.shape
    out: dict[str, np.ndarray] = {}
    n_in = np.count_nonzero(m, axis=1).astype(np.float64)
    n_out = p - n_in
    area = n_in / p
    out["lesion_area"] = area
    out["chance_leakage"] = 1.0 - area

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mass_wanted = wanted & {"leakage", "inside_score", "outside_score", "excess_leakage",
                                "localisation_gain"}
        if mass_wanted:
            s_in = (c * m).sum(axis=1, dtype=np.float64)
            s_out = (c * ~m).sum(axis=1, dtype=np.float64)
            total = s_in + s_out
            leak = s_out / total
            out["leakage"] = leak
            out["inside_score"] = s_in / n_in
            out["outside_score"] = s_out / n_out
            out["excess_leakage"] = leak - (1.0 - area)
            out["localisation_gain"] = (1.0 - leak) / area

        if wanted & {"pixel_auroc", "rank_accuracy", "pointing_game"}:
            # Comparisons on the unsorted keys k: value == t  <=>  k in {2t, 2t+1};
            # value > t  <=>  k > 2t+1; the odd key 2t+1 marks a lesion pixel.
            k = _label_keys(c, m)
            ks = np.sort(k, axis=1)  # background before lesion among tied values
            one = k.dtype.type(1)
            if "pointing_game" in wanted:
                hi = (ks[:, -1] | one)[:, None]  # 2 * max + 1
                tied_in = np.count_nonzero(k == hi, axis=1)
                tied_all = tied_in + np.count_nonzero(k == hi - one, axis=1)
                out["pointing_game"] = tied_in / tied_all
            if "rank_accuracy" in wanted:
                kk = n_in.astype(np.int64)
                kth = np.clip(p - kk, 0, p - 1)
                hi = (ks[np.arange(n), kth] | one)[:, None]  # 2 * (k-th largest value) + 1
                above = k > hi
                n_above = np.count_nonzero(above, axis=1)
                above_in = np.count_nonzero(above & m, axis=1)
                tied_in = np.count_nonzero(k == hi, axis=1)
                tied_all = tied_in + np.count_nonzero(k == hi - one, axis=1)
                out["rank_accuracy"] = (above_in + (kk - n_above) * tied_in / tied_all) / kk
            if "pixel_auroc" in wanted:
                # Sum of 0-based sorted positions of the lesion pixels, once with
                # background first among ties and once with lesion first: their
                # mean is the sum of average ranks (the Mann-Whitney tie rule).
                # einsum, not ``@``: a threaded BLAS gemv is ~50x slower on a busy machine.
                pos = np.arange(p, dtype=np.float64)
                r_bg_first = np.einsum("ij,j->i", (ks & one).astype(np.float64), pos)
                del ks
                np.bitwise_xor(k, one, out=k)  # flip labels: lesion now sorts first
                k.sort(axis=1)
                r_lesion_first = pos.sum() - np.einsum("ij,j->i", (k & one).astype(np.float64),
                                                       pos)
                u = 0.5 * (r_bg_first + r_lesion_first) - n_in * (n_in - 1) / 2.0
                out["pixel_auroc"] = u / (n_in * n_out)
    return {k: v for k, v in out.items() if k in wanted}


def _score(cams, masks, wanted: Iterable[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    c, m = _check_pair(cams, masks)
    wanted = set(wanted)
    n = c.shape[0]
    values = {k: np.full(n, np.nan) for k in wanted}
    reasons = np.full(n, "", dtype=object)
    for s in range(0, n, _CHUNK):
        cc, mm = c[s:s + _CHUNK], m[s:s + _CHUNK]
        rr = _chunk_reasons(cc, mm)
        vals = _chunk_metrics(cc, mm, wanted)
        for reason, blanked in UNDEFINED_WHEN.items():
            hit = rr == reason
            if hit.any():
                for k in blanked & wanted:
                    vals[k][hit] = np.nan
        for k in wanted:
            values[k][s:s + _CHUNK] = vals[k]
        reasons[s:s + _CHUNK] = rr
    return values, reasons


# ---------------------------------------------------------------------------
# Per-image metrics: (N, H, W), (N, H, W) -> (N,)
# ---------------------------------------------------------------------------

def leakage(cams, masks) -> np.ndarray:
    """Study metric: share of heatmap mass outside the lesion, ``sum(cam*(1-mask))/sum(cam)``.

    ``(N, H, W)``, ``(N, H, W)`` -> ``(N,)`` in [0, 1], lower is better; equals
    ``1 - lesion_area`` for a uniform heatmap. NaN per :data:`UNDEFINED_WHEN`.
    """
    return _score(cams, masks, ["leakage"])[0]["leakage"]


def inside_score(cams, masks) -> np.ndarray:
    """Study metric: mean heatmap value over lesion pixels. ``(N, H, W)`` x2 -> ``(N,)``."""
    return _score(cams, masks, ["inside_score"])[0]["inside_score"]


def outside_score(cams, masks) -> np.ndarray:
    """Study metric: mean heatmap value over background pixels. ``(N, H, W)`` x2 -> ``(N,)``."""
    return _score(cams, masks, ["outside_score"])[0]["outside_score"]


def lesion_area(masks) -> np.ndarray:
    """Share of the image covered by the lesion mask. ``(N, H, W)`` -> ``(N,)`` in [0, 1]."""
    m = _as_masks(masks)
    if m.shape[1] == 0 or m.shape[2] == 0:
        raise ValueError(f"masks must have H, W > 0, got shape {m.shape}")
    return np.count_nonzero(m.reshape(m.shape[0], -1), axis=1) / float(m.shape[1] * m.shape[2])


def chance_leakage(masks) -> np.ndarray:
    """Leakage of a uniform heatmap, ``1 - lesion_area``. ``(N, H, W)`` -> ``(N,)``."""
    return 1.0 - lesion_area(masks)


def excess_leakage(cams, masks) -> np.ndarray:
    """``leakage - chance_leakage``: 0 = no better than uniform, negative = better.

    ``(N, H, W)`` x2 -> ``(N,)`` in [-1, 1], lower is better.
    """
    return _score(cams, masks, ["excess_leakage"])[0]["excess_leakage"]


def localisation_gain(cams, masks) -> np.ndarray:
    """``(1 - leakage) / lesion_area``: on-lesion mass share over the lesion's area share.

    1 = no better than uniform, higher is better (at most ``1/lesion_area``). This is
    Quantus's relevance mass accuracy divided by the area. ``(N, H, W)`` x2 -> ``(N,)``.
    """
    return _score(cams, masks, ["localisation_gain"])[0]["localisation_gain"]


def pixel_auroc(cams, masks) -> np.ndarray:
    """AUROC of the heatmap values as a pixel classifier of the mask; 0.5 = chance.

    Mann-Whitney form with average ranks for ties (tied lesion/background pairs
    count one half), identical to ``sklearn.metrics.roc_auc_score(mask, cam)`` per
    image. Computed from two integer sorts per chunk instead of
    ``scipy.stats.rankdata`` (which takes about 3 s for 379 images of 224 x 224).
    ``(N, H, W)`` x2 -> ``(N,)`` in [0, 1], higher is better; 0 = inverted heatmap.
    """
    return _score(cams, masks, ["pixel_auroc"])[0]["pixel_auroc"]


def rank_accuracy(cams, masks, ties: str = "average") -> np.ndarray:
    """Share of the top-k heatmap pixels that lie in the lesion, k = lesion pixel count.

    Equals Quantus's ``RelevanceRankAccuracy`` when the heatmap has no tie at the
    k-th value. Ties at the boundary (common: Grad-CAM heatmaps are ReLU'd, so many
    pixels are exactly 0):

    - ``ties="average"`` (default): the tied group straddling the top-k boundary
      contributes its in-lesion share times the slots left, i.e. the expected
      score under random tie-breaking. Deterministic and free of spatial bias; a
      uniform heatmap scores ``lesion_area`` (chance).
    - ``ties="stable"``: a stable descending argsort, so tied pixels earlier in
      raster order (top rows) win. Reproducible but biased; for comparison only.

    ``(N, H, W)`` x2 -> ``(N,)`` in [0, 1], higher is better; chance = ``lesion_area``.
    """
    if ties == "average":
        return _score(cams, masks, ["rank_accuracy"])[0]["rank_accuracy"]
    if ties != "stable":
        raise ValueError(f"ties must be 'average' or 'stable', got {ties!r}")
    values, reasons = _score(cams, masks, ["lesion_area"])
    c, m = _check_pair(cams, masks)
    n, p = c.shape
    out = np.full(n, np.nan)
    k = np.count_nonzero(m, axis=1)
    ar = np.arange(p)
    for s in range(0, n, _CHUNK):
        cc, mm, kk = c[s:s + _CHUNK], m[s:s + _CHUNK], k[s:s + _CHUNK]
        with np.errstate(invalid="ignore"):
            order = np.argsort(-cc.astype(np.float64), axis=1, kind="stable")
            hits = np.count_nonzero(np.take_along_axis(mm, order, axis=1) & (ar < kk[:, None]),
                                    axis=1)
            out[s:s + _CHUNK] = hits / kk
    out[np.isin(reasons, [r for r, b in UNDEFINED_WHEN.items() if "rank_accuracy" in b])] = np.nan
    return out


def pointing_game(cams, masks) -> np.ndarray:
    """1.0 if the heatmap maximum lies in the lesion, else 0.0.

    Ties for the maximum: the score is the share of maximal pixels inside the
    lesion (the hit probability if one maximal pixel is picked at random), so a
    uniform heatmap scores ``lesion_area`` rather than a free hit; with a unique
    maximum it is exactly 0 or 1. ``(N, H, W)`` x2 -> ``(N,)``, higher is better.
    """
    return _score(cams, masks, ["pointing_game"])[0]["pointing_game"]


def artifact_mass(cams, artifact_maps, codes) -> dict:
    """Share of heatmap mass on each artifact's pixels (hair, ruler, ink, ...).

    ``cams`` ``(N, H, W)``. ``artifact_maps`` is either

    - ``(N, H, W)`` integer label map with ``codes`` a mapping ``name -> label value``
      or a sequence of label values (used as the dict keys), or
    - ``(N, A, H, W)`` bool/0-1 stack (artifacts may overlap) with ``codes`` a
      sequence of ``A`` names, one per channel.

    Returns ``{code: (N,) float}``: ``sum(cam * artifact) / sum(cam)``, NaN where
    that artifact has no pixels in the image or the heatmap is zero, negative or
    non-finite.
    """
    c = _as_cams(cams)
    n, h, w = c.shape
    a = np.asarray(artifact_maps)
    if a.ndim == 4:
        if a.shape[0] != n or a.shape[2:] != (h, w):
            raise ValueError(f"artifact_maps (N, A, H, W) {a.shape} does not match cams {c.shape}")
        if isinstance(codes, Mapping) or len(codes) != a.shape[1]:
            raise ValueError(
                f"for (N, A, H, W) artifact_maps, codes must be a sequence of A={a.shape[1]} "
                f"names, got {codes!r}"
            )
        layers = {code: _as_masks(a[:, i], "artifact_maps") for i, code in enumerate(codes)}
    elif a.ndim == 3:
        if a.shape != c.shape:
            raise ValueError(f"artifact_maps (N, H, W) {a.shape} does not match cams {c.shape}")
        items = codes.items() if isinstance(codes, Mapping) else ((v, v) for v in codes)
        layers = {name: a == value for name, value in items}
    else:
        raise ValueError(
            f"artifact_maps must be (N, H, W) labels or (N, A, H, W) masks, got shape {a.shape}"
        )
    flat = c.reshape(n, -1)
    with np.errstate(invalid="ignore"):
        total = flat.sum(axis=1, dtype=np.float64)
        bad = ~np.isfinite(flat).all(axis=1) | (flat < 0).any(axis=1) | (total == 0)
    out = {}
    zero = np.zeros((), dtype=flat.dtype)
    for name, layer in layers.items():
        lf = layer.reshape(n, -1)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(lf, flat, zero).sum(axis=1, dtype=np.float64) / total
        share[bad | ~lf.any(axis=1)] = np.nan
        out[name] = share
    return out


class Metric(NamedTuple):
    """A registry entry: unpacks as ``(function, higher_is_better, definition)``."""

    function: Callable
    higher_is_better: bool | None  # None: a descriptor, no better direction
    definition: str


#: name -> (function, higher_is_better, one-line definition).
#: The CLI and the report take their metric choices from here.
METRICS: dict[str, Metric] = {
    "leakage": Metric(
        leakage, False,
        "share of heatmap mass outside the lesion, sum(cam*(1-mask))/sum(cam) (study metric)"),
    "inside_score": Metric(
        inside_score, True, "mean heatmap value inside the lesion (study metric)"),
    "outside_score": Metric(
        outside_score, False, "mean heatmap value outside the lesion (study metric)"),
    "lesion_area": Metric(
        lesion_area, None, "share of the image covered by the lesion mask"),
    "chance_leakage": Metric(
        chance_leakage, None, "leakage of a uniform heatmap, 1 - lesion_area"),
    "excess_leakage": Metric(
        excess_leakage, False,
        "leakage - (1 - lesion_area); 0 = uniform attention, negative = better"),
    "localisation_gain": Metric(
        localisation_gain, True,
        "(1 - leakage) / lesion_area; 1 = uniform attention, higher = better"),
    "pixel_auroc": Metric(
        pixel_auroc, True,
        "AUROC of heatmap values separating lesion from background pixels; 0.5 = chance"),
    "rank_accuracy": Metric(
        rank_accuracy, True,
        "share of the top-k pixels (k = lesion pixel count) inside the lesion; "
        "chance = lesion area"),
    "pointing_game": Metric(
        pointing_game, True,
        "1 if the heatmap maximum is inside the lesion (share of tied maxima); "
        "chance = lesion area"),
}


#: The score a uniform heatmap gets, for metrics where it does not depend on the
#: image (rank_accuracy and pointing_game have chance = lesion_area instead).
CHANCE: dict[str, float] = {"excess_leakage": 0.0, "localisation_gain": 1.0, "pixel_auroc": 0.5}


def score_batch(cams, masks) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every metric in :data:`METRICS` for a batch, with a reason per image.

    ``(N, H, W)``, ``(N, H, W)`` -> (``{name: (N,) float64}``, ``(N,)`` object array
    of reason strings, ``""`` when every metric is defined). Shared work (sums and
    sorts) is done once; 379 images of 224 x 224 take a fraction of a second.
    Undefined cases are NaN per :data:`UNDEFINED_WHEN`, never an exception.
    """
    values, reasons = _score(cams, masks, METRICS)
    values = {k: values[k] for k in METRICS}
    if len(reasons):
        bad = reasons != ""
        if bad.any():
            counts = pd.Series(reasons[bad]).value_counts().to_dict()
            log.info("score_batch: %d of %d images have undefined metrics: %s",
                     int(bad.sum()), len(reasons), counts)
    return values, reasons
