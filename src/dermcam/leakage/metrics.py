"""Per-image localisation metrics of CAM heatmaps ``cams (N, H, W)`` (non-negative, high =
attended) against lesion ``masks (N, H, W)`` (bool or 0/1), each ``(N,)`` float64; undefined is
NaN, never a fake 0 (:data:`UNDEFINED_WHEN`). The study's leakage, inside and outside scores ignore
lesion size (a uniform heatmap leaks ``1 - lesion_area``); the size-aware ones have a known chance
level (:data:`CHANCE`).
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

# Images per internal chunk: bounds the temporary memory, keeps operations vectorised.
_CHUNK = 16

#: Reasons an image's metrics are undefined, in order of precedence (the first
#: that applies is reported).
REASONS = ("nonfinite_heatmap", "negative_heatmap", "zero_heatmap", "empty_mask", "full_mask")

_NEEDS_BOTH = frozenset({"leakage", "excess_leakage", "localisation_gain", "pixel_auroc",
                         "rank_accuracy", "pointing_game"})
_HEATMAP_METRICS = _NEEDS_BOTH | {"inside_score", "outside_score"}

#: reason -> the metrics set to NaN. ``leakage`` is NaN for an empty or full mask too: it
#: would be 1 or 0 whatever the heatmap, which is no localisation measurement.
UNDEFINED_WHEN: dict[str, frozenset[str]] = {
    "nonfinite_heatmap": _HEATMAP_METRICS,
    "negative_heatmap": _HEATMAP_METRICS,
    "zero_heatmap": _HEATMAP_METRICS,
    "empty_mask": _NEEDS_BOTH | {"inside_score"},
    "full_mask": _NEEDS_BOTH | {"outside_score"},
}


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
        raise ValueError(f"{name} must be bool or 0/1, found the value {bad!r}: threshold the "
                         "mask first (dermcam.data.images.mask_to_bool)")
    return arr != 0


def _check_pair(cams, masks) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten to ``(N, H*W)``."""
    c = _as_cams(cams)
    m = _as_masks(masks)
    if c.shape != m.shape:
        raise ValueError(f"cams and masks must have the same (N, H, W) shape, got cams "
                         f"{c.shape} and masks {m.shape}")
    n, h, w = c.shape
    return c.reshape(n, h * w), m.reshape(n, h * w)


