"""Point metrics of one model on one test set, and their fast bootstrap paths.

:func:`classification_metrics` (scikit-learn) gives the point estimates;
:func:`batch_threshold_metrics` and :func:`batch_ranking_metrics` evaluate every bootstrap
resample at once from ``(B, N)`` sample multiplicities and are tested against it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn import metrics as skm

from dermcam.reliability import batch_ece, expected_calibration_error, labels_probs

__all__ = ["THRESHOLD_METRICS", "THRESHOLD_FREE_METRICS", "both_classes",
           "youden_threshold", "specificity_at_sensitivity", "classification_metrics",
           "batch_threshold_metrics", "batch_ranking_metrics"]

#: Metrics that depend on the decision threshold (computed from the confusion counts).
THRESHOLD_METRICS: tuple[str, ...] = (
    "accuracy", "balanced_accuracy", "precision_benign", "recall_benign", "f1_benign",
    "precision_malignant", "recall_malignant", "f1_malignant", "sensitivity", "specificity")
#: Metrics computed from the scores alone.
THRESHOLD_FREE_METRICS: tuple[str, ...] = ("roc_auc", "average_precision", "spec_at_95_sens",
                                            "ece")

_SENS_TARGET = 0.95  # the "95" in spec_at_95_sens
_TIE_TOL = 1e-12


def both_classes(y: np.ndarray) -> bool:
    """True when the ``(N,)`` 0/1 labels hold both classes."""
    return bool(y.size) and 0 < int(y.sum()) < y.size


def youden_threshold(y_true: Any, prob: Any) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1, over the observed
    scores; meant for the validation set. Ties in J (within 1e-12) go to the candidate closest
    to 0.5; ValueError with one class only."""
    y, p = labels_probs(y_true, prob, unit=False)
    if not both_classes(y):
        raise ValueError("youden_threshold needs both classes in y_true "
                         f"(got {int(y.sum())} malignant of {y.size})")
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    j = np.where(np.isfinite(thr), tpr - fpr, -np.inf)
    cand = np.flatnonzero(j >= j.max() - _TIE_TOL)
    return float(thr[cand[np.argmin(np.abs(thr[cand] - 0.5))]])


def specificity_at_sensitivity(y_true: Any, prob: Any, target: float = _SENS_TARGET) -> float:
    """Best specificity among the observed thresholds with sensitivity >= ``target`` (no
    interpolation); NaN with one class only."""
    y, p = labels_probs(y_true, prob, unit=False)
    if not 0 <= target <= 1:
        raise ValueError(f"target must be in [0, 1], got {target}")
    if not both_classes(y):
        return math.nan
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    return float(1.0 - fpr[tpr >= target - _TIE_TOL].min())


def classification_metrics(y_true: Any, prob: Any, threshold: float = 0.5, n_bins: int = 10
                           ) -> dict[str, Any]:
    """All point metrics of one model (scikit-learn based): :data:`THRESHOLD_METRICS` at
    ``prob >= threshold``, ``confusion_matrix`` ``[[tn, fp], [fn, tp]]``, the threshold-free
    metrics, ``n``, ``n_malignant`` and ``threshold``; undefined values (one class, 0/0) NaN."""
    y, p = labels_probs(y_true, prob)
    pred = (p >= threshold).astype(np.int64)
    both = both_classes(y)
    prec, rec, f1, _ = skm.precision_recall_fscore_support(y, pred, labels=[0, 1],
                                                          zero_division=np.nan)
    cm = skm.confusion_matrix(y, pred, labels=[0, 1])
    return {
        "accuracy": float(skm.accuracy_score(y, pred)) if y.size else math.nan,
        # sklearn's balanced accuracy silently averages over the classes present;
        # with one class it is undefined here.
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)) if both else math.nan,
        "precision_benign": float(prec[0]),
        "recall_benign": float(rec[0]),
        "f1_benign": float(f1[0]),
        "precision_malignant": float(prec[1]),
        "recall_malignant": float(rec[1]),
        "f1_malignant": float(f1[1]),
        "sensitivity": float(rec[1]),
        "specificity": float(rec[0]),
        "confusion_matrix": cm.astype(int).tolist(),
        "roc_auc": float(skm.roc_auc_score(y, p)) if both else math.nan,
        "average_precision": float(skm.average_precision_score(y, p)) if both else math.nan,
        "spec_at_95_sens": specificity_at_sensitivity(y, p, _SENS_TARGET),
        "ece": expected_calibration_error(y, p, n_bins),
        "n": int(y.size),
        "n_malignant": int(y.sum()),
        "threshold": float(threshold),
    }


