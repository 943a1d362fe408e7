"""Test-set evaluation a reviewer would accept: metrics, bootstrap CIs, paired tests.

Labels 0 = benign, 1 = malignant; "malignant if ``prob >= t``" everywhere. Every figure has a CI
and the all-benign baseline beside it (docs/evaluation.md); bootstrap figures come from ``(B, N)``
multiplicities, tested against the scikit-learn reference :func:`classification_metrics`.
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

__all__ = ["THRESHOLD_METRICS", "THRESHOLD_FREE_METRICS", "TABLE_METRICS", "SCHEMA_VERSION",
           "display_name", "youden_threshold", "specificity_at_sensitivity",
           "expected_calibration_error", "reliability_curve", "classification_metrics",
           "batch_threshold_metrics", "batch_ranking_metrics", "evaluate_predictions",
           "metrics_table", "format_comparison", "compare", "metrics", "tables"]
