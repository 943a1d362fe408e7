"""Figures for the evaluation: model comparison, confusion matrix, ROC/PR, calibration, training.

Each figure comes in two forms. ``build_*`` takes the ``metrics.json`` dict of
:func:`dermcam.evaluation.evaluate_predictions` (or plain arrays/DataFrames) and
returns the :class:`~matplotlib.figure.Figure`, so tests and notebooks can look
at what was drawn. ``plot_*`` takes the same data and a path, writes the built
figure there and returns the path as a :class:`pathlib.Path`. The format comes
from the path's suffix (``.png``, ``.pdf``, ``.svg``).

Figures are built with :class:`matplotlib.figure.Figure` on the Agg canvas, never
through ``pyplot``: no global figure state, no windows, nothing to close, safe
in worker threads. Files are written atomically (a temporary file in the same
folder, then ``os.replace``), so a crash never leaves a half-written image.
"""

from __future__ import annotations

import logging
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dermcam.formatting import fmt_ci_entry, metric_label
from dermcam.io import save_figure as _save_atomic

__all__ = [
    "new_figure",
    "save_figure",
    "build_model_comparison",
    "build_confusion_matrix",
    "build_roc_curves",
    "build_pr_curves",
    "build_reliability",
    "build_training_history",
    "plot_model_comparison",
    "plot_confusion_matrix",
    "plot_roc_curves",
    "plot_pr_curves",
    "plot_reliability",
    "plot_training_history",
]

logger = logging.getLogger(__name__)

_DPI = 150
#: Tick labels wider than this are broken at spaces over lines, so a long metric name
#: (``spec_at_95_sens``) does not run into its neighbours' labels.
_TICK_WIDTH = 20


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure with its own Agg canvas (no pyplot state: nothing is shown, nothing
    leaks between calls) and constrained layout; every dermcam plot starts here."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = _DPI) -> Path:
    """Write ``fig`` to ``path`` atomically; the format is the path's suffix
    (:func:`dermcam.io.save_figure`)."""
    return _save_atomic(fig, path, dpi=dpi)


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _ci_text(ci: Mapping[str, Any], digits: int = 3) -> str:
    return fmt_ci_entry(dict(ci), digits)


def _models(result: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    models = list(result.get("models", {}).items())
    if not models:
        raise ValueError("result has no models to plot")
    return models


def _label(name: str, entry: Mapping[str, Any]) -> str:
    return str(entry.get("display_name", name))


def _metric_tick(key: str) -> str:
    """The tick label of metric ``key``: its short label in
    :data:`dermcam.formatting.METRIC_LABELS` (a ``KeyError`` naming the known keys for
    an unknown one), broken over lines of at most ``_TICK_WIDTH`` characters."""
    return textwrap.fill(metric_label(key, short=True), _TICK_WIDTH)


# --------------------------------------------------------------------------- comparison


def build_model_comparison(
    result: Mapping[str, Any],
    metrics: Sequence[str] = ("accuracy", "f1_benign", "f1_malignant"),
    at: str = "at_threshold",
) -> Figure:
    """Grouped bars per metric, one bar per model, 95 % CI whiskers.

    The reference study's figure (accuracy and per-class F1), made honest: each
    bar carries its bootstrap interval and the all-benign baseline is drawn as a
    dashed line across each metric group. ``at``: ``"at_threshold"`` or
    ``"at_0.5"``; threshold-free metrics (``roc_auc`` ...) may be listed too.
    """
    models = _models(result)
    ticks = [_metric_tick(m) for m in metrics]  # an unknown metric fails before drawing
    baseline = result.get("baselines", {}).get("all_benign", {})
    n_m, n_k = len(models), len(metrics)
    width = 0.8 / n_m
    fig = new_figure((max(6.0, 1.6 * n_k + 1.5 * n_m), 4.5))
    ax = fig.add_subplot()
    for i, (name, entry) in enumerate(models):
        x = np.arange(n_k) - 0.4 + width * (i + 0.5)
        _draw_model_bars(ax, x, width, _values_and_whiskers(entry, metrics, at), f"C{i}",
                         _label(name, entry))
    _draw_baseline(ax, baseline, metrics)
    ax.set_xticks(np.arange(n_k), ticks)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Score (95 % CI)")
    test = result.get("test", {})
    where = "validation-chosen threshold" if at == "at_threshold" else "threshold 0.5"
    ax.set_title(
        f"Test set: n = {test.get('n', '?')}, {test.get('n_malignant', '?')} malignant ({where})",
        fontsize=10,
    )
    ax.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.08),
        ncols=min(n_m + 1, 4),
        frameon=False,
    )
    ax.grid(axis="y", alpha=0.3)
    return fig


