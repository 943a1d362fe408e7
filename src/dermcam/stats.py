"""Shared statistics helpers: stratified bootstrap, paired tests, DeLong, McNemar.

Pure functions on arrays. Labels are 0/1 (1 = malignant), larger scores mean more
malignant. Conventions (docs/evaluation.md): the bootstrap is stratified by class, so a
resample keeps the test set's class counts; intervals are percentile intervals around the
metric on the full data; paired differences are ``b - a``; an undefined metric is NaN.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats as _sstats
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

__all__ = ["stratified_bootstrap_indices", "bootstrap_indices", "bootstrap_counts",
           "bootstrap_ci", "percentile_interval", "summarise_paired_diff", "delong_test",
           "delong_components", "mcnemar", "adjust_pvalues", "cluster_info", "cluster_labels",
           "cluster_bootstrap_counts", "resampling_weights", "as_labels", "ci_entry",
           "adjust_in_place"]

logger = logging.getLogger(__name__)

#: A bootstrap summary is NaN when fewer than this fraction of resamples gave a
#: defined (finite) metric: the surviving resamples would be a biased subset.
MIN_VALID_FRACTION = 0.9
#: McNemar uses the exact binomial test below this many discordant pairs, chi-square above.
MCNEMAR_EXACT_BELOW = 25
#: DeLong standard errors at or below this are zero variance (round-off of 0).
DELONG_ZERO_SE = 1e-12


def as_labels(y: Any, name: str = "y_true", allow_missing: bool = False) -> np.ndarray:
    """The one label check of dermcam: ``(N,)`` values that are 0 (benign) or 1 (malignant).

    Returns int64 labels, or with ``allow_missing`` float64 with NaN where a value is
    missing. Anything else (2, 0.5, text) raises ValueError naming ``name`` and the values.
    """
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {arr.shape}")
    if arr.dtype.kind in "biuf":
        values = arr.astype(np.float64)
        missing = np.isnan(values)
    else:  # object (pandas nullable integers, mixed), text, ...
        import pandas as pd

        obj = arr.astype(object)
        missing = np.asarray(pd.isna(obj), dtype=bool)
        values = np.full(obj.size, np.nan)
        for i, v in enumerate(obj):
            if not missing[i] and isinstance(v, (bool, int, float, np.bool_, np.number)):
                values[i] = float(v)
    bad = ~((values == 0) | (values == 1) | (missing & allow_missing))
    if bad.any():
        shown = list(dict.fromkeys(repr(v) for v in arr.astype(object)[bad]))
        more = ", ..." if len(shown) > 5 else ""
        extra = "" if allow_missing else " (missing labels are not allowed here)"
        raise ValueError(
            f"{name} must hold 0/1 labels, 0 (benign) or 1 (malignant){extra}; found "
            f"{int(bad.sum())} value(s) that are not: {', '.join(shown[:5])}{more}")
    return values if allow_missing else values.astype(np.int64)


def as_scores(s: Any, n: int, name: str) -> np.ndarray:
    """``(N,)`` finite float array matching ``n`` labels."""
    arr = np.asarray(s, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match y_true, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def stratified_bootstrap_indices(y: Any, n_boot: int, seed: int | np.random.Generator = 0
                                 ) -> np.ndarray:
    """``(n_boot, N)`` bootstrap indices drawn within each class of ``(N,)`` ``y``."""
    return bootstrap_indices(y, n_boot, seed, stratified=True)


def bootstrap_indices(y: Any, n_boot: int, seed: int | np.random.Generator = 0,
                      stratified: bool = True) -> np.ndarray:
    """``(n_boot, N)`` bootstrap indices, stratified by ``y`` (each class keeps its count)
    or plain; seeded by ``np.random.default_rng(seed)``."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (N,), got shape {y.shape}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n_boot = int(n_boot)
    rng = np.random.default_rng(seed)
    n = y.size
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    if not stratified:
        return rng.integers(0, n, size=(n_boot, n))
    out = np.empty((n_boot, n), dtype=np.int64)
    col = 0
    for cls in np.unique(y):  # sorted, so the layout is deterministic
        members = np.flatnonzero(y == cls)
        k = members.size
        out[:, col : col + k] = members[rng.integers(0, k, size=(n_boot, k))]
        col += k
    return out


