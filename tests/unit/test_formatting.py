"""Tests for dermcam.formatting: the one home of number, p-value and CI formatting and of
the classification metrics' labels. Every expected string is written out by hand."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dermcam.formatting import (
    METRIC_LABELS,
    MINUS,
    MetricLabel,
    fmt_ci,
    fmt_num,
    fmt_p,
    fmt_pct,
    fmt_seconds,
    is_number,
    metric_label,
)

NAN, INF = float("nan"), float("inf")
UNDEFINED = (None, NAN, INF, -INF, True, False, "0.5", [0.5], {"value": 0.5},
             np.bool_(True), np.float32("nan"), np.float64("-inf"))


# ----------------------------------------------------------------- numbers


@pytest.mark.parametrize("v", UNDEFINED)
def test_undefined_values_are_missing(v):
    assert not is_number(v)
    assert fmt_num(v) == "n/a"
    assert fmt_num(v, missing="-") == "-"
    assert fmt_pct(v) == "n/a"
    assert fmt_pct(v, missing="-") == "-"
    assert fmt_p(v) == "n/a"
    assert fmt_seconds(v) == "n/a"


def test_numpy_scalars_are_numbers():
    """A stage's in-memory results may hold numpy's other scalar types."""
    assert is_number(np.float32(0.5)) and is_number(np.int64(3)) and is_number(np.uint8(0))
    assert is_number(np.float16(1.5))


@pytest.mark.parametrize("v, digits, expected", [
    (0.81666, 3, "0.817"),
    (0.8165, 3, "0.817"),  # 0.8165 is 0.81650000000000000355... in binary
    (0.1245, 3, "0.124"),  # 0.1245 is 0.12449999999999999955...
    (1.0005, 3, "1.000"),  # 1.0005 is 1.00049999999999994493...
    (0.0005, 3, "0.001"),  # 0.0005 is 0.00050000000000000001...
    (2.675, 2, "2.67"),  # 2.67499999...
    (2.5, 0, "2"),  # round half to even
    (3.5, 0, "4"),
    (3, 3, "3.000"),  # ints are numbers
    (0, 2, "0.00"),
    (-0.0004, 3, "-0.000"),  # the sign of a value rounded to zero is kept
    (1e-300, 3, "0.000"),
    (123456.789, 1, "123456.8"),
    (np.float64(0.25), 2, "0.25"),  # numpy's float64 is a float
    (np.float32(0.25), 2, "0.25"),  # 0.25 is exact in float32 too
    (np.int64(3), 1, "3.0"),
])
def test_fmt_num(v, digits, expected):
    assert fmt_num(v, digits) == expected


def test_fmt_num_sign_and_minus():
    assert fmt_num(0.0123, sign=True) == "+0.012"
    assert fmt_num(0, sign=True) == "+0.000"
    assert fmt_num(-0.0123, sign=True) == "-0.012"
    assert fmt_num(-0.5, minus=MINUS) == "\u22120.500"
    assert fmt_num(-0.5, sign=True, minus=MINUS) == "\u22120.500"
    assert fmt_num(0.5, sign=True, minus=MINUS) == "+0.500"
    assert fmt_num(None, minus=MINUS) == "n/a"


# ----------------------------------------------------------------- percentages


@pytest.mark.parametrize("v, digits, expected", [
    (0.123, 1, "12.3%"),
    (0.5, 0, "50%"),
    (1, 1, "100.0%"),  # an int share
    (0, 1, "0.0%"),
    (2 / 3, 1, "66.7%"),
    (0.875, 0, "88%"),  # 87.5 exactly: round half to even
    (0.625, 0, "62%"),  # 62.5 exactly: round half to even
    (0.125, 2, "12.50%"),
    (-0.0004, 1, "-0.0%"),  # the sign of a value rounded to zero is kept
    (1.5, 1, "150.0%"),  # not clipped
    (np.float32(0.25), 1, "25.0%"),
])
def test_fmt_pct(v, digits, expected):
    assert fmt_pct(v, digits) == expected


def test_fmt_pct_defaults_to_one_decimal():
    assert fmt_pct(0.0449) == "4.5%"  # 4.49 -> 4.5
    assert fmt_pct(0.0444) == "4.4%"


# ----------------------------------------------------------------- p-values


@pytest.mark.parametrize("p, expected", [
    (0.0456, "0.046"),
    (0.05, "0.050"),
    (1.0, "1.000"),
    (1, "1.000"),
    (0.001, "0.001"),  # the floor itself is shown
    (0.000999, "< 0.001"),
    (1e-300, "< 0.001"),
    (0.0, "< 0.001"),
    (0.0015, "0.002"),
])
def test_fmt_p_decimals(p, expected):
    assert fmt_p(p) == expected


@pytest.mark.parametrize("p, expected", [
    (0.0234, "p = 0.023"),
    (0.0015, "p = 0.0015"),  # significant digits, not decimals
    (0.5, "p = 0.5"),
    (1.0, "p = 1"),
    (0.0004, "p < 0.001"),
    (NAN, "p undefined"),
    (None, "p undefined"),
])
def test_fmt_p_sentence_style(p, expected):
    """The library's sentences (dermcam.evaluation): 2 significant digits, ``p`` in front."""
    assert fmt_p(p, 2, significant=True, label="p", missing="p undefined") == expected


