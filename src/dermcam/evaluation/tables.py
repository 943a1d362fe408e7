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
    """3 decimals, typographic minus, ``n/a`` when undefined."""
    return fmt_num(x, minus=MINUS)


#: Column order of :func:`metrics_table`: the reference study's columns first.
TABLE_METRICS: tuple[str, ...] = (
    "accuracy", "f1_benign", "f1_malignant", "precision_benign", "recall_benign",
    "precision_malignant", "recall_malignant", "balanced_accuracy", "roc_auc",
    "average_precision", "sensitivity", "specificity", "spec_at_95_sens", "ece")


def _model_metric(entry: Mapping[str, Any], metric: str, at: str) -> Mapping[str, Any]:
    block = "threshold_free" if metric in THRESHOLD_FREE_METRICS else at
    return entry[block][metric]


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def metrics_table(result: Mapping[str, Any], at: str = "at_threshold") -> pd.DataFrame:
    """One row per model plus the all-benign baseline: ``model``, ``display_name``,
    ``threshold``, then ``metric``, ``metric_lo``, ``metric_hi`` for each of
    :data:`TABLE_METRICS` (NaN where undefined); ``at``: ``"at_threshold"`` or ``"at_0.5"``."""
    if at not in ("at_threshold", "at_0.5"):
        raise ValueError(f"at must be 'at_threshold' or 'at_0.5', got {at!r}")

    def row(model: str, name: str, threshold: float, get) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "display_name": name, "threshold": threshold}
        for metric in TABLE_METRICS:
            ci = get(metric)
            out[metric], out[f"{metric}_lo"], out[f"{metric}_hi"] = (
                _nan(ci["value"]), _nan(ci["lo"]), _nan(ci["hi"]))
        return out

    rows = [row(m, entry.get("display_name", m),
                entry["threshold"] if at == "at_threshold" else 0.5,
                lambda k, e=entry: _model_metric(e, k, at))
            for m, entry in result["models"].items()]
    rows.append(row("all_benign", BASELINE_NAME, math.nan, result["baselines"]["all_benign"].get))
    columns = ["model", "display_name", "threshold"] + [
        c for metric in TABLE_METRICS for c in (metric, f"{metric}_lo", f"{metric}_hi")
    ]
    return pd.DataFrame(rows, columns=columns)


#: Metric columns of :func:`format_comparison` (short labels from the registry).
_COMPARISON_METRICS: tuple[str, ...] = (
    "accuracy", "balanced_accuracy", "f1_malignant", "sensitivity", "specificity", "roc_auc",
    "average_precision", "ece")


def _cell(ci: Mapping[str, Any]) -> str:
    """``value (lo–hi)`` of a ``{"value", "lo", "hi"}`` dict for a terminal table."""
    return fmt_ci(ci["value"], ci["lo"], ci["hi"], template="{v} ({lo}\u2013{hi})", minus=MINUS)


def format_comparison(result: Mapping[str, Any], at: str = "at_threshold") -> list[list[str]]:
    """Rows of strings for a terminal table: a header, one row per model, the all-benign
    baseline last; cells ``value (lo–hi)``."""
    if at not in ("at_threshold", "at_0.5"):
        raise ValueError(f"at must be 'at_threshold' or 'at_0.5', got {at!r}")
    rows = [["Model", "Threshold"] + [metric_label(k, short=True) for k in _COMPARISON_METRICS]]
    for m, entry in result["models"].items():
        t = entry["threshold"] if at == "at_threshold" else 0.5
        rows.append([entry.get("display_name", m), _fmt_num(t)]
                    + [_cell(_model_metric(entry, key, at)) for key in _COMPARISON_METRICS])
    base = result["baselines"]["all_benign"]
    rows.append([BASELINE_NAME, "\u2014"] + [_cell(base[key]) for key in _COMPARISON_METRICS])
    return rows
