"""Tables of an :func:`~dermcam.evaluation.evaluate_predictions` result: a DataFrame
with every metric and its CI (:func:`metrics_table`) and rows of strings for a terminal
table (:func:`format_comparison`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from dermcam.evaluation.compare import BASELINE_NAME
from dermcam.evaluation.metrics import THRESHOLD_FREE_METRICS
from dermcam.formatting import MINUS, fmt_ci, fmt_num, metric_label

__all__ = ["TABLE_METRICS", "metrics_table", "format_comparison"]


def _fmt_num(x: float) -> str:
    """A number in the library's sentences and terminal tables: 3 decimals, typographic
    minus, ``n/a`` when undefined."""
    return fmt_num(x, minus=MINUS)


#: Column order of :func:`metrics_table`: the reference study's columns first.
TABLE_METRICS: tuple[str, ...] = (
    "accuracy",
    "f1_benign",
    "f1_malignant",
    "precision_benign",
    "recall_benign",
    "precision_malignant",
    "recall_malignant",
    "balanced_accuracy",
    "roc_auc",
    "average_precision",
    "sensitivity",
    "specificity",
    "spec_at_95_sens",
    "ece",
)


def _model_metric(entry: Mapping[str, Any], metric: str, at: str) -> Mapping[str, Any]:
    block = "threshold_free" if metric in THRESHOLD_FREE_METRICS else at
    return entry[block][metric]


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def metrics_table(result: Mapping[str, Any], at: str = "at_threshold") -> pd.DataFrame:
    """One row per model plus the all-benign baseline, every metric with its CI.

    ``result``: output of :func:`evaluate_predictions`; ``at``: ``"at_threshold"``
    (the validation-chosen threshold) or ``"at_0.5"``. Columns: ``model``,
    ``display_name``, ``threshold``, then for each of :data:`TABLE_METRICS`
    (study's columns first) ``metric``, ``metric_lo``, ``metric_hi``.
    Undefined values are NaN.
    """
    if at not in ("at_threshold", "at_0.5"):
        raise ValueError(f"at must be 'at_threshold' or 'at_0.5', got {at!r}")
    rows = []
    for m, entry in result["models"].items():
        row: dict[str, Any] = {
            "model": m,
            "display_name": entry.get("display_name", m),
            "threshold": entry["threshold"] if at == "at_threshold" else 0.5,
        }
        for metric in TABLE_METRICS:
            ci = _model_metric(entry, metric, at)
            row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = (
                _nan(ci["value"]),
                _nan(ci["lo"]),
                _nan(ci["hi"]),
            )
        rows.append(row)
    base = result["baselines"]["all_benign"]
    row = {"model": "all_benign", "display_name": BASELINE_NAME, "threshold": math.nan}
    for metric in TABLE_METRICS:
        ci = base[metric]
        row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = (
            _nan(ci["value"]),
            _nan(ci["lo"]),
            _nan(ci["hi"]),
        )
    rows.append(row)
    columns = ["model", "display_name", "threshold"] + [
        c for metric in TABLE_METRICS for c in (metric, f"{metric}_lo", f"{metric}_hi")
    ]
    return pd.DataFrame(rows, columns=columns)


#: Metric columns of :func:`format_comparison` (short labels from the registry).
_COMPARISON_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "f1_malignant",
    "sensitivity",
    "specificity",
    "roc_auc",
    "average_precision",
    "ece",
)


def _cell(ci: Mapping[str, Any]) -> str:
    """``value (lo–hi)`` of a ``{"value", "lo", "hi"}`` dict for a terminal table."""
    return fmt_ci(ci["value"], ci["lo"], ci["hi"], template="{v} ({lo}\u2013{hi})", minus=MINUS)


def format_comparison(result: Mapping[str, Any], at: str = "at_threshold") -> list[list[str]]:
    """Rows of strings for a terminal table (e.g. ``rich.table.Table``).

    The first row is the header (``Model``, ``Threshold``, then metrics); each
    following row is a model, the last the all-benign baseline. Cells read
    ``value (lo–hi)``. Pairwise comparisons are in ``result["pairwise"]``
    (:func:`dermcam.views.pairwise_table`).
    """
    if at not in ("at_threshold", "at_0.5"):
        raise ValueError(f"at must be 'at_threshold' or 'at_0.5', got {at!r}")
    header = ["Model", "Threshold"] + [metric_label(k, short=True) for k in _COMPARISON_METRICS]
    rows = [header]
    for m, entry in result["models"].items():
        t = entry["threshold"] if at == "at_threshold" else 0.5
        rows.append(
            [entry.get("display_name", m), _fmt_num(t)]
            + [_cell(_model_metric(entry, key, at)) for key in _COMPARISON_METRICS]
        )
    base = result["baselines"]["all_benign"]
    rows.append([BASELINE_NAME, "\u2014"] + [_cell(base[key]) for key in _COMPARISON_METRICS])
    return rows
