"""Calibration error of the malignant probability: equal-width bins, ECE, reliability curve.

Pure functions on ``(N,)`` arrays, shared by :mod:`dermcam.evaluation` (the ECE of every
model, with bootstrap CIs) and :mod:`dermcam.calibration` (ECE before and after Platt or
temperature scaling). Both import from here and neither imports the other; this module
imports only :mod:`dermcam.stats`.

Labels: ``0`` = benign, ``1`` = malignant; ``prob`` is the malignant probability in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dermcam.stats import as_labels, as_scores

__all__ = ["labels_probs", "bin_ids", "expected_calibration_error", "reliability_curve"]


def labels_probs(y_true: Any, prob: Any, unit: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The checked ``(N,)`` 0/1 int labels and ``(N,)`` finite float64 scores.

    ``unit``: the scores must also lie in [0, 1] (probabilities). ValueError naming the
    problem otherwise (labels other than 0/1, a shape that does not match, NaN).
    """
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
    """Expected calibration error of the malignant-class probability.

    ``ECE = sum_k (n_k / N) * |mean(y)_k - mean(prob)_k|`` over ``n_bins``
    equal-width bins of ``prob`` on [0, 1] (bin edges as in
    :func:`reliability_curve`); empty bins contribute nothing. Lower is better;
    0 = perfectly calibrated. ``y_true``, ``prob``: ``(N,)``, ``prob`` in [0, 1].
    Defined even with one class (it is a calibration, not a ranking, measure).
    """
    y, p = labels_probs(y_true, prob)
    if y.size == 0:
        return math.nan
    bins = bin_ids(p, n_bins)
    gap = np.bincount(bins, weights=y - p, minlength=int(n_bins))
    return float(np.abs(gap).sum() / y.size)


def reliability_curve(y_true: Any, prob: Any, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per-bin calibration summary for a reliability diagram.

    ``y_true``, ``prob``: ``(N,)``. Returns ``(n_bins,)`` arrays ``bin_lower``,
    ``bin_upper``, ``count``, ``mean_predicted`` and ``fraction_positive``
    (the last two NaN for empty bins). Non-empty bins match
    ``sklearn.calibration.calibration_curve(strategy="uniform")``.
    """
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