def _label_keys(c: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Unsigned keys ``(value bits << 1) | label`` that sort by value, then label.

    The IEEE bits of a non-negative float sort like the value, and integer sorts are several
    times faster than ``argsort``; rows with negative or non-finite values get meaningless
    keys, harmless because those rows are blanked.
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
    n_in = np.count_nonzero(m, axis=1).astype(np.float64)
    n_out = p - n_in
    area = n_in / p
    out: dict[str, np.ndarray] = {"lesion_area": area, "chance_leakage": 1.0 - area}
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if wanted & {"leakage", "inside_score", "outside_score", "excess_leakage",
                     "localisation_gain"}:
            s_in = (c * m).sum(axis=1, dtype=np.float64)
            s_out = (c * ~m).sum(axis=1, dtype=np.float64)
            leak = s_out / (s_in + s_out)
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
                # Sorted positions of the lesion pixels with background first among ties,
                # then lesion first: their mean is the sum of average ranks (Mann-Whitney).
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
            for k in blanked & wanted:
                vals[k][rr == reason] = np.nan
        for k in wanted:
            values[k][s:s + _CHUNK] = vals[k]
        reasons[s:s + _CHUNK] = rr
    return values, reasons


def leakage(cams, masks) -> np.ndarray:
    """Study metric: share of heatmap mass outside the lesion, ``sum(cam*(1-mask))/sum(cam)``;
    ``(N,)`` in [0, 1], lower is better, ``1 - lesion_area`` for a uniform heatmap."""
    return _score(cams, masks, ["leakage"])[0]["leakage"]


def inside_score(cams, masks) -> np.ndarray:
    """Study metric: mean heatmap value over lesion pixels, ``(N,)``."""
    return _score(cams, masks, ["inside_score"])[0]["inside_score"]


def outside_score(cams, masks) -> np.ndarray:
    """Study metric: mean heatmap value over background pixels, ``(N,)``."""
    return _score(cams, masks, ["outside_score"])[0]["outside_score"]


def lesion_area(masks) -> np.ndarray:
    """Share of the image covered by the lesion mask, ``(N, H, W)`` -> ``(N,)``."""
    m = _as_masks(masks)
    if m.shape[1] == 0 or m.shape[2] == 0:
        raise ValueError(f"masks must have H, W > 0, got shape {m.shape}")
    return np.count_nonzero(m.reshape(m.shape[0], -1), axis=1) / float(m.shape[1] * m.shape[2])


def chance_leakage(masks) -> np.ndarray:
    """Leakage of a uniform heatmap, ``1 - lesion_area``, ``(N,)``."""
    return 1.0 - lesion_area(masks)


def excess_leakage(cams, masks) -> np.ndarray:
    """``leakage - chance_leakage``, ``(N,)`` in [-1, 1]: 0 = uniform, negative = better."""
    return _score(cams, masks, ["excess_leakage"])[0]["excess_leakage"]


def localisation_gain(cams, masks) -> np.ndarray:
    """``(1 - leakage) / lesion_area`` (Quantus's relevance mass accuracy over the area),
    ``(N,)``: 1 = uniform, higher is better."""
    return _score(cams, masks, ["localisation_gain"])[0]["localisation_gain"]


def pixel_auroc(cams, masks) -> np.ndarray:
    """AUROC of the heatmap values as a pixel classifier of the mask, ``(N,)``; 0.5 = chance.

    Average ranks for ties, as ``roc_auc_score(mask, cam)`` per image, from two integer sorts
    (``rankdata`` takes about 3 s for 379 images of 224 x 224).
    """
    return _score(cams, masks, ["pixel_auroc"])[0]["pixel_auroc"]


def rank_accuracy(cams, masks, ties: str = "average") -> np.ndarray:
    """Share of the top-k heatmap pixels in the lesion, k = lesion pixel count, ``(N,)``.

    Quantus's ``RelevanceRankAccuracy`` without ties. Grad-CAM maps have many exact zeros, so
    ``ties="average"`` scores the tied group at the top-k boundary by its in-lesion share
    (expected score under random tie-breaking; uniform = ``lesion_area``); ``"stable"`` lets
    earlier raster pixels win (biased, for comparison only).
    """
    if ties == "average":
        return _score(cams, masks, ["rank_accuracy"])[0]["rank_accuracy"]
    if ties != "stable":
        raise ValueError(f"ties must be 'average' or 'stable', got {ties!r}")
    reasons = _score(cams, masks, ["lesion_area"])[1]
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
    """1.0 if the heatmap maximum lies in the lesion, else 0.0, ``(N,)``; tied maxima score
    their share inside the lesion, so a uniform heatmap scores ``lesion_area``."""
    return _score(cams, masks, ["pointing_game"])[0]["pointing_game"]


def artifact_mass(cams, artifact_maps, codes) -> dict:
    """Share of heatmap mass on each artifact's pixels: ``{code: (N,)}``.

    ``artifact_maps``: an ``(N, H, W)`` label map with ``codes`` a ``name -> value`` mapping or
    a sequence of values, or an ``(N, A, H, W)`` stack of masks with ``A`` names. NaN where
    the artifact is absent or the heatmap is zero, negative or non-finite.
    """
    c = _as_cams(cams)
    n, h, w = c.shape
    a = np.asarray(artifact_maps)
    if a.ndim == 4:
        if a.shape[0] != n or a.shape[2:] != (h, w):
            raise ValueError(f"artifact_maps (N, A, H, W) {a.shape} does not match cams {c.shape}")
        if isinstance(codes, Mapping) or len(codes) != a.shape[1]:
            raise ValueError(f"for (N, A, H, W) artifact_maps, codes must be a sequence of "
                             f"A={a.shape[1]} names, got {codes!r}")
        layers = {code: _as_masks(a[:, i], "artifact_maps") for i, code in enumerate(codes)}
    elif a.ndim == 3:
        if a.shape != c.shape:
            raise ValueError(f"artifact_maps (N, H, W) {a.shape} does not match cams {c.shape}")
        items = codes.items() if isinstance(codes, Mapping) else ((v, v) for v in codes)
        layers = {name: a == value for name, value in items}
    else:
        raise ValueError("artifact_maps must be (N, H, W) labels or (N, A, H, W) masks, got "
                         f"shape {a.shape}")
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


#: name -> (function, higher_is_better, definition); the CLI and report choose from here.
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


#: The score of a uniform heatmap where it does not depend on the image
#: (rank_accuracy and pointing_game: lesion_area).
CHANCE: dict[str, float] = {"excess_leakage": 0.0, "localisation_gain": 1.0, "pixel_auroc": 0.5}


def score_batch(cams, masks) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every metric in :data:`METRICS` for a batch, sharing the sums and sorts.

    ``(N, H, W)`` x2 -> ``({name: (N,) float64}, (N,) reasons)``, a reason ``""`` where every
    metric is defined; undefined values are NaN per :data:`UNDEFINED_WHEN`.
    """
    values, reasons = _score(cams, masks, METRICS)
    bad = reasons != ""
    if bad.any():
        log.info("score_batch: %d of %d images have undefined metrics: %s", int(bad.sum()),
                 len(reasons), pd.Series(reasons[bad]).value_counts().to_dict())
    return {k: values[k] for k in METRICS}, reasons
