"""The checks every statistic on a per-image table shares: required columns, 0/1
labels, and the round-off rule (values that differ only by floating-point round-off
are constant: no test, no p-value)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

__all__ = ["LABEL_NAMES", "TARGET_NAMES", "EXACT_RTOL", "EXACT_ATOL", "require_columns",
           "label_values", "target_values", "round_off_tol", "is_constant"]

#: Names of the classes, by label.
LABEL_NAMES = {0: "benign", 1: "malignant"}

#: Names of the explained (CAM target) classes, by class index.
TARGET_NAMES = {0: "benign", 1: "malignant"}


def require_columns(df: pd.DataFrame, columns: Iterable[str]) -> None:
    """ValueError naming the ``columns`` that ``df`` lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"missing column(s) {missing}; the table has {list(df.columns)}")


def label_values(df: pd.DataFrame, label_col: str) -> np.ndarray:
    """The label column as ``(N,)`` float64: 0 benign, 1 malignant, NaN missing.

    The label check of :func:`compare_classes`, :func:`size_confound` and
    :func:`missing_at_chance`: :func:`dermcam.stats.as_labels` with missing labels
    allowed (those rows are dropped and counted). Any other value that is not 0 or 1
    (2, -1, 0.5, the text ``"malignant"``) raises ValueError naming the values, instead
    of being counted as benign or dropped without a count. The same check, under the
    name ``cam_target``, validates the class each heatmap explains (:func:`target_values`).
    """
    from dermcam.stats import as_labels

    return as_labels(df[label_col].to_numpy(), f"column {label_col!r}", allow_missing=True)


def target_values(df: pd.DataFrame, target_col: str) -> np.ndarray:
    """``(N,)`` float64 explained class per row (0 benign, 1 malignant, NaN missing).

    Checked like the labels (:func:`label_values`): a class index other than 0 or 1 raises.
    """
    return label_values(df, target_col)


#: A residual (or a spread) smaller than this times ``max|y|`` is floating-point
#: round-off, not variation: ``1 - area`` computed in float64 leaves residuals near
#: 1e-16, real metrics vary by more than 1e-4.
EXACT_RTOL = 1e-10

#: ... and so is one below this in absolute terms, whatever ``max|y|``. The relative
#: rule alone fails where the values themselves are round-off: the excess leakage of
#: uniform heatmaps is ``leakage - (1 - area)``, about 1e-16 at 224 x 224, and relative
#: to its own size that noise is "variation" that a test turns into p-values. Every
#: localisation metric is a share, a ratio or an AUROC of order 1, so a spread below
#: 1e-9 is never a real difference between images.
EXACT_ATOL = 1e-9


def round_off_tol(y) -> float:
    """The spread below which ``y`` counts as constant (or a fit as exact).

    ``max(EXACT_RTOL * max|y|, EXACT_ATOL)`` (:data:`EXACT_RTOL`, :data:`EXACT_ATOL`);
    ``y`` any array of finite values (NaNs ignored).
    """
    y = np.asarray(y, dtype=np.float64)
    scale = float(np.nanmax(np.abs(y))) if np.isfinite(y).any() else 0.0
    return max(EXACT_RTOL * scale, EXACT_ATOL)


def is_constant(y) -> bool:
    """True when the finite values of ``y`` vary by no more than :func:`round_off_tol`."""
    y = np.asarray(y, dtype=np.float64)
    y = y[np.isfinite(y)]
    return y.size == 0 or float(np.ptp(y)) <= round_off_tol(y)