def cluster_info(groups: Any) -> tuple[np.ndarray, int] | None:
    """``(cluster index per sample (N,), number of clusters)``, or None without clusters.

    A missing id (None, NaN, ``""``) is its own cluster. None when ``groups`` is None or
    every cluster holds one sample: callers then keep the per-sample bootstrap exactly.
    """
    if groups is None:
        return None
    g = np.array(["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                  for v in np.atleast_1d(np.asarray(groups, dtype=object)).ravel()], dtype=object)
    missing = g == ""
    if missing.any():  # own cluster each, named so they cannot collide with real ids
        g[missing] = [f"\x00missing{i}" for i in np.flatnonzero(missing)]
    _, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
    if counts.size == g.size:
        return None
    return inverse.astype(np.int64).ravel(), int(counts.size)


def cluster_labels(y: Any, cluster: np.ndarray, n_clusters: int) -> np.ndarray:
    """``(n_clusters,)`` class of each cluster: the largest label among its samples."""
    y = np.asarray(y)
    cluster = np.asarray(cluster, dtype=np.int64)
    if cluster.shape != y.shape:
        raise ValueError(f"cluster {cluster.shape} must match y {y.shape}")
    yc = np.full(int(n_clusters), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(yc, cluster, y.astype(np.int64))
    return yc


def cluster_bootstrap_counts(y: Any, cluster: np.ndarray, n_clusters: int, n_boot: int,
                             seed: int | np.random.Generator = 0, stratified: bool = True
                             ) -> np.ndarray:
    """Cluster bootstrap as ``(n_boot, N)`` float64 sample weights.

    Whole clusters (``cluster`` from :func:`cluster_info`) are drawn, stratified by the
    cluster's class (malignant if any sample is), with the draws of
    :func:`bootstrap_indices` on the cluster labels; each sample gets its cluster's count.
    """
    cluster = np.asarray(cluster, dtype=np.int64)
    idx = bootstrap_indices(cluster_labels(y, cluster, n_clusters), n_boot, seed,
                            stratified=stratified)
    return bootstrap_counts(idx, int(n_clusters))[:, cluster]


def resampling_weights(y: Any, n_boot: int, seed: int | np.random.Generator = 0,
                       stratified: bool = True, groups: Any = None) -> np.ndarray:
    """``(n_boot, N)`` bootstrap multiplicities: per sample, or per cluster with ``groups``."""
    y = np.asarray(y)
    info = cluster_info(groups)
    if info is None:
        return bootstrap_counts(bootstrap_indices(y, n_boot, seed, stratified=stratified),
                                y.size)
    return cluster_bootstrap_counts(y, info[0], info[1], n_boot, seed, stratified)


def resampling_label(groups: Any, name: str = "group") -> str:
    """The ``resampling`` field: ``"cluster (NAME), k clusters"`` or ``"images"``."""
    info = cluster_info(groups)
    return "images" if info is None else f"cluster ({name}), {info[1]} clusters"


def bootstrap_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """``(B, M)`` indices in ``[0, n)`` -> ``(B, n)`` float64 count of each sample per
    resample, so weighted-sum metrics evaluate every resample as one matrix product."""
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise ValueError(f"indices must be 2-D (B, M), got shape {indices.shape}")
    b = indices.shape[0]
    flat = (indices + (np.arange(b)[:, None] * n)).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def percentile_interval(boot: Any, alpha: float = 0.05,
                        min_valid_fraction: float = MIN_VALID_FRACTION, what: str = "metric"
                        ) -> tuple[float, float]:
    """``(lo, hi)`` percentile interval of ``(B,)`` bootstrap values, non-finite ones
    dropped; ``(nan, nan)`` when fewer than ``min_valid_fraction`` are finite."""
    boot = np.asarray(boot, dtype=np.float64).ravel()
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    ok = np.isfinite(boot)
    n_ok = int(ok.sum())
    if boot.size == 0 or n_ok < min_valid_fraction * boot.size:
        if boot.size and n_ok < boot.size:
            logger.warning("%s: only %d of %d bootstrap resamples defined; interval is NaN",
                           what, n_ok, boot.size)
        return math.nan, math.nan
    if n_ok < boot.size:
        logger.info("%s: dropped %d of %d bootstrap resamples where it is undefined",
                    what, boot.size - n_ok, boot.size)
    lo, hi = np.quantile(boot[ok], [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def ci_entry(value: float, boot: Any, alpha: float = 0.05, what: str = "metric"
             ) -> dict[str, float]:
    """``{"value", "lo", "hi"}``: ``value`` with the percentile interval of ``boot``."""
    lo, hi = percentile_interval(boot, alpha, what=what)
    return {"value": float(value), "lo": lo, "hi": hi}


def bootstrap_median_ci(v: Any, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                        what: str = "median") -> tuple[float, float]:
    """Percentile bootstrap CI ``(lo, hi)`` of the median of a 1-D sample (plain
    resampling); ``(nan, nan)`` for fewer than 2 values."""
    v = np.asarray(v, dtype=np.float64).ravel()
    if v.size < 2 or int(n_boot) < 1:
        return math.nan, math.nan
    idx = bootstrap_indices(v, n_boot, seed, stratified=False)
    return percentile_interval(np.median(v[idx], axis=1), alpha, what=what)


def spearman_rows(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of ``(B, n)`` arrays, ``(B,)``, as scipy's
    ``spearmanr`` computes it; NaN for a row where either side is constant."""
    rx, ry = _sstats.rankdata(xs, axis=1), _sstats.rankdata(ys, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = (rx * ry).sum(axis=1) / den
    return np.where(den > 0, np.clip(rho, -1.0, 1.0), np.nan)


def spearman_ci(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int
                ) -> tuple[float, float, float, int]:
    """``(rho, lo, hi, n)``: Spearman's rho of the finite pairs with a percentile bootstrap
    CI over pairs; NaN below 4 pairs or where either side is constant."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, math.nan, int(x.size)
    rho = float(_sstats.spearmanr(x, y).statistic)
    idx = bootstrap_indices(x, n_boot, seed, stratified=False)
    lo, hi = percentile_interval(spearman_rows(x[idx], y[idx]), what="Spearman rho")
    return rho, lo, hi, int(x.size)


def bootstrap_ci(metric_fn: Callable[..., float], y_true: Any, *arrays: Any, n_boot: int = 1000,
                 seed: int | np.random.Generator = 0, alpha: float = 0.05, stratified: bool = True,
                 min_valid_fraction: float = MIN_VALID_FRACTION) -> tuple[float, float, float]:
    """``(point, lo, hi)``: percentile bootstrap CI of ``metric_fn(y_true, *arrays)``.

    One call per resample (the reference for the vectorised paths of
    :mod:`dermcam.evaluation`); a NaN or a ``ValueError`` on a resample counts as undefined.
    """
    y = np.asarray(y_true)
    arrs = [np.asarray(a) for a in arrays]
    for i, a in enumerate(arrs):
        if a.shape[:1] != y.shape[:1]:
            raise ValueError(f"array {i} has shape {a.shape}, expected {y.shape[0]} rows")
    point = _safe_call(metric_fn, y, *arrs)
    idx = bootstrap_indices(y, n_boot, seed, stratified=stratified)
    boot = np.array([_safe_call(metric_fn, y[r], *(a[r] for a in arrs)) for r in idx])
    if not math.isfinite(point):
        return point, math.nan, math.nan
    lo, hi = percentile_interval(
        boot, alpha, min_valid_fraction, getattr(metric_fn, "__name__", "metric"))
    return point, lo, hi


def _safe_call(fn: Callable[..., float], *args: Any) -> float:
    try:
        value = float(fn(*args))
    except ValueError:  # sklearn raises ValueError for e.g. AUC with one class
        return math.nan
    return value if math.isfinite(value) else math.nan


def summarise_paired_diff(point_diff: float, boot_diff: Any, alpha: float = 0.05,
                          min_valid_fraction: float = MIN_VALID_FRACTION, what: str = "difference"
                          ) -> dict[str, float]:
    """``{"diff", "lo", "hi", "p", "n_valid"}`` from ``(B,)`` bootstrap differences.

    ``p = min(1, 2 * min((1 + #{d* <= 0}), (1 + #{d* >= 0})) / (B + 1))``: consistent with
    the percentile interval, never exactly 0, resolution about ``2 / B``.
    """
    d = np.asarray(boot_diff, dtype=np.float64).ravel()
    lo, hi = percentile_interval(d, alpha, min_valid_fraction, what)
    ok = d[np.isfinite(d)]
    if not math.isfinite(point_diff) or math.isnan(lo):
        return {"diff": float(point_diff), "lo": math.nan, "hi": math.nan, "p": math.nan,
                "n_valid": int(ok.size)}
    b = ok.size
    p_le = (1 + np.count_nonzero(ok <= 0)) / (b + 1)
    p_ge = (1 + np.count_nonzero(ok >= 0)) / (b + 1)
    p = min(1.0, 2 * min(p_le, p_ge))
    return {"diff": float(point_diff), "lo": lo, "hi": hi, "p": float(p), "n_valid": int(b)}


def delong_components(y: np.ndarray, scores: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fast DeLong (Sun & Xu 2014) for ``(K, N)`` ``scores``: ``(auc (K,), v10 (K, m),
    v01 (K, n))``, the placement values of the m positives and n negatives (ties 1/2)."""
    pos = scores[:, y == 1]
    neg = scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = _sstats.rankdata(pos, axis=1)  # midranks within positives
    ty = _sstats.rankdata(neg, axis=1)  # midranks within negatives
    tz = _sstats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # P(score_neg < this positive), ties 1/2
    v01 = 1.0 - (tz[:, m:] - ty) / m  # P(score_pos > this negative), ties 1/2
    return auc, v10, v01


def delong_test(y_true: Any, score_a: Any, score_b: Any, alpha: float = 0.05) -> dict[str, Any]:
    """DeLong test for two correlated ROC AUCs (same images, two models).

    Returns ``{"auc_a", "auc_b", "se_a", "se_b", "diff", "se", "z", "p", "lo", "hi",
    "reason"}``, ``diff = auc_b - auc_a`` with a Wald interval. ``reason``: ``""``,
    ``"one_class"`` (all NaN), ``"too_few"`` (a class of one image: AUCs only) or
    ``"zero_variance"`` (NaN test unless ``diff == 0``, then ``z = 0, p = 1``).
    """
    y = as_labels(y_true)
    a = as_scores(score_a, y.size, "score_a")
    b = as_scores(score_b, y.size, "score_b")
    m, n = int(y.sum()), int((1 - y).sum())
    keys = ("auc_a", "auc_b", "se_a", "se_b", "diff", "se", "z", "p", "lo", "hi")
    if m < 2 or n < 2:
        out: dict[str, Any] = dict.fromkeys(keys, math.nan)
        out["reason"] = "one_class" if m == 0 or n == 0 else "too_few"
        if m >= 1 and n >= 1:
            auc, _, _ = delong_components(y, np.vstack([a, b]))
            out.update(auc_a=float(auc[0]), auc_b=float(auc[1]), diff=float(auc[1] - auc[0]))
        return out
    auc, v10, v01 = delong_components(y, np.vstack([a, b]))
    s = np.cov(v10) / m + np.cov(v01) / n  # (2, 2), ddof=1 as in DeLong and pROC
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    se = math.sqrt(max(var, 0.0))
    diff = float(auc[1] - auc[0])
    q = float(_sstats.norm.ppf(1 - alpha / 2))
    reason = ""
    if se <= DELONG_ZERO_SE:  # constant placement values: a true 0 or its round-off
        reason, se = "zero_variance", 0.0
        # identical (or identically ranked) scores: no difference, else no test
        z, p, lo, hi = (0.0, 1.0, 0.0, 0.0) if abs(diff) < 1e-15 else (math.nan,) * 4
    else:
        z = diff / se
        p = float(2 * _sstats.norm.sf(abs(z)))
        lo, hi = diff - q * se, diff + q * se
    return {"auc_a": float(auc[0]), "auc_b": float(auc[1]),
            "se_a": math.sqrt(max(s[0, 0], 0.0)), "se_b": math.sqrt(max(s[1, 1], 0.0)),
            "diff": diff, "se": se, "z": float(z), "p": float(p), "lo": float(lo),
            "hi": float(hi), "reason": reason}


def mcnemar(correct_a: Any, correct_b: Any) -> dict[str, Any]:
    """McNemar test of paired accuracies from ``(N,)`` correct/incorrect booleans.

    ``b``: only A right, ``c``: only B right. Exact binomial below
    :data:`MCNEMAR_EXACT_BELOW` discordant pairs, else chi-square with continuity
    correction (statsmodels). Returns ``{"b", "c", "statistic", "p", "method"}``.
    """
    ca = np.asarray(correct_a).astype(bool)
    cb = np.asarray(correct_b).astype(bool)
    if ca.ndim != 1 or ca.shape != cb.shape:
        raise ValueError("correct_a and correct_b must be (N,) of equal length, got "
                         f"{ca.shape} and {cb.shape}")
    b = int(np.count_nonzero(ca & ~cb))
    c = int(np.count_nonzero(~ca & cb))
    exact = b + c < MCNEMAR_EXACT_BELOW
    res = sm_mcnemar([[0, b], [c, 0]], exact=exact, correction=True)
    return {"b": b, "c": c, "statistic": float(res.statistic), "p": float(res.pvalue),
            "method": "exact" if exact else "chi2_cc"}


#: Names used in outputs for the adjustment methods :func:`adjust_pvalues` accepts.
ADJUST_METHODS = {"holm": "Holm", "fdr_bh": "Benjamini-Hochberg"}


def adjust_pvalues(pvalues: Any, method: str = "holm") -> np.ndarray:
    """Multiplicity-adjusted p-values within one family, ``(K,)`` in, ``(K,)`` out.

    ``"holm"`` or ``"fdr_bh"``; NaN p-values stay NaN and do not count. Holm is written
    here (tested equal to ``multipletests``), whose Holm branch runs ``gc.collect()`` on
    every call: 0.2 s each in a process holding torch (``benchmarks/bench_holm.py``).
    """
    if method not in ADJUST_METHODS:
        raise ValueError(f"method must be one of {sorted(ADJUST_METHODS)}, got {method!r}")
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D (K,), got shape {p.shape}")
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any() and method == "holm":  # step-down Bonferroni: max over smaller p's
        q = p[ok]
        order = np.argsort(q)
        adjusted = np.empty_like(q)
        adjusted[order] = np.minimum(1.0, np.maximum.accumulate(
            q[order] * np.arange(len(q), 0, -1)))
        out[ok] = adjusted
    elif ok.any():
        out[ok] = multipletests(p[ok], method=method)[1]
    return out


def adjust_in_place(tests: list[dict[str, Any]], family: str, method: str = "holm",
                    key: str = "p", named: bool = True) -> int:
    """Adjust the ``key`` p-values of one family of test dicts in place (``p_adjusted``,
    ``adjust_method`` unless not ``named``, ``family``); returns how many are finite."""
    raw = [t.get(key, math.nan) for t in tests]
    adj = adjust_pvalues(raw, method) if tests else []
    name = {"adjust_method": ADJUST_METHODS[method]} if named else {}
    for t, pa in zip(tests, adj, strict=True):
        t.update(p_adjusted=float(pa), **name, family=family)
    return int(np.isfinite(np.asarray(raw, dtype=np.float64)).sum())