def batch_threshold_metrics(w: np.ndarray, y: np.ndarray, pred: np.ndarray
                            ) -> dict[str, np.ndarray]:
    """Each of :data:`THRESHOLD_METRICS` as ``(B,)`` for ``w (B, N)`` multiplicities, from
    the confusion counts; 0/0 -> NaN."""
    pos, pp = y == 1, pred.astype(bool)
    tp = w @ (pos & pp).astype(np.float64)
    fn = w @ (pos & ~pp).astype(np.float64)
    fp = w @ (~pos & pp).astype(np.float64)
    tn = w @ (~pos & ~pp).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = tp / (tp + fn)
        spec = tn / (tn + fp)
        return {
            "accuracy": (tp + tn) / (tn + fp + fn + tp),
            "balanced_accuracy": (sens + spec) / 2,
            "precision_benign": tn / (tn + fn),
            "recall_benign": spec,
            "f1_benign": 2 * tn / (2 * tn + fn + fp),
            "precision_malignant": tp / (tp + fp),
            "recall_malignant": sens,
            "f1_malignant": 2 * tp / (2 * tp + fp + fn),
            "sensitivity": sens,
            "specificity": spec,
        }


def batch_ranking_metrics(w: np.ndarray, y: np.ndarray, prob: np.ndarray, n_bins: int,
                          target: float = _SENS_TARGET) -> dict[str, np.ndarray]:
    """ROC AUC, AP, specificity at ``target`` sensitivity and ECE, ``(B,)`` each, for every
    row of ``w (B, N)``; ties handled as scikit-learn does on the resampled data."""
    order = np.argsort(-prob, kind="stable")  # descending scores
    s = prob[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    wo = w[:, order]
    yo = y[order].astype(np.float64)
    wp = np.add.reduceat(wo * yo, starts, axis=1)  # (B, U) positives per score
    wn = np.add.reduceat(wo * (1.0 - yo), starts, axis=1)  # (B, U) negatives per score
    n_pos = wp.sum(axis=1)
    n_neg = wn.sum(axis=1)
    tp = np.cumsum(wp, axis=1)  # predicted positive at threshold = this score
    fp = np.cumsum(wn, axis=1)
    defined = (n_pos > 0) & (n_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # AUC: each positive beats the negatives with strictly lower scores, ties 1/2.
        below = n_neg[:, None] - fp
        auc = (wp * (below + 0.5 * wn)).sum(axis=1) / (n_pos * n_neg)
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 0.0)
        ap = (wp * precision).sum(axis=1) / n_pos
        tpr = tp / n_pos[:, None]
        fpr = fp / n_neg[:, None]
    hit = tpr >= target - _TIE_TOL
    first = np.argmax(hit, axis=1)
    spec = 1.0 - fpr[np.arange(w.shape[0]), first]
    if target <= 0:
        spec = np.ones(w.shape[0])
    nan = np.full(w.shape[0], np.nan)
    return {
        "roc_auc": np.where(defined, auc, nan),
        "average_precision": np.where(defined, ap, nan),
        "spec_at_95_sens": np.where(defined, spec, nan),
        "ece": batch_ece(w, y, prob, n_bins),
    }