def _values_and_whiskers(
    entry: Mapping[str, Any], metrics: Sequence[str], at: str
) -> tuple[list[float], list[float], list[float]]:
    """One model's value of each metric (threshold-free where the model has it, else
    from ``entry[at]``) and its whiskers' lengths below and above (0 where the CI's end
    is not finite)."""
    vals, los, his = [], [], []
    for metric in metrics:
        block = entry["threshold_free"] if metric in entry["threshold_free"] else entry[at]
        ci = block[metric]
        v, lo, hi = _num(ci["value"]), _num(ci["lo"]), _num(ci["hi"])
        vals.append(v)
        los.append(v - lo if math.isfinite(lo) else 0.0)
        his.append(hi - v if math.isfinite(hi) else 0.0)
    return vals, los, his


def _draw_model_bars(
    ax: Any,
    x: np.ndarray,
    width: float,
    values: tuple[list[float], list[float], list[float]],
    color: str,
    label: str,
) -> None:
    """One model's bars at ``x`` with CI whiskers (``values``: from
    :func:`_values_and_whiskers`), each value printed inside its bar."""
    vals, los, his = values
    ax.bar(
        x,
        vals,
        width,
        color=color,
        label=label,
        yerr=np.vstack([los, his]),
        capsize=3,
        error_kw={"elinewidth": 1},
    )
    for xi, v in zip(x, vals, strict=True):
        if math.isfinite(v) and v >= 0.12:  # value printed inside the bar, clear of whiskers
            ax.text(
                xi,
                0.02,
                f"{v:.3f}",
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90,
                color="white",
            )


def _draw_baseline(ax: Any, baseline: Mapping[str, Any], metrics: Sequence[str]) -> None:
    """The all-benign baseline's value as a dashed line across each metric's group (one
    legend entry)."""
    drew_baseline = False
    for j, metric in enumerate(metrics):
        v = _num(baseline.get(metric, {}).get("value"))
        if math.isfinite(v):
            ax.hlines(
                v,
                j - 0.45,
                j + 0.45,
                colors="0.2",
                linestyles="--",
                linewidth=1.2,
                label=None if drew_baseline else "All-benign baseline",
            )
            drew_baseline = True


def plot_model_comparison(
    result: Mapping[str, Any],
    path: str | os.PathLike[str],
    metrics: Sequence[str] = ("accuracy", "f1_benign", "f1_malignant"),
    at: str = "at_threshold",
) -> Path:
    """Write :func:`build_model_comparison` to ``path`` and return the path."""
    return save_figure(build_model_comparison(result, metrics, at), path)


# --------------------------------------------------------------------------- confusion matrix


def build_confusion_matrix(cm: Any, labels: Sequence[str], title: str | None = None) -> Figure:
    """Confusion matrix ``(K, K)`` (rows = true, columns = predicted) with counts
    and row percentages; the colour is the row-normalised rate."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(labels):
        raise ValueError(
            f"cm must be (K, K) with K = len(labels) = {len(labels)}, got shape {cm.shape}"
        )
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(rows > 0, cm / rows, 0.0)
    fig = new_figure((4.2, 3.8))
    ax = fig.add_subplot()
    im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="Row rate")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}\n{100 * rate[i, j]:.1f} %",
                ha="center",
                va="center",
                color="white" if rate[i, j] > 0.5 else "black",
                fontsize=10,
            )
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_confusion_matrix(
    cm: Any, labels: Sequence[str], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Write :func:`build_confusion_matrix` to ``path`` and return the path."""
    return save_figure(build_confusion_matrix(cm, labels, title), path)


# --------------------------------------------------------------------------- ROC / PR


def _operating_point(entry: Mapping[str, Any]) -> tuple[float, float]:
    at = entry.get("at_threshold", {})
    sens = _num(at.get("sensitivity", {}).get("value"))
    spec = _num(at.get("specificity", {}).get("value"))
    return sens, spec


