"""Localisation metrics for CAM heatmaps against lesion masks, and their statistics.

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

The second half of the module holds the statistics run on a per-image table
(one row per image x model x method): :func:`summarise`,
:func:`compare_classes`, :func:`size_confound` (and :func:`size_confounds` for
several metrics; :func:`adjust_confound` decides again on multiplicity-adjusted
p-values), :func:`sanity_check`, :func:`artifact_summary`,
:func:`presence_comparison`. Values that differ only by floating-point round-off
(:func:`round_off_tol`) are constant: no test, no p-value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

log = logging.getLogger(__name__)

__all__ = [
    "REASONS",
    "UNDEFINED_WHEN",
    "METRICS",
    "CHANCE",
    "Metric",
    "leakage",
    "inside_score",
    "outside_score",
    "lesion_area",
    "chance_leakage",
    "excess_leakage",
    "localisation_gain",
    "pixel_auroc",
    "rank_accuracy",
    "pointing_game",
    "artifact_mass",
    "score_batch",
    "bootstrap_mean_ci",
    "summarise",
    "compare_classes",
    "ols_fit",
    "size_confound",
    "size_confounds",
    "CONFOUND_METRICS",
    "VERDICTS",
    "EXACT_RTOL",
    "EXACT_ATOL",
    "round_off_tol",
    "sanity_check",
    "artifact_summary",
    "presence_comparison",
    "adjust_confound",
]

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


# ---------------------------------------------------------------------------
# Statistics on per-image tables
# ---------------------------------------------------------------------------

LABEL_NAMES = {0: "benign", 1: "malignant"}


def _require(df: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"missing column(s) {missing}; the table has {list(df.columns)}")


def bootstrap_mean_ci(x, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95, groups=None) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of a 1-D sample (NaNs dropped).

    Returns ``(low, high)``; ``(nan, nan)`` for fewer than 2 values. Seeded with
    ``numpy.random.default_rng(seed)``, so the same sample gives the same CI.
    ``groups``: ``(N,)`` cluster ids (e.g. lesion_id) or None. When some cluster holds
    more than one value, whole clusters are resampled (plain, unstratified) and each
    resample's mean weights a value by its cluster's multiplicity; otherwise (the
    default) the values themselves are resampled, exactly as without ``groups``.
    """
    from dermcam.stats import cluster_bootstrap_counts, cluster_info

    x = np.asarray(x, dtype=np.float64).ravel()
    keep = ~np.isnan(x)
    x = x[keep]
    n = x.size
    if n < 2 or n_boot < 1:
        return (np.nan, np.nan)
    info = None
    if groups is not None:
        g = np.asarray(groups, dtype=object).ravel()
        if g.size != keep.size:
            raise ValueError(f"groups {g.shape} must match x ({keep.size},)")
        info = cluster_info(g[keep])
    if info is not None:
        if info[1] < 2:
            return (np.nan, np.nan)
        w = cluster_bootstrap_counts(np.zeros(n, np.int64), info[0], info[1], n_boot, seed,
                                     stratified=False)
        alpha = (1.0 - level) / 2.0
        lo, hi = np.quantile((w @ x) / w.sum(axis=1), [alpha, 1.0 - alpha])
        return float(lo), float(hi)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, int(4_000_000 // n))  # bound the (boot, n) index array
    for s in range(0, n_boot, step):
        b = min(step, n_boot - s)
        means[s:s + b] = x[rng.integers(0, n, size=(b, n))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def summarise(df: pd.DataFrame, metrics: Sequence[str],
              by: Sequence[str] = ("model", "method", "label"),
              n_boot: int = 1000, seed: int = 0, cluster_col: str | None = None
              ) -> pd.DataFrame:
    """Per-group descriptive statistics of each metric, one row per group x metric.

    Columns: the ``by`` columns, ``metric``, ``higher_is_better``, ``n`` (values
    used), ``n_nan`` (NaNs dropped), ``mean``, ``median``, ``std``, ``ci_low``,
    ``ci_high`` (95 % CI of the mean) and ``ci_method``, which says how that CI was
    made:

    - ``"wilson"`` when every value in the group is 0 or 1 (the pointing game with a
      unique maximum, or any score that is a hit/miss): the mean is a proportion, and
      the Wilson score interval (``statsmodels`` ``proportion_confint``) keeps its
      coverage near 0 and 1, where a percentile bootstrap collapses (10 hits of 10
      give the bootstrap CI [1, 1]). Defined from one value on.
    - ``"percentile bootstrap"`` otherwise: ``n_boot`` resamples, the same ``seed``
      for every group so a group's CI does not depend on the others; NaN below two
      values.

    ``cluster_col``: a column of cluster ids (e.g. ``group``: HAM10000's lesion_id).
    Where a group's values share clusters, the bootstrap resamples whole clusters
    (``"percentile cluster bootstrap"``) and the Wilson interval uses the effective
    sample size ``n / deff``, with the design effect ``deff`` (at least 1) the cluster
    bootstrap variance of the proportion over the binomial one (``"wilson, design
    effect <deff> from the cluster bootstrap"``). Groups without shared clusters are
    summarised exactly as without ``cluster_col``.
    """
    from dermcam.stats import cluster_info
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    by = [by] if isinstance(by, str) else list(by)
    _require(df, [*by, *metrics])
    groups = df.groupby(by, dropna=False, sort=True) if by else [((), df)]
    rows = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            x = pd.to_numeric(g[metric], errors="coerce").to_numpy(dtype=np.float64)
            valid = x[~np.isnan(x)]
            clusters = None
            if cluster_col is not None and cluster_col in g.columns:
                clusters = g[cluster_col].to_numpy(dtype=object)[~np.isnan(x)]
                if cluster_info(clusters) is None:
                    clusters = None
            if valid.size and np.isin(valid, (0.0, 1.0)).all():
                if clusters is None:
                    lo, hi = _wilson_ci(int(np.count_nonzero(valid)), int(valid.size))
                    ci_method = "wilson"
                else:
                    deff = _design_effect(valid, clusters, n_boot, seed)
                    n_eff = valid.size / deff
                    lo, hi = _wilson_ci(float(valid.mean() * n_eff), n_eff)
                    ci_method = f"wilson, design effect {deff:.2f} from the cluster bootstrap"
            elif clusters is None:
                lo, hi = bootstrap_mean_ci(valid, n_boot=n_boot, seed=seed)
                ci_method = "percentile bootstrap"
            else:
                lo, hi = bootstrap_mean_ci(valid, n_boot=n_boot, seed=seed, groups=clusters)
                ci_method = "percentile cluster bootstrap"
            entry = METRICS.get(metric)
            rows.append({
                **dict(zip(by, key, strict=True)),
                "metric": metric,
                "higher_is_better": None if entry is None else entry.higher_is_better,
                "n": int(valid.size),
                "n_nan": int(x.size - valid.size),
                "mean": float(valid.mean()) if valid.size else np.nan,
                "median": float(np.median(valid)) if valid.size else np.nan,
                "std": float(valid.std(ddof=1)) if valid.size > 1 else np.nan,
                "ci_low": lo,
                "ci_high": hi,
                "ci_method": ci_method,
            })
    cols = [*by, "metric", "higher_is_better", "n", "n_nan", "mean", "median", "std",
            "ci_low", "ci_high", "ci_method"]
    return pd.DataFrame(rows, columns=cols)


def _design_effect(x: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> float:
    """Cluster-bootstrap variance of the mean of ``x`` over the i.i.d. ``var / n``; >= 1.

    1 when ``x`` is constant (nothing varies, clustered or not).
    """
    from dermcam.stats import cluster_bootstrap_counts, cluster_info

    info = cluster_info(groups)
    var = float(x.var())
    if info is None or var == 0 or n_boot < 2:
        return 1.0
    w = cluster_bootstrap_counts(np.zeros(x.size, np.int64), info[0], info[1], n_boot, seed,
                                 stratified=False)
    boot = (w @ x) / w.sum(axis=1)
    return max(1.0, float(boot.var(ddof=1)) / (var / x.size))


def _wilson_ci(successes: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (statsmodels)."""
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(successes, n, alpha=1.0 - level, method="wilson")
    return float(lo), float(hi)


def _labels(df: pd.DataFrame, label_col: str) -> np.ndarray:
    """The label column as ``(N,)`` float64: 0 benign, 1 malignant, NaN missing.

    The label check of :func:`compare_classes`, :func:`size_confound` and
    :func:`missing_at_chance`: :func:`dermcam.stats.as_labels` with missing labels
    allowed (those rows are dropped and counted). Any other value that is not 0 or 1
    (2, -1, 0.5, the text ``"malignant"``) raises ValueError naming the values, instead
    of being counted as benign or dropped without a count. The same check, under the
    name ``cam_target``, validates the class each heatmap explains (:func:`_targets`).
    """
    from dermcam.stats import as_labels

    return as_labels(df[label_col].to_numpy(), f"column {label_col!r}", allow_missing=True)


def _targets(df: pd.DataFrame, target_col: str) -> np.ndarray:
    """``(N,)`` float64 explained class per row (0 benign, 1 malignant, NaN missing).

    Checked like the labels (:func:`_labels`): a class index other than 0 or 1 raises.
    """
    return _labels(df, target_col)


def _split_classes(df: pd.DataFrame, metric: str, label_col: str):
    _require(df, [metric, label_col])
    x = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=np.float64)
    lab = _labels(df, label_col)
    ok = ~np.isnan(x) & ~np.isnan(lab)
    return x[ok & (lab == 0)], x[ok & (lab == 1)], int((~ok).sum())


def compare_classes(df: pd.DataFrame, metric: str, label_col: str = "label") -> dict:
    """Benign (label 0) vs malignant (label 1) on one metric: two-sided Mann-Whitney U.

    Returns a dict: ``n_benign``, ``n_malignant``, ``n_nan`` (rows without a metric
    value or without a label), ``n_nan_benign``, ``n_nan_malignant`` (rows of that class
    without a metric value: left out of its mean), medians and means per class, ``u_statistic`` (U of the
    malignant sample), ``p_value``, ``cles`` (common language effect size:
    P(malignant > benign) + 0.5 P(tie)), ``rank_biserial`` (``2 * cles - 1``, in
    [-1, 1], positive = malignant higher), and ``reason`` (``""``; ``"too_few"``
    when a class has no values; ``"constant_metric"`` when the values do not vary beyond
    round-off (:func:`round_off_tol`; e.g. the excess leakage of uniform heatmaps, about
    1e-16), where ranks would be ordering round-off: statistics are NaN). Labels other
    than 0, 1 or missing raise ValueError.
    """
    ben, mal, n_nan = _split_classes(df, metric, label_col)
    lab = _labels(df, label_col)
    missing = np.isnan(pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=np.float64))
    out = {
        "metric": metric, "n_benign": int(ben.size), "n_malignant": int(mal.size),
        "n_nan": n_nan, "n_nan_benign": int((missing & (lab == 0)).sum()),
        "n_nan_malignant": int((missing & (lab == 1)).sum()),
        "median_benign": float(np.median(ben)) if ben.size else np.nan,
        "median_malignant": float(np.median(mal)) if mal.size else np.nan,
        "mean_benign": float(ben.mean()) if ben.size else np.nan,
        "mean_malignant": float(mal.mean()) if mal.size else np.nan,
        "u_statistic": np.nan, "p_value": np.nan, "cles": np.nan, "rank_biserial": np.nan,
        "reason": "",
    }
    if ben.size == 0 or mal.size == 0:
        out["reason"] = "too_few"
        return out
    if _is_constant(np.concatenate([ben, mal])):
        out["reason"] = "constant_metric"
        return out
    res = stats.mannwhitneyu(mal, ben, alternative="two-sided")
    cles = float(res.statistic) / (mal.size * ben.size)
    out.update(u_statistic=float(res.statistic), p_value=float(res.pvalue), cles=cles,
               rank_biserial=2.0 * cles - 1.0)
    return out


#: Names of the explained (CAM target) classes, by class index.
TARGET_NAMES = {0: "benign", 1: "malignant"}


def compare_classes_by_target(df: pd.DataFrame, metric: str, target_col: str = "cam_target",
                              label_col: str = "label") -> dict:
    """Benign vs malignant on ``metric``, pooled and within each explained class.

    With ``--target predicted`` a benign image's heatmap usually explains "benign" and a
    malignant one's "malignant", so the pooled comparison mixes lesion type with the
    class the heatmap explains (and with the prediction's outcome). Stratifying by
    ``target_col`` (the class each heatmap explains) compares lesion types for a fixed
    target. Returns ``{"metric", "pooled": compare_classes(df), "by_target": {name:
    compare_classes(rows explaining that class)}, "n_explained": {name: rows},
    "fixed_target"}``; ``fixed_target`` is the explained class's name when every row
    explains the same class (then the pooled comparison is already for a fixed
    target), else None. Classes no row explains are left out of ``by_target``.
    ``target_col`` is checked like the labels: a value other than 0, 1 or missing
    raises ValueError.
    """
    _require(df, [metric, label_col, target_col])
    tgt = _targets(df, target_col)
    out: dict = {"metric": metric, "pooled": compare_classes(df, metric, label_col),
                 "by_target": {}, "n_explained": {}}
    for code, name in TARGET_NAMES.items():
        sel = tgt == code
        out["n_explained"][name] = int(sel.sum())
        if sel.any():
            out["by_target"][name] = compare_classes(df[sel], metric, label_col)
    present = [name for name, n in out["n_explained"].items() if n]
    out["fixed_target"] = present[0] if len(present) == 1 and np.isfinite(tgt).all() else None
    return out


def _chance_values(df: pd.DataFrame, metric: str) -> np.ndarray | None:
    """``(N,)`` the score a uniform heatmap gets on each row, or None if it has none."""
    area = (pd.to_numeric(df["lesion_area"], errors="coerce").to_numpy(dtype=np.float64)
            if "lesion_area" in df.columns else None)
    if metric in CHANCE:
        return np.full(len(df), CHANCE[metric], dtype=np.float64)
    if area is None:
        return None
    if metric == "leakage":
        return 1.0 - area
    if metric in ("rank_accuracy", "pointing_game"):
        return area.copy()
    return None


#: How :func:`missing_at_chance` scores an undefined heatmap, per metric.
CHANCE_TEXT = {"leakage": "leakage = chance leakage = 1 - lesion area",
               "excess_leakage": "excess leakage 0", "pixel_auroc": "pixel AUROC 0.5",
               "localisation_gain": "localisation gain 1",
               "rank_accuracy": "rank accuracy = lesion area",
               "pointing_game": "pointing game = lesion area"}


def missing_at_chance(df: pd.DataFrame, metrics: Sequence[str] = ("leakage", "excess_leakage",
                                                                   "pixel_auroc"),
                      label_col: str = "label", target_col: str | None = "cam_target"
                      ) -> dict[str, dict]:
    """Sensitivity of the class comparison to undefined heatmaps, scored at chance.

    A heatmap that is all zero (or constant before min-max normalisation, which makes it
    zero) has no defined score and is left out of class means; if one class has more
    of them, dropping them is informative. Here every row whose ``metric`` is NaN but
    whose mask is usable (the chance score is finite) is scored at chance
    (:data:`CHANCE_TEXT`), and the class means and the Mann-Whitney test are repeated.
    Returns ``{metric: {"n_nan_benign", "n_nan_malignant", "n_imputed_benign",
    "n_imputed_malignant", "observed": compare_classes, "at_chance": compare_classes
    on the imputed table, "diff_observed", "diff_at_chance" (malignant minus benign
    mean), "chance", "pooled_over_targets", "explained_classes"}}``; metrics without a
    chance level are skipped. ``pooled_over_targets`` is True where ``target_col`` shows
    heatmaps explaining both classes (``--target predicted``): the comparison is then
    pooled over the explained classes (``explained_classes``: heatmaps explaining each).
    """
    _require(df, [label_col])
    lab = _labels(df, label_col)
    n_exp = None
    if target_col is not None and target_col in df.columns:
        tgt = _targets(df, target_col)
        n_exp = {name: int((tgt == code).sum()) for code, name in TARGET_NAMES.items()}
    out = {}
    for metric in ([metrics] if isinstance(metrics, str) else list(metrics)):
        if metric not in df.columns:
            continue
        chance = _chance_values(df, metric)
        if chance is None:
            continue
        x = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=np.float64)
        fill = np.isnan(x) & np.isfinite(chance)
        filled = df.assign(**{metric: np.where(fill, chance, x)})
        obs, imp = compare_classes(df, metric, label_col), compare_classes(filled, metric,
                                                                           label_col)
        r = {"metric": metric, "chance": CHANCE_TEXT[metric],
             "n_nan_benign": obs["n_nan_benign"], "n_nan_malignant": obs["n_nan_malignant"],
             "n_imputed_benign": int((fill & (lab == 0)).sum()),
             "n_imputed_malignant": int((fill & (lab == 1)).sum()),
             "observed": obs, "at_chance": imp,
             "diff_observed": obs["mean_malignant"] - obs["mean_benign"],
             "diff_at_chance": imp["mean_malignant"] - imp["mean_benign"]}
        r["explained_classes"] = n_exp
        r["pooled_over_targets"] = bool(n_exp and all(n_exp.values()))
        out[metric] = r
    return out


#: A residual (or a spread) smaller than this times ``max|y|`` is floating-point
#: round-off, not variation: ``1 - area`` computed in float64 leaves residuals near
#: 1e-16, real metrics vary by more than 1e-4.
EXACT_RTOL = 1e-10

#: ... and so is one below this in absolute terms, whatever ``max|y|``. The relative
#: rule alone fails where the values themselves are round-off: the excess leakage of
#: uniform heatmaps is ``leakage - (1 - area)``, about 1e-16 at 224 x 224, and relative
#: to its own size that noise is "variation" that a test turns into p-values. Every
#: localisation metric is a share, a ratio or an AUROC of order 1, so a spread below
#: 1e-9 is never a real difference between images.
EXACT_ATOL = 1e-9


def round_off_tol(y) -> float:
    """The spread below which ``y`` counts as constant (or a fit as exact).

    ``max(EXACT_RTOL * max|y|, EXACT_ATOL)`` (:data:`EXACT_RTOL`, :data:`EXACT_ATOL`);
    ``y`` any array of finite values (NaNs ignored).
    """
    y = np.asarray(y, dtype=np.float64)
    scale = float(np.nanmax(np.abs(y))) if np.isfinite(y).any() else 0.0
    return max(EXACT_RTOL * scale, EXACT_ATOL)


def _is_constant(y) -> bool:
    """True when the finite values of ``y`` vary by no more than :func:`round_off_tol`."""
    y = np.asarray(y, dtype=np.float64)
    y = y[np.isfinite(y)]
    return y.size == 0 or float(np.ptp(y)) <= round_off_tol(y)


def ols_fit(y, X, names: Sequence[str], level: float = 0.95, cov_type: str = "HC3") -> dict:
    """Ordinary least squares (statsmodels ``OLS``) with robust or classical standard errors.

    ``y`` ``(n,)``, ``X`` ``(n, p)`` design matrix (include the intercept column),
    ``names`` ``p`` labels. ``cov_type``: ``"HC3"`` (default; heteroscedasticity-
    robust, MacKinnon & White 1985, the variant that holds its level in small
    samples) or ``"nonrobust"`` (classical). p-values and CIs use Student's t with
    ``n - p`` degrees of freedom for both.

    Returns ``{"n", "df_resid", "r2", "cov_type", "reason", "coef": {name: {"coef",
    "se", "t", "p", "ci_low", "ci_high"}}}``. When inference is undefined the
    coefficients are still given but ``se``, ``t``, ``p`` and the CI are NaN, and
    ``reason`` says why (never a p-value made of round-off):

    - ``"constant_outcome"``: ``y`` does not vary (spread <= :func:`round_off_tol`:
      :data:`EXACT_RTOL` x max|y|, and at least :data:`EXACT_ATOL`);
    - ``"perfect_fit"``: the residuals are round-off (RMS <= the same tolerance),
      i.e. ``y`` is an exact linear function of the columns;
    - ``"leverage_one"`` (HC3 only): a row has leverage 1, where HC3 divides by 0.

    Raises ValueError for a rank-deficient design, ``n <= p`` or an unknown ``cov_type``.
    """
    if cov_type not in ("HC3", "nonrobust"):
        raise ValueError(f"cov_type must be 'HC3' or 'nonrobust', got {cov_type!r}")
    y = np.asarray(y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    if y.ndim != 1 or X.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[1] != len(names):
        raise ValueError(f"ols_fit needs y (n,) and X (n, p) with p names, got y {y.shape}, "
                         f"X {X.shape}, {len(names)} names")
    n, p = X.shape
    if n <= p:
        raise ValueError(f"ols_fit needs more rows than columns, got X {X.shape}")
    if not (np.isfinite(y).all() and np.isfinite(X).all()):
        raise ValueError("ols_fit needs finite y and X (drop NaN rows first)")
    q_mat = np.linalg.qr(X)[0]  # leverages are the row sums of q_mat ** 2
    rank = int(np.linalg.matrix_rank(X))
    if rank < p:
        raise ValueError(f"ols_fit: design matrix X {X.shape} is rank deficient (rank {rank})")
    from statsmodels.regression.linear_model import OLS

    res = OLS(y, X).fit(use_t=True)
    beta = np.asarray(res.params, dtype=np.float64)
    resid = y - X @ beta
    rss = float(resid @ resid)
    tss = float(((y - y.mean()) ** 2).sum())
    tol = round_off_tol(y)
    reason = ""
    if np.ptp(y) <= tol:
        reason = "constant_outcome"
    elif np.sqrt(rss / n) <= tol:
        reason = "perfect_fit"
    elif cov_type == "HC3" and ((q_mat ** 2).sum(axis=1) > 1.0 - 1e-10).any():
        reason = "leverage_one"
    if reason:
        nan = np.full(p, np.nan)
        se, t, pval, lo, hi = nan, nan, nan, nan, nan
    else:
        if cov_type == "HC3":
            res = res.get_robustcov_results(cov_type="HC3", use_t=True)
        se = np.asarray(res.bse, dtype=np.float64)
        t = np.asarray(res.tvalues, dtype=np.float64)
        pval = np.asarray(res.pvalues, dtype=np.float64)
        ci = np.asarray(res.conf_int(alpha=1.0 - level), dtype=np.float64)
        lo, hi = ci[:, 0], ci[:, 1]
    return {
        "n": n, "df_resid": n - p,
        "r2": 1.0 - rss / tss if tss > 0 else np.nan,
        "cov_type": cov_type, "reason": reason,
        "coef": {name: {"coef": float(b), "se": float(s), "t": float(tt), "p": float(pp),
                        "ci_low": float(lw), "ci_high": float(up)}
                 for name, b, s, tt, pp, lw, up in zip(names, beta, se, t, pval, lo, hi,
                                                       strict=True)},
    }


def _area_basis(area: np.ndarray, mal: np.ndarray, df: int
                ) -> tuple[np.ndarray, list[str], str]:
    """Columns for the lesion-area term, ``(n,)`` -> ``(n, k)``, its names and formula.

    A natural cubic regression spline with ``df`` degrees of freedom (patsy
    ``cr(area, df, constraints="center")``: knots at quantiles of the area, linear
    beyond the outer knots, centred so it sits beside an intercept; it contains the
    straight line, so ``1 - area`` is fitted exactly). Where that design would be
    rank deficient beside the intercept and the class column (few distinct areas),
    ``df`` is lowered; below 2 the term is the plain linear area. Raises ValueError
    when even that is rank deficient (constant area, or area equal to the class).
    """
    import patsy

    ones = np.ones_like(area)
    for k in range(int(df), 1, -1):
        term = f"cr(lesion_area, df={k}, constraints='center')"
        basis = np.asarray(patsy.dmatrix(f"{term} - 1", {"lesion_area": area}),
                           dtype=np.float64)
        design = np.column_stack([ones, mal, basis])
        if np.linalg.matrix_rank(design) == design.shape[1]:
            return basis, [f"area_spline_{i}" for i in range(k)], f"cr(lesion_area, df={k})"
    design = np.column_stack([ones, mal, area])
    if np.linalg.matrix_rank(design) < 3:
        raise ValueError("lesion area is constant or collinear with the class, so it "
                         "cannot be adjusted for")
    return area[:, None], ["lesion_area"], "lesion_area"


def _tost_p(est: float, se: float, dof: int, margin: float) -> float:
    """Two one-sided t tests of H0 ``|effect| >= margin``; the larger one-sided p.

    p < alpha exactly when the ``1 - 2 alpha`` CI ``est +- t * se`` lies inside
    ``(-margin, margin)`` (Schuirmann 1987). NaN without a positive finite ``se``.
    """
    if not (np.isfinite(est) and np.isfinite(se) and se > 0):
        return np.nan
    p_lower = stats.t.sf((est + margin) / se, dof)  # H0: effect <= -margin
    p_upper = stats.t.cdf((est - margin) / se, dof)  # H0: effect >= +margin
    return float(max(p_lower, p_upper))


def _share_explained_boot(y: np.ndarray, mal: np.ndarray, design: np.ndarray, n_boot: int,
                          seed: int, level: float) -> tuple[float, float]:
    """Percentile CI of ``1 - adjusted gap / unadjusted gap``, resampling within class.

    Each resample keeps the class counts (as every dermcam bootstrap) and refits both
    models by least squares on the same area basis (knots fixed at the full data's).
    Resamples where the unadjusted gap is 0 or the design loses rank give NaN; the CI
    is NaN if more than 10 % do.
    """
    from dermcam.stats import percentile_interval, stratified_bootstrap_indices

    idx = stratified_bootstrap_indices(mal, n_boot, seed)
    shares = np.full(n_boot, np.nan)
    is_mal = mal == 1
    for b, r in enumerate(idx):
        yb, mb = y[r], is_mal[r]
        gap = yb[mb].mean() - yb[~mb].mean()
        beta, _, rank, _ = np.linalg.lstsq(design[r], yb, rcond=None)
        if gap != 0 and rank == design.shape[1]:
            shares[b] = 1.0 - beta[1] / gap
    return percentile_interval(shares, alpha=1.0 - level, what="share of the gap explained")


#: Images per degree of freedom of the area spline: :func:`size_confound` uses at
#: most ``n // 15`` (below 30 images the area term is linear), so a small sample is
#: not fitted with a wiggly curve whose extrapolation swamps the class estimate.
_N_PER_AREA_DF = 15

#: Metrics :func:`size_confounds` runs the confound analysis on by default.
CONFOUND_METRICS = ("leakage", "excess_leakage", "pixel_auroc")

#: The three verdicts of :func:`size_confound`.
VERDICTS = ("remains", "explained by size", "inconclusive")


def size_confound(df: pd.DataFrame, metric: str = "leakage", area_col: str = "lesion_area",
                  label_col: str = "label", alpha: float = 0.05, margin: float = 0.02,
                  spline_df: int = 4, n_boot: int = 1000, seed: int = 0,
                  target_col: str | None = "cam_target", target_mode: str | None = None,
                  cluster_name: str | None = None) -> dict:
    """Is a class difference in ``metric`` explained by lesion size? Estimates, then a verdict.

    Uses the rows where the metric, area and label are all present (labels must be
    0, 1 or missing; anything else raises ValueError). Two models, both OLS with HC3
    standard errors and t tests on ``n - p`` degrees of freedom:

    - unadjusted: ``metric ~ 1 + malignant`` (its class coefficient is the
      difference of class means, malignant minus benign);
    - adjusted: ``metric ~ 1 + malignant + cr(area, df=spline_df)``, a natural cubic
      spline in area, so a non-linear dependence on size is not read as a class
      effect. ``df`` is lowered to ``n // 15`` for small samples (linear in area below
      30 images) and where the distinct areas do not support it; the ``model`` key
      states what was fitted.

    The result says, for ``margin`` in the metric's units (0.02 leakage by default;
    choose it for other metrics):

    - ``class_coef_unadjusted``, ``class_ci_unadjusted``, ``class_p_unadjusted``;
    - ``class_coef_adjusted``, ``class_ci_adjusted``, ``class_p_adjusted``;
    - ``share_explained``: ``1 - adjusted / unadjusted``, the share of the gap that
      lesion area accounts for (1 = all of it, > 1 = the sign reverses, NaN when the
      unadjusted gap is 0), and ``share_explained_ci``, a percentile bootstrap
      (``n_boot`` resamples within class, ``seed``);
    - ``equivalence``: ``{"margin", "p", "equivalent", "level", "ci"}``, the TOST of
      the adjusted gap against ``+-margin`` (``equivalent``: p < ``alpha``, i.e. the
      ``1 - 2 alpha`` CI in ``ci`` lies inside the margin);
    - ``verdict``, one of :data:`VERDICTS`, decided in this order:

      1. ``"explained by size"``: the adjusted gap is equivalent to zero within
         ``+-margin`` (TOST p < ``alpha``). This holds even when its CI excludes 0: a difference smaller
         than the margin is taken as negligible.
      2. ``"remains"``: the adjusted gap differs from 0 (its t test's p < ``alpha``,
         i.e. its CI excludes 0), and it does not point against a
         clear unadjusted gap (one whose CI excludes 0). A gap that only appears
         after the adjustment (no clear unadjusted gap) also counts as remaining.
      3. ``"inconclusive"``: everything else. That is the adjusted CI containing 0
         but reaching beyond the margin (p >= alpha is not absence), a sign reversal
         (the adjusted gap opposite to a clear unadjusted one: area accounts for more
         than the whole difference), and cases where nothing can be estimated
         (``reason`` says which).

      The p-values the verdict reads are the raw ones here. In a family of tests
      (the attention summary's ``size_confound`` and ``equivalence`` families),
      :func:`adjust_confound` decides again on the multiplicity-adjusted p-values;
      ``verdict_unadjusted`` keeps the single-test verdict and ``verdict_basis`` says
      which p-values decided.

    - ``class_effect_survives``: ``verdict == "remains"``; None when the models could
      not be fitted;
    - ``model``: the adjusted model's formula (OLS, HC3 standard errors, t tests on
      n - p df; the unadjusted model drops the area term); ``area_model``: ``"spline"``
      (a natural cubic spline in area, ``spline_df`` df), ``"linear_few_images"`` or
      ``"linear_few_areas"`` (the linear fallback and why);
    - ``ols_class``, ``ols_class_area``: the :func:`ols_fit` results of the
      unadjusted and the adjusted (spline) model;
    - ``spearman_rho``, ``spearman_p``, ``pearson_r``, ``pearson_p``: the metric
      against the area;
    - ``n``, ``n_benign``, ``n_malignant``, ``n_dropped``, ``alpha``;
    - ``explained_classes``: ``{"benign": n, "malignant": n}`` heatmaps explaining each
      class among the rows used (from ``target_col``, checked like the labels; None
      without that column) and ``pooled_over_targets``: True when both classes are
      explained, i.e. lesion type is mixed with the explained class (``--target
      predicted``; ``target_mode``, the explain stage's ``--target``);
    - ``per_image``: with ``cluster_name`` (the run resamples clusters of that name
      elsewhere), the numbers here that still treat images as independent;
    - ``reason``: ``""`` or why a quantity is undefined (``"constant_metric"``,
      ``"perfect_fit"``, ``"ols_failed"``, ``"adjusted model: <ols reason>"``).

    Degenerate data never produce a p-value from round-off: a metric that is constant
    gives verdict "inconclusive" with reason ``"constant_metric"`` (there is no class
    difference to explain); a metric that is an exact function of area (e.g. leakage
    = 1 - area, what uniform heatmaps give) gives NaN p-values, reason
    ``"perfect_fit"``, verdict "explained by size".
    """
    _require(df, [metric, area_col, label_col])
    if not margin > 0:
        raise ValueError(f"margin must be > 0 (in units of {metric}), got {margin}")
    y = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=np.float64)
    area = pd.to_numeric(df[area_col], errors="coerce").to_numpy(dtype=np.float64)
    lab = _labels(df, label_col)
    ok = np.isfinite(y) & np.isfinite(area) & ~np.isnan(lab)
    explained = None
    if target_col is not None and target_col in df.columns:
        tgt = _targets(df, target_col)[ok]
        explained = {name: int((tgt == code).sum()) for code, name in TARGET_NAMES.items()}
    y, area, mal = y[ok], area[ok], lab[ok]
    level = 1.0 - alpha
    out: dict = {
        "metric": metric, "n": int(ok.sum()), "n_benign": int((mal == 0).sum()),
        "n_malignant": int((mal == 1).sum()), "n_dropped": int((~ok).sum()),
        "alpha": alpha, "model": "", "area_model": "", "spline_df": None,
        "spearman_rho": np.nan, "spearman_p": np.nan, "pearson_r": np.nan, "pearson_p": np.nan,
        "ols_class": None, "ols_class_area": None,
        "class_coef_unadjusted": np.nan, "class_ci_unadjusted": (np.nan, np.nan),
        "class_p_unadjusted": np.nan,
        "class_coef_adjusted": np.nan, "class_ci_adjusted": (np.nan, np.nan),
        "class_p_adjusted": np.nan,
        "share_explained": np.nan, "share_explained_ci": (np.nan, np.nan),
        "equivalence": {"margin": margin, "p": np.nan, "equivalent": None,
                        "level": 1.0 - 2.0 * alpha, "ci": (np.nan, np.nan)},
        "verdict": "inconclusive", "verdict_unadjusted": "inconclusive",
        "verdict_basis": "unadjusted p", "class_effect_survives": None, "reason": "",
        "explained_classes": explained,
        "pooled_over_targets": bool(explained and all(explained.values())),
        "target_mode": target_mode,
        "per_image": list(CONFOUND_PER_IMAGE) if cluster_name else [],
        "cluster_name": cluster_name,
    }
    if y.size >= 3 and not _is_constant(y) and not _is_constant(area):
        sp = stats.spearmanr(y, area)
        pe = stats.pearsonr(y, area)
        out.update(spearman_rho=float(sp.statistic), spearman_p=float(sp.pvalue),
                   pearson_r=float(pe.statistic), pearson_p=float(pe.pvalue))
    ones = np.ones_like(y)
    wanted_df = min(spline_df, y.size // _N_PER_AREA_DF)
    try:
        basis, area_names, area_term = _area_basis(area, mal, wanted_df)
        design = np.column_stack([ones, mal, basis])
        m1 = ols_fit(y, np.column_stack([ones, mal]), ["intercept", "malignant"], level)
        m2 = ols_fit(y, design, ["intercept", "malignant", *area_names], level)
    except ValueError as exc:
        log.warning("size confound of %s not fitted (%d usable rows): %s", metric, out["n"],
                    exc)
        out["reason"] = "ols_failed"
        return out
    spline = area_term.startswith("cr(")
    out["model"] = f"{metric} ~ 1 + malignant + {area_term}"
    out["area_model"] = ("spline" if spline else "linear_few_images" if wanted_df < 2
                         else "linear_few_areas")
    out["spline_df"] = len(area_names) if spline else 1
    c1, c2 = m1["coef"]["malignant"], m2["coef"]["malignant"]
    du, da = c1["coef"], c2["coef"]
    out.update(ols_class=m1, ols_class_area=m2, class_coef_unadjusted=du,
               class_ci_unadjusted=(c1["ci_low"], c1["ci_high"]), class_p_unadjusted=c1["p"],
               class_coef_adjusted=da, class_ci_adjusted=(c2["ci_low"], c2["ci_high"]),
               class_p_adjusted=c2["p"])
    if m1["reason"] == "constant_outcome":
        out.update(reason="constant_metric", class_effect_survives=False)
        return out
    if abs(du) > round_off_tol(y):
        out["share_explained"] = 1.0 - da / du
        out["share_explained_ci"] = _share_explained_boot(y, mal, design, n_boot, seed, level)
    eq = out["equivalence"]
    if m2["reason"] == "perfect_fit":
        # No residual variance: the adjusted gap is known exactly, but has no p-value.
        only_area = ols_fit(y, np.column_stack([ones, basis]), ["intercept", *area_names],
                            level)
        exact_area = only_area["reason"] == "perfect_fit"
        within = exact_area or abs(da) < margin
        eq["equivalent"] = eq["equivalent_unadjusted"] = bool(within)
        out["verdict"] = out["verdict_unadjusted"] = ("explained by size" if within
                                                      else "remains")
        out["verdict_basis"] = "exact fit, no p-value"
        out["class_effect_survives"] = out["verdict"] == "remains"
        out["reason"] = "perfect_fit"
        if exact_area:  # the class coefficient is round-off of an exact 0
            out["class_coef_adjusted"] = 0.0
            if np.isfinite(out["share_explained"]):
                out["share_explained"] = 1.0
        return out
    if m2["reason"]:
        out["reason"] = f"adjusted model: {m2['reason']}"
        return out

    dof = m2["df_resid"]
    q = stats.t.ppf(1.0 - alpha, dof)
    eq.update(p=_tost_p(da, c2["se"], dof, margin),
              ci=(da - q * c2["se"], da + q * c2["se"]))
    _decide(out)
    return out


#: The numbers of :func:`size_confound` that treat images as independent even where the
#: rest of the attention summary resamples whole clusters (lesions, patients).
CONFOUND_PER_IMAGE = ("HC3 standard errors, t tests and TOST of the size-confound models",
                      "the bootstrap CI of the share of the gap explained by area")


def _decide(r: dict) -> None:
    """Set ``verdict``, ``verdict_basis`` and ``class_effect_survives`` of a fitted result.

    Decides on the multiplicity-adjusted p-values where they exist (``p_adjusted`` of the
    size-adjusted class coefficient, ``equivalence["p_adjusted"]`` of the TOST), on the
    raw ones otherwise; ``verdict_unadjusted`` is always the raw decision.
    """
    eq = r["equivalence"]
    p_class, p_eq = r["class_p_adjusted"], eq["p"]
    r["verdict_unadjusted"] = _verdict(r, p_class, p_eq)
    eq["equivalent_unadjusted"] = bool(p_eq < r["alpha"])
    pa_class = r.get("p_adjusted", np.nan)
    pa_eq = eq.get("p_adjusted", np.nan)
    adjusted = bool(np.isfinite(pa_class) or np.isfinite(pa_eq))
    if adjusted:
        p_class = pa_class if np.isfinite(pa_class) else p_class
        p_eq = pa_eq if np.isfinite(pa_eq) else p_eq
        r["verdict_basis"] = f"{r.get('adjust_method', 'multiplicity')}-adjusted p"
    else:
        r["verdict_basis"] = "unadjusted p"
    r["verdict"] = _verdict(r, p_class, p_eq)
    eq["equivalent"] = bool(p_eq < r["alpha"])
    r["class_effect_survives"] = r["verdict"] == "remains"


def _verdict(r: dict, p_class: float, p_eq: float) -> str:
    """The verdict of :func:`size_confound` from the class and TOST p-values given."""
    alpha = r["alpha"]
    du, da = r["class_coef_unadjusted"], r["class_coef_adjusted"]
    lo_u, hi_u = r["class_ci_unadjusted"]
    clear_u = lo_u > 0 or hi_u < 0
    clear_a = bool(p_class < alpha)
    reversed_ = clear_u and clear_a and np.sign(da) != np.sign(du)
    if p_eq < alpha:
        return "explained by size"
    if clear_a and not reversed_:
        return "remains"
    return "inconclusive"


def adjust_confound(r: dict, k_class: int | None = None,
                    k_equivalence: int | None = None) -> dict:
    """Decide a :func:`size_confound` result again on its multiplicity-adjusted p-values.

    ``r`` carries ``p_adjusted`` (the size-adjusted class coefficient's p, adjusted in
    its family), ``adjust_method`` and ``equivalence["p_adjusted"]`` (the TOST p,
    adjusted in its family), as :func:`dermcam.stages.explain.summarise_attention` sets them;
    ``k_class``, ``k_equivalence`` are the family sizes (``family_sizes``). The
    verdict, ``class_effect_survives`` and ``equivalence["equivalent"]`` follow the
    adjusted p-values (the raw ones are kept beside them); ``verdict_unadjusted``
    and ``equivalence["equivalent_unadjusted"]`` keep the single-test decision. A result
    without p-values (degenerate data) is returned unchanged. Modifies and returns ``r``.
    """
    eq = r.get("equivalence") or {}
    if not (np.isfinite(r.get("class_p_adjusted", np.nan)) and np.isfinite(eq.get("p", np.nan))):
        return r
    r["family_sizes"] = {"size_confound": k_class, "equivalence": k_equivalence}
    _decide(r)
    return r


def size_confounds(df: pd.DataFrame, metrics: Sequence[str] = CONFOUND_METRICS,
                   margins: Mapping[str, float] | None = None, **kwargs) -> dict[str, dict]:
    """:func:`size_confound` for each of ``metrics``: ``{metric: result}``.

    ``margins`` maps a metric to its equivalence margin (in that metric's units);
    metrics not in it use ``kwargs["margin"]`` or the default 0.02. Other keyword
    arguments go to :func:`size_confound` unchanged.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    margins = dict(margins or {})
    out = {}
    for metric in metrics:
        kw = dict(kwargs)
        if metric in margins:
            kw["margin"] = margins[metric]
        out[metric] = size_confound(df, metric, **kw)
    return out


def sanity_check(cams_trained, cams_random, threshold: float = 0.5) -> dict:
    """Model-randomisation sanity check (Adebayo et al., 2018); see :mod:`dermcam.sanity`.

    Kept for existing callers; delegates to :func:`dermcam.sanity.sanity_verdict`.
    ``cams_trained`` ``(N, H, W)``: heatmaps of the trained model; ``cams_random``
    the same images' heatmaps from randomised weights, ``(N, H, W)`` for one init or
    ``(K, N, H, W)`` / a list for several. Similarity is |Spearman rho|, so inverted
    maps fail like identical ones; ``passed`` is True only when the bootstrap 95 % CI
    of the median |rho| lies below ``threshold``, False when the median is at or above
    it, None when inconclusive. Returns the verdict dict (``rank_correlation`` ``(N,)``
    signed rho, ``median`` = median |rho|, ``ci_low``, ``ci_high``, ``n_valid``,
    ``passed``, ``verdict``, ...) plus ``mean``, the mean |rho| over valid images.
    """
    from dermcam.sanity import sanity_verdict

    out = sanity_verdict(cams_trained, cams_random, threshold=threshold)
    out["mean"] = out["mean_abs_rho"]
    return out


def presence_comparison(df: pd.DataFrame, columns: Sequence[str], metrics: Sequence[str],
                        n_boot: int = 1000, seed: int = 0,
                        cluster_col: str | None = None) -> list[dict]:
    """Each metric on images with versus without each artifact flag, with CIs and counts.

    ``df``: one model x method's attention.csv rows with the 0/1 flag ``columns``
    (``artifact_<name>``, from artifact labels; a missing flag puts the row on neither
    side) and the ``metrics``. The rows of
    :func:`dermcam.data.artifact_labels.split_by_presence` (``artifact``, ``metric``,
    ``n_with``, ``n_without``, ``mean_with``, ``mean_without``, ``diff`` = with - without,
    two-sided Mann-Whitney ``p``, raw), each with

    - ``n_nan_with``, ``n_nan_without``: rows of that side whose metric is undefined
      (left out of its mean and test);
    - ``ci_with``, ``ci_without``: 95 % percentile bootstrap CIs of the two means
      (:func:`bootstrap_mean_ci`, ``n_boot`` resamples, ``seed``; whole clusters of
      ``cluster_col`` where images share one) and ``ci_method``;
    - ``reason``: ``""``, ``"too_few"`` (a side has no value) or ``"constant_metric"``
      (the values do not vary beyond round-off: no test, ``p`` NaN).

    The caller adjusts ``p`` for multiplicity (the attention summary's
    ``artifact_presence`` family) and keeps the raw value beside ``p_adjusted``.
    """
    from dermcam.data.artifact_labels import split_by_presence
    from dermcam.stats import cluster_info

    _require(df, [*columns, *metrics])
    rows = split_by_presence(df, list(columns), list(metrics))
    groups = (df[cluster_col].to_numpy(dtype=object)
              if cluster_col is not None and cluster_col in df.columns else None)
    clustered = groups is not None and cluster_info(groups) is not None
    out = []
    for row, (col, metric) in zip(rows, [(c, m) for c in columns for m in metrics],
                                  strict=True):
        flag = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        v = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=np.float64)
        r = dict(row)
        for side, sel in (("with", flag == 1), ("without", flag == 0)):
            vals = v[sel]
            g = groups[sel][~np.isnan(vals)] if clustered else None
            r[f"n_nan_{side}"] = int(np.isnan(vals).sum())
            r[f"ci_{side}"] = list(bootstrap_mean_ci(vals[~np.isnan(vals)], n_boot=n_boot,
                                                     seed=seed, groups=g))
        r["ci_method"] = "percentile cluster bootstrap" if clustered else \
            "percentile bootstrap"
        both = v[((flag == 1) | (flag == 0)) & ~np.isnan(v)]
        if not (r["n_with"] and r["n_without"]):
            r["reason"] = "too_few"
        elif _is_constant(both):
            r.update(reason="constant_metric", p=float("nan"))
        else:
            r["reason"] = ""
        out.append(r)
    return out


def artifact_summary(df: pd.DataFrame, artifacts: Iterable[str],
                     by: Sequence[str] = ("model", "method")) -> pd.DataFrame:
    """Heatmap mass on artifacts and excess leakage, split by artifact presence.

    For each name in ``artifacts`` the table needs ``artifact_<name>`` (0/1: the
    artifact is in the image), ``mass_<name>`` (share of heatmap mass on its
    pixels, from :func:`artifact_mass`) and ``excess_leakage``. Returns one row
    per ``by`` group x artifact x presence: ``n``, ``mean_mass`` (NaN where absent:
    there are no pixels), ``n_mass``, ``mean_excess_leakage``, ``n_excess``.
    """
    artifacts = [artifacts] if isinstance(artifacts, str) else list(artifacts)
    by = [by] if isinstance(by, str) else list(by)
    _require(df, [*by, "excess_leakage",
                  *[f"artifact_{a}" for a in artifacts], *[f"mass_{a}" for a in artifacts]])
    rows = []
    groups = df.groupby(by, dropna=False, sort=True) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for name in artifacts:
            present = pd.to_numeric(g[f"artifact_{name}"], errors="coerce")
            for flag in (False, True):
                sel = g[(present == 1) if flag else (present == 0)]
                mass = pd.to_numeric(sel[f"mass_{name}"], errors="coerce")
                exc = pd.to_numeric(sel["excess_leakage"], errors="coerce")
                rows.append({
                    **dict(zip(by, key, strict=True)), "artifact": name, "present": flag,
                    "n": len(sel),
                    "mean_mass": float(mass.mean()) if mass.notna().any() else np.nan,
                    "n_mass": int(mass.notna().sum()),
                    "mean_excess_leakage": float(exc.mean()) if exc.notna().any() else np.nan,
                    "n_excess": int(exc.notna().sum()),
                })
    cols = [*by, "artifact", "present", "n", "mean_mass", "n_mass", "mean_excess_leakage",
            "n_excess"]
    return pd.DataFrame(rows, columns=cols)