def test_fmt_p_digits_and_floor():
    assert fmt_p(0.01234, 4) == "0.0123"
    assert fmt_p(0.00005, 4, floor=0.0001) == "< 0.0001"
    assert fmt_p(0.02, label="p") == "p = 0.020"


# ----------------------------------------------------------------- intervals


def test_fmt_ci_brackets():
    assert fmt_ci(0.8166, 0.75, 0.8834) == "0.817 [0.750, 0.883]"
    assert fmt_ci(0.5, 0.25, 0.75, 2) == "0.50 [0.25, 0.75]"
    # lower bound first, as given: never silently reordered
    assert fmt_ci(0.5, 0.75, 0.25) == "0.500 [0.750, 0.250]"


@pytest.mark.parametrize("value, lo, hi, expected", [
    (None, 0.1, 0.2, "n/a"),
    (NAN, 0.1, 0.2, "n/a"),
    (0.5, None, 0.7, "0.500"),  # a missing bound leaves the value alone
    (0.5, 0.3, INF, "0.500"),
    (0.5, None, None, "0.500"),
])
def test_fmt_ci_collapses_undefined_parts(value, lo, hi, expected):
    assert fmt_ci(value, lo, hi) == expected


def test_fmt_ci_without_collapse_formats_every_part():
    assert fmt_ci(0.5, None, 0.7, collapse=False) == "0.500 [n/a, 0.700]"
    assert fmt_ci(None, 0.1, 0.2, 2, collapse=False) == "n/a [0.10, 0.20]"


def test_fmt_ci_templates():
    assert fmt_ci(-0.1, -0.2, 0.0, template="{v} ({lo}\u2013{hi})", minus=MINUS) == \
        "\u22120.100 (\u22120.200\u20130.000)"
    assert fmt_ci(0.02, -0.01, 0.05, template="{lo}..{hi}", sign=True) == "-0.010..+0.050"
    assert fmt_ci(0.5, 0.25, 0.75, template='{v} <span class="ci">[{lo}, {hi}]</span>') == \
        '0.500 <span class="ci">[0.250, 0.750]</span>'


def test_fmt_seconds():
    assert fmt_seconds(5) == "5.0 s"
    assert fmt_seconds(119.94) == "119.9 s"
    assert fmt_seconds(119.96) == "120.0 s"  # under two minutes, rounded
    assert fmt_seconds(120) == "2.0 min (120 s)"
    assert fmt_seconds(3725.5) == "62.1 min (3726 s)"


def test_views_and_evaluation_use_the_shared_formatters():
    from dermcam import views
    from dermcam.evaluation import tables as ev

    assert views.fmt_num is fmt_num and views.fmt_seconds is fmt_seconds
    assert views.ci_cell(0.5, 0.25, 0.75) == "0.50 [0.25, 0.75]"
    assert views.ci_cell(0.5, None, 0.75, 3) == "0.500 [-, 0.750]"
    assert views.ci_cell(-0.25, -0.5, 0.0, 3, sign=True) == "-0.250 [-0.500, +0.000]"
    assert ev._fmt_num(-0.25) == "\u22120.250"
    assert ev._cell({"value": -0.1, "lo": -0.2, "hi": 0.05}) == \
        "\u22120.100 (\u22120.200\u20130.050)"
    assert ev._cell({"value": 0.1, "lo": None, "hi": 0.2}) == "0.100"
    assert ev._cell({"value": None, "lo": 0.1, "hi": 0.2}) == "n/a"


