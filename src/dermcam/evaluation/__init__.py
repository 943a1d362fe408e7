"""Test-set evaluation a reviewer would accept: metrics, bootstrap CIs, paired tests.

Labels: ``0`` = benign, ``1`` = malignant. ``prob`` is the predicted probability
of *malignant*. A threshold ``t`` means "malignant if ``prob >= t``" (the
scikit-learn ``roc_curve`` convention), everywhere in dermcam.

Why these metrics. With 75 malignant images out of 379, predicting "benign" for
everything already scores accuracy 304/379 = 0.802, so accuracy differences of a
few thousandths between models say nothing. :func:`evaluate_predictions` reports
every figure with a stratified bootstrap CI, adds the threshold-free metrics that
the ISIC 2016 challenge ranked by (average precision) and ROC AUC, the all-benign
baseline with its own CIs, and paired model comparisons (DeLong for AUC, paired
bootstrap for AUC/AP/accuracy, McNemar for accuracy) with Holm correction across
pairs.

Speed. Every bootstrap figure is computed from per-resample sample multiplicities
(``(B, N)`` count matrices, :func:`dermcam.stats.bootstrap_counts`): confusion
counts are matrix products and AUC/AP/ECE are cumulative sums over the sorted
scores, so all resamples are evaluated at once. The scikit-learn based
:func:`classification_metrics` is the reference those fast paths are tested
against, and provides the point estimates.

Modules: :mod:`~dermcam.evaluation.metrics` (point metrics and their bootstrap paths),
:mod:`~dermcam.evaluation.compare` (:func:`evaluate_predictions`: CIs, baseline, paired
tests), :mod:`~dermcam.evaluation.tables` (:func:`metrics_table`,
:func:`format_comparison`); ECE and the reliability curve live in
:mod:`dermcam.reliability` and are re-exported here with the rest of the public API.
"""


from __future__ import annotations

from dermcam.evaluation import compare, metrics, tables
from dermcam.evaluation.compare import SCHEMA_VERSION, display_name, evaluate_predictions
from dermcam.evaluation.metrics import (
    THRESHOLD_FREE_METRICS,
    THRESHOLD_METRICS,
    batch_ranking_metrics,
    batch_threshold_metrics,
    classification_metrics,
    specificity_at_sensitivity,
    youden_threshold,
)
from dermcam.evaluation.tables import TABLE_METRICS, format_comparison, metrics_table
from dermcam.reliability import expected_calibration_error, reliability_curve

__all__ = [
    "THRESHOLD_METRICS",
    "THRESHOLD_FREE_METRICS",
    "TABLE_METRICS",
    "SCHEMA_VERSION",
    "display_name",
    "youden_threshold",
    "specificity_at_sensitivity",
    "expected_calibration_error",
    "reliability_curve",
    "classification_metrics",
    "batch_threshold_metrics",
    "batch_ranking_metrics",
    "evaluate_predictions",
    "metrics_table",
    "format_comparison",
    "compare",
    "metrics",
    "tables",
]
