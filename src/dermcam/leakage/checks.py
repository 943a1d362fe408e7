"""The checks every statistic on a per-image table shares: required columns, 0/1 labels,
and the round-off rule (values that differ only by round-off are constant)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

__all__ = ["LABEL_NAMES", "TARGET_NAMES", "EXACT_RTOL", "EXACT_ATOL", "require_columns",
           "label_values", "target_values", "round_off_tol", "is_constant"]

#: Names of the classes, by label, and of the explained (CAM target) classes.
LABEL_NAMES = {0: "benign", 1: "malignant"}
TARGET_NAMES = {0: "benign", 1: "malignant"}


def require_columns(df: pd.DataFrame, columns: Iterable[str]) -> None:
    """ValueError naming the ``columns`` that ``df`` lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"missing column(s) {missing}; the table has {list(df.columns)}")


def label_values(df: pd.DataFrame, label_col: str) -> np.ndarray:
    """The label column as ``(N,)`` float64: 0 benign, 1 malignant, NaN missing
    (:func:`dermcam.stats.as_labels`); any other value raises rather than counting as benign."""
    from dermcam.stats import as_labels

    return as_labels(df[label_col].to_numpy(), f"column {label_col!r}", allow_missing=True)


def target_values(df: pd.DataFrame, target_col: str) -> np.ndarray:
    """``(N,)`` float64 explained class per row, checked like the labels."""
    return label_values(df, target_col)


#: A spread below this times ``max|y|`` is floating-point round-off, not variation
#: (``1 - area`` in float64 leaves residuals near 1e-16; real metrics vary by > 1e-4).
EXACT_RTOL = 1e-10
#: ... and so is one below this in absolute terms: the excess leakage of uniform heatmaps
#: is itself round-off (about 1e-16); every localisation metric is of order 1.
EXACT_ATOL = 1e-9


def round_off_tol(y) -> float:
    """The spread below which ``y`` counts as constant (or a fit as exact):
    ``max(EXACT_RTOL * max|y|, EXACT_ATOL)``."""
    y = np.asarray(y, dtype=np.float64)
    scale = float(np.nanmax(np.abs(y))) if np.isfinite(y).any() else 0.0
    return max(EXACT_RTOL * scale, EXACT_ATOL)


def is_constant(y) -> bool:
    """True when the finite values of ``y`` vary by no more than :func:`round_off_tol`."""
    y = np.asarray(y, dtype=np.float64)
    y = y[np.isfinite(y)]
    return y.size == 0 or float(np.ptp(y)) <= round_off_tol(y)