def test_importing_formatting_is_light():
    code = ("import sys, dermcam.formatting; "
            "print(sorted(m for m in ('numpy', 'pandas', 'torch', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------- metric labels


def _evaluation_keys() -> dict[str, set[str]]:
    """Every metric key evaluate_predictions and the calibration summary write."""
    from dermcam.calibration import calibration_summary
    from dermcam.evaluation import evaluate_predictions

    y = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2, 0.55, 0.6])
    df = pd.DataFrame({"image_id": range(8), "model": "resnet18", "label": y,
                       "prob_malignant": p, "prob_malignant_uncalibrated": p ** 0.5})
    res = evaluate_predictions(df, {"resnet18": 0.5}, n_boot=20)
    entry = res["models"]["resnet18"]
    calib = calibration_summary(df, {"resnet18": 1.0}, n_boot=20)["resnet18"]
    return {"at_threshold": set(entry["at_threshold"]), "at_0.5": set(entry["at_0.5"]),
            "threshold_free": set(entry["threshold_free"]),
            "baseline": set(res["baselines"]["all_benign"]),
            "calibration": set(calib["before"]) | set(calib["after"]) | set(calib["change"])}


def test_every_reported_metric_has_a_label():
    keys = _evaluation_keys()
    written = set().union(*keys.values())
    assert written <= set(METRIC_LABELS), written - set(METRIC_LABELS)
    assert set(METRIC_LABELS) == written  # and no label for a metric nobody writes
    for key in written:
        assert metric_label(key) and metric_label(key, short=True)


def test_direction_is_lower_better_exactly_for_calibration_errors():
    assert {k for k, m in METRIC_LABELS.items() if not m.higher_is_better} == {"ece", "brier"}


@pytest.mark.parametrize("key, label, short", [
    ("roc_auc", "ROC AUC", "ROC AUC"),
    ("average_precision", "Average precision", "Avg. precision"),
    ("balanced_accuracy", "Balanced accuracy", "Balanced acc."),
    ("f1_malignant", "Malignant F1", "F1 malignant"),
    ("spec_at_95_sens", "Specificity at 95 % sensitivity", "Specificity at 95 % sensitivity"),
    ("ece", "ECE", "ECE"),
    ("brier", "Brier score", "Brier"),
])
def test_metric_label(key, label, short):
    assert metric_label(key) == label
    assert metric_label(key, short=True) == short


def test_metric_label_unknown_key_and_frozen_entries():
    with pytest.raises(KeyError, match="no label for metric 'auroc'"):
        metric_label("auroc")
    with pytest.raises(dataclasses.FrozenInstanceError):
        METRIC_LABELS["ece"].label = "x"  # type: ignore[misc]
    assert MetricLabel("Accuracy", True).short == "Accuracy"


def test_fmt_ci_entry_reads_a_value_lo_hi_mapping():
    from dermcam.formatting import fmt_ci_entry

    full = {"value": 0.8166, "lo": 0.75, "hi": 0.8834}
    assert fmt_ci_entry(full) == "0.817 [0.750, 0.883]"
    assert fmt_ci_entry(full, 2, collapse=False) == "0.82 [0.75, 0.88]"
    one_bound = {"value": 0.5, "lo": None, "hi": 0.6}
    assert fmt_ci_entry(one_bound) == "0.500"  # collapse: the value alone
    assert fmt_ci_entry(one_bound, 2, collapse=False) == "0.50 [n/a, 0.60]"
    for undefined in (None, "x", {}, {"value": None, "lo": 0.1, "hi": 0.2},
                      {"value": float("nan"), "lo": 0.1, "hi": 0.2}):
        assert fmt_ci_entry(undefined) == "n/a"
        assert fmt_ci_entry(undefined, collapse=False, missing="-") == "-"
