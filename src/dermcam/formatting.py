"""Number, p-value and CI formatting, and the labels of the classification metrics: the one
home for how dermcam writes a number. Imports nothing heavy.

A value that is None, NaN, infinite, a bool or not a number is shown as ``missing``;
``digits`` is the number of decimals; ``minus`` the character written for a negative sign.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

__all__ = ["MINUS", "MetricLabel", "METRIC_LABELS", "metric_label", "is_number", "fmt_num",
           "fmt_pct", "fmt_p", "fmt_ci", "fmt_ci_entry", "fmt_seconds"]

#: The typographic minus sign (U+2212).
MINUS = "\u2212"
#: ``fmt_ci``'s default layout: ``0.817 [0.750, 0.883]``.
CI_BRACKETS = "{v} [{lo}, {hi}]"


# ----------------------------------------------------------------- numbers


def is_number(v: Any) -> bool:
    """True for a finite real number, numpy scalars included; False for None, NaN, +-inf,
    bools (numpy's too) and anything else."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def fmt_num(v: Any, digits: int = 3, *, missing: str = "n/a", sign: bool = False,
            minus: str = "-") -> str:
    """``v`` with ``digits`` decimals; ``sign``: always write the sign (``+0.012``)."""
    if not is_number(v):
        return missing
    s = f"{float(v):{'+' if sign else ''}.{int(digits)}f}"
    return s.replace("-", minus) if minus != "-" else s


def fmt_pct(v: Any, digits: int = 1, *, missing: str = "n/a") -> str:
    """A share as a percentage, no space before the ``%`` (``0.123`` -> ``"12.3%"``)."""
    return f"{float(v):.{int(digits)}%}" if is_number(v) else missing


def fmt_p(p: Any, digits: int = 3, *, significant: bool = False, label: str = "",
          missing: str = "n/a", floor: float = 0.001) -> str:
    """A p-value: ``"< 0.001"`` below ``floor``, else ``digits`` decimals (or significant
    digits with ``significant=True``); ``label`` in front: ``"p < 0.001"``, ``"p = 0.012"``."""
    if not is_number(p):
        return missing
    value = f"{p:.{int(digits)}{'g' if significant else 'f'}}"
    text = f"< {floor:g}" if p < floor else f"= {value}" if label else value
    return f"{label} {text}" if label else text


def fmt_ci(value: Any, lo: Any, hi: Any, digits: int = 3, *, template: str = CI_BRACKETS,
           collapse: bool = True, missing: str = "n/a", sign: bool = False,
           minus: str = "-") -> str:
    """A point estimate with its interval, laid out by ``template`` (fields ``{v}``, ``{lo}``,
    ``{hi}``), numbers as :func:`fmt_num`. ``collapse=True``: ``missing`` for an undefined
    value, the value alone when a bound is undefined; ``collapse=False``: every part on its
    own (``missing`` in its place)."""
    def f(x: Any) -> str:
        return fmt_num(x, digits, missing=missing, sign=sign, minus=minus)

    if collapse:
        if not is_number(value):
            return missing
        if not (is_number(lo) and is_number(hi)):
            return f(value)
    return template.format(v=f(value), lo=f(lo), hi=f(hi))


def fmt_ci_entry(entry: Any, digits: int = 3, *, collapse: bool = True,
                 missing: str = "n/a") -> str:
    """:func:`fmt_ci` of a ``{"value", "lo", "hi"}`` mapping (``missing`` where it is not one
    or its value is not a number)."""
    if not isinstance(entry, dict) or not is_number(entry.get("value")):
        return missing
    return fmt_ci(entry["value"], entry.get("lo"), entry.get("hi"), digits, collapse=collapse,
                  missing=missing)


def fmt_seconds(s: Any) -> str:
    """``"12.3 s"`` under two minutes, ``"2.5 min (150 s)"`` from there on."""
    if not is_number(s):
        return "n/a"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min ({s:.0f} s)"


# ----------------------------------------------------------------- metric labels


@dataclass(frozen=True)
class MetricLabel:
    """A metric's ``label``, its ``short`` form for narrow tables (default ``label``) and its
    direction."""

    label: str
    higher_is_better: bool
    short: str = ""

    def __post_init__(self) -> None:
        if not self.short:
            object.__setattr__(self, "short", self.label)


#: Every classification metric dermcam reports, by its key in ``metrics.json``.
METRIC_LABELS: dict[str, MetricLabel] = {
    "accuracy": MetricLabel("Accuracy", True),
    "balanced_accuracy": MetricLabel("Balanced accuracy", True, "Balanced acc."),
    "precision_benign": MetricLabel("Benign precision", True, "Precision benign"),
    "recall_benign": MetricLabel("Benign recall", True, "Recall benign"),
    "f1_benign": MetricLabel("Benign F1", True, "F1 benign"),
    "precision_malignant": MetricLabel("Malignant precision", True, "Precision malignant"),
    "recall_malignant": MetricLabel("Malignant recall", True, "Recall malignant"),
    "f1_malignant": MetricLabel("Malignant F1", True, "F1 malignant"),
    "sensitivity": MetricLabel("Sensitivity", True),
    "specificity": MetricLabel("Specificity", True),
    "roc_auc": MetricLabel("ROC AUC", True),
    "average_precision": MetricLabel("Average precision", True, "Avg. precision"),
    "spec_at_95_sens": MetricLabel("Specificity at 95 % sensitivity", True),
    "ece": MetricLabel("ECE", False),
    "brier": MetricLabel("Brier score", False, "Brier"),
}


def metric_label(key: str, short: bool = False) -> str:
    """The display label of metric ``key``; a ``KeyError`` names the known keys."""
    if key not in METRIC_LABELS:
        raise KeyError(f"no label for metric {key!r}; known: {sorted(METRIC_LABELS)}")
    return METRIC_LABELS[key].short if short else METRIC_LABELS[key].label