def build_roc_curves(result: Mapping[str, Any]) -> Figure:
    """All models' ROC curves on one axis, AUC with 95 % CI in the legend, the
    chance diagonal, and each model's operating point at its chosen threshold."""
    models = _models(result)
    fig = new_figure((5.2, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls=":", color="0.5", label="Chance (AUC 0.5)")
    for i, (name, entry) in enumerate(models):
        roc = entry["roc_curve"]
        auc = entry["threshold_free"]["roc_auc"]
        ax.plot(
            roc["fpr"],
            roc["tpr"],
            color=f"C{i}",
            lw=1.6,
            label=f"{_label(name, entry)}: AUC {_ci_text(auc)}",
        )
        sens, spec = _operating_point(entry)
        if math.isfinite(sens) and math.isfinite(spec):
            ax.plot([1 - spec], [sens], "o", color=f"C{i}", ms=5, mec="black", mew=0.6)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 \u2212 specificity (false positive rate)")
    ax.set_ylabel("Sensitivity (true positive rate)")
    ax.set_title("ROC (dots: operating point at the chosen threshold)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def plot_roc_curves(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write :func:`build_roc_curves` to ``path`` and return the path."""
    return save_figure(build_roc_curves(result), path)


def build_pr_curves(result: Mapping[str, Any], dataset: str | None = None) -> Figure:
    """All models' precision-recall curves, AP with 95 % CI in the legend (ranked by AP,
    highest first; colours stay in the models' order, as in the ROC figure), and the
    prevalence line (the AP of a classifier without skill).

    ``dataset``: the name of the data set the curves were measured on (the run's, or an
    external set's), put in the title; without it the title names none.
    """
    models = _models(result)
    prevalence = _num(result.get("test", {}).get("prevalence"))
    fig = new_figure((5.2, 5.0))
    ax = fig.add_subplot()
    handles = []
    if math.isfinite(prevalence):
        handles.append(ax.axhline(
            prevalence, ls=":", color="0.5", label=f"Prevalence (chance AP {prevalence:.3f})"
        ))
    ranked = []
    for i, (name, entry) in enumerate(models):
        pr = entry["pr_curve"]
        ap = entry["threshold_free"]["average_precision"]
        (curve,) = ax.step(
            pr["recall"],
            pr["precision"],
            where="post",
            color=f"C{i}",
            lw=1.6,
            label=f"{_label(name, entry)}: AP {_ci_text(ap)}",
        )
        value = _num(ap.get("value"))
        ranked.append((-value if math.isfinite(value) else math.inf, i, curve))
        sens = _num(entry.get("at_threshold", {}).get("recall_malignant", {}).get("value"))
        prec = _num(entry.get("at_threshold", {}).get("precision_malignant", {}).get("value"))
        if math.isfinite(sens) and math.isfinite(prec):
            ax.plot([sens], [prec], "o", color=f"C{i}", ms=5, mec="black", mew=0.6)
    handles += [curve for *_, curve in sorted(ranked, key=lambda t: t[:2])]
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("Recall (sensitivity)")
    ax.set_ylabel("Precision (malignant)")
    where = f" on {dataset}" if dataset else ""
    ax.set_title(textwrap.fill(f"Precision-recall{where} (legend ranked by average "
                               "precision; dots: operating point)", 60), fontsize=9)
    ax.legend(handles=handles, fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return fig


def plot_pr_curves(result: Mapping[str, Any], path: str | os.PathLike[str],
                   dataset: str | None = None) -> Path:
    """Write :func:`build_pr_curves` to ``path`` and return the path."""
    return save_figure(build_pr_curves(result, dataset), path)


# --------------------------------------------------------------------------- calibration


def build_reliability(result: Mapping[str, Any]) -> Figure:
    """Reliability diagram: observed malignant fraction against mean predicted
    probability per bin for every model (ECE with CI in the legend), the
    diagonal of perfect calibration, and a histogram of predictions below.

    With ``result["calibration"]`` (:func:`dermcam.calibration.calibration_summary`)
    each model's curve before temperature scaling is drawn dashed beside the calibrated
    one (solid), ECE before and after and ``T`` in the legend."""
    models = _models(result)
    calib = result.get("calibration") or {}
    fig = new_figure((5.2, 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], ls=":", color="0.5", label="Perfect calibration")
    for i, (name, entry) in enumerate(models):
        rel = entry["reliability"]
        mp = np.array([_num(v) for v in rel["mean_predicted"]])
        fp = np.array([_num(v) for v in rel["fraction_positive"]])
        ok = np.isfinite(mp) & np.isfinite(fp)
        ece = entry["threshold_free"]["ece"]
        top.plot(
            mp[ok],
            fp[ok],
            "o-",
            color=f"C{i}",
            ms=4,
            lw=1.3,
            label=f"{_label(name, entry)}: ECE {_ci_text(ece)}"
            + (f" (T = {_num(calib[name]['temperature']):.2f}, "
               f"b = {_num(calib[name].get('bias', 0.0)):+.2f})" if name in calib else ""),
        )
        if name in calib:  # before calibration, dashed
            before = calib[name]["reliability_before"]
            mb = np.array([_num(v) for v in before["mean_predicted"]])
            fb = np.array([_num(v) for v in before["fraction_positive"]])
            okb = np.isfinite(mb) & np.isfinite(fb)
            top.plot(mb[okb], fb[okb], "x--", color=f"C{i}", ms=4, lw=1.0, alpha=0.6,
                     label=f"  before scaling: ECE {_ci_text(calib[name]['before']['ece'])}")
        lower = np.array([_num(v) for v in rel["bin_lower"]])
        upper = np.array([_num(v) for v in rel["bin_upper"]])
        count = np.array([_num(v) for v in rel["count"]])
        w = (upper - lower) / (len(models) + 1)
        bottom.bar(lower + w * (i + 0.5), count, w, color=f"C{i}", align="edge")
    top.set_xlim(0, 1)
    top.set_ylim(-0.01, 1.01)
    top.set_ylabel("Observed malignant fraction")
    top.legend(fontsize=7, loc="upper left")
    top.grid(alpha=0.3)
    top.set_title("Reliability (equal-width bins)" + (
        "; dashed: before calibration" if calib else ""), fontsize=9)
    bottom.set_yscale("symlog", linthresh=10)
    bottom.set_xlabel("Predicted probability of malignant")
    bottom.set_ylabel("Images")
    bottom.grid(alpha=0.3)
    return fig


def plot_reliability(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write :func:`build_reliability` to ``path`` and return the path."""
    return save_figure(build_reliability(result), path)


# --------------------------------------------------------------------------- training


_HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auc")


def build_training_history(history_df: pd.DataFrame) -> Figure:
    """Per-epoch train/validation loss (left) and validation AUC (right).

    ``history_df`` needs columns ``epoch, train_loss, val_loss, val_auc``; an
    optional ``model`` column draws one line per model. Rows with a NaN in a
    column are skipped for that line only (Lightning logs train and validation
    values on separate rows).
    """
    missing = [c for c in _HISTORY_COLUMNS if c not in history_df.columns]
    if missing:
        raise ValueError(f"history_df lacks columns {missing}; have {list(history_df.columns)}")
    if "model" in history_df.columns:
        groups = [(str(m), g) for m, g in history_df.groupby("model", sort=False)]
    else:
        groups = [("", history_df)]
    fig = new_figure((9.0, 3.8))
    ax_loss, ax_auc = fig.subplots(1, 2)
    for i, (name, g) in enumerate(groups):
        prefix = f"{name} " if name else ""
        for col, ls, label in (("train_loss", "-", "train"), ("val_loss", "--", "val")):
            s = g[["epoch", col]].dropna().sort_values("epoch")
            if len(s):
                ax_loss.plot(
                    s["epoch"],
                    s[col],
                    ls=ls,
                    color=f"C{i}",
                    marker=".",
                    label=f"{prefix}{label} loss",
                )
        s = g[["epoch", "val_auc"]].dropna().sort_values("epoch")
        if len(s):
            ax_auc.plot(
                s["epoch"],
                s["val_auc"],
                color=f"C{i}",
                marker=".",
                label=f"{prefix}val {metric_label('roc_auc', short=True)}".strip(),
            )
            best = s.loc[s["val_auc"].idxmax()]
            ax_auc.plot(
                [best["epoch"]], [best["val_auc"]], "*", color=f"C{i}", ms=10, mec="black", mew=0.5
            )
    ax_loss.set_xlabel("Epoch")
    ax_loss.set_ylabel("Loss")
    ax_loss.set_title("Loss", fontsize=10)
    ax_loss.legend(fontsize=7)
    ax_loss.grid(alpha=0.3)
    ax_auc.set_xlabel("Epoch")
    ax_auc.set_ylabel("Validation ROC AUC")
    ax_auc.set_title("Validation AUC (star: best epoch)", fontsize=10)
    ax_auc.legend(fontsize=7)
    ax_auc.grid(alpha=0.3)
    return fig


def plot_training_history(history_df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write :func:`build_training_history` to ``path`` and return the path."""
    return save_figure(build_training_history(history_df), path)
