"""Calibration error of the malignant probability: equal-width bins, ECE, reliability curve.

Shared by :mod:`dermcam.evaluation` and :mod:`dermcam.calibration`, which do not import
each other; ``(N,)`` arrays, labels 0/1, ``prob`` in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dermcam.stats import as_labels, as_scores

__all__ = ["labels_probs", "bin_ids", "expected_calibration_error", "batch_ece",
           "reliability_curve"]


def labels_probs(y_true: Any, prob: Any, unit: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The checked ``(N,)`` 0/1 int labels and ``(N,)`` finite float64 scores (in [0, 1]
    with ``unit``); ValueError naming the problem."""
    y = as_labels(y_true, "y_true")
    p = as_scores(prob, y.size, "prob")
    if unit and ((p < 0).any() or (p > 1).any()):
        raise ValueError(f"prob must lie in [0, 1], got range [{p.min():.4g}, {p.max():.4g}]")
    return y, p


def bin_ids(prob: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability, as ``sklearn.calibration.calibration_curve``:
    bin 0 is ``[0, 1/n]``, bin k is ``(k/n, (k+1)/n]``. ``(N,)`` -> ``(N,)`` ints."""
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    return np.searchsorted(edges[1:-1], prob, side="left")


def expected_calibration_error(y_true: Any, prob: Any, n_bins: int = 10) -> float:
    """ECE ``sum_k (n_k / N) |mean(y)_k - mean(prob)_k|`` over ``n_bins`` equal-width bins;
    lower is better, defined even with one class."""
    y, p = labels_probs(y_true, prob)
    if y.size == 0:
        return math.nan
    bins = bin_ids(p, n_bins)
    gap = np.bincount(bins, weights=y - p, minlength=int(n_bins))
    return float(np.abs(gap).sum() / y.size)


def batch_ece(w: np.ndarray, y: np.ndarray, prob: np.ndarray, n_bins: int) -> np.ndarray:
    """The ECE of every resample, ``(B,)``, for ``w (B, N)`` multiplicities: per-bin sums of
    ``y - prob`` as one matrix product."""
    m = np.zeros((prob.size, int(n_bins)))
    m[np.arange(prob.size), bin_ids(prob, n_bins)] = y - prob
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(w @ m).sum(axis=1) / w.sum(axis=1)


def reliability_curve(y_true: Any, prob: Any, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per-bin ``(n_bins,)`` arrays ``bin_lower``, ``bin_upper``, ``count``, ``mean_predicted``
    and ``fraction_positive`` (NaN for empty bins), as sklearn's ``calibration_curve``."""
    y, p = labels_probs(y_true, prob)
    n_bins = int(n_bins)
    bins = bin_ids(p, n_bins)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_pred = np.bincount(bins, weights=p, minlength=n_bins) / count
        frac_pos = np.bincount(bins, weights=y.astype(float), minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "count": count,
        "mean_predicted": mean_pred,
        "fraction_positive": frac_pos,
    }
