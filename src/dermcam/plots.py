"""Figures for the evaluation: model comparison, confusion matrix, ROC/PR, calibration, training.

``build_*`` takes the ``metrics.json`` dict (or arrays/DataFrames) and returns the Figure;
``plot_*`` writes it atomically to a path whose suffix picks the format and returns the path.
Figures use the Agg canvas, never pyplot: no global state, safe in worker threads.
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

__all__ = ["new_figure", "save_figure", "build_model_comparison", "build_confusion_matrix",
           "build_roc_curves", "build_pr_curves", "build_reliability",
           "build_training_history", "plot_model_comparison", "plot_confusion_matrix",
           "plot_roc_curves", "plot_pr_curves", "plot_reliability", "plot_training_history"]

logger = logging.getLogger(__name__)

_DPI = 150
#: Tick labels are wrapped at this width so a long metric name does not hit its neighbours.
_TICK_WIDTH = 20


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A constrained-layout figure on its own Agg canvas; every dermcam plot starts here."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = _DPI) -> Path:
    """Write ``fig`` to ``path`` atomically (:func:`dermcam.io.save_figure`)."""
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


def _unit_square(ax: Any) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)


def build_model_comparison(result: Mapping[str, Any],
                           metrics: Sequence[str] = ("accuracy", "f1_benign", "f1_malignant"),
                           at: str = "at_threshold") -> Figure:
    """Grouped bars per metric, one bar per model, 95 % CI whiskers, and the all-benign
    baseline dashed across each group. ``at``: ``"at_threshold"`` or ``"at_0.5"``;
    threshold-free metrics may be listed too."""
    models = _models(result)
    # an unknown metric fails (KeyError) before drawing
    ticks = [textwrap.fill(metric_label(m, short=True), _TICK_WIDTH) for m in metrics]
    baseline = result.get("baselines", {}).get("all_benign", {})
    n_m, n_k = len(models), len(metrics)
    width = 0.8 / n_m
    fig = new_figure((max(6.0, 1.6 * n_k + 1.5 * n_m), 4.5))
    ax = fig.add_subplot()
    for i, (name, entry) in enumerate(models):
        x = np.arange(n_k) - 0.4 + width * (i + 0.5)
        vals, los, his = [], [], []  # whiskers: 0 at a non-finite CI end
        for metric in metrics:
            ci = (entry["threshold_free"] if metric in entry["threshold_free"]
                  else entry[at])[metric]
            v, lo, hi = _num(ci["value"]), _num(ci["lo"]), _num(ci["hi"])
            vals.append(v)
            los.append(v - lo if math.isfinite(lo) else 0.0)
            his.append(hi - v if math.isfinite(hi) else 0.0)
        ax.bar(x, vals, width, color=f"C{i}", label=_label(name, entry),
               yerr=np.vstack([los, his]), capsize=3, error_kw={"elinewidth": 1})
        for xi, v in zip(x, vals, strict=True):
            if math.isfinite(v) and v >= 0.12:  # value printed inside the bar, clear of whiskers
                ax.text(xi, 0.02, f"{v:.3f}", ha="center", va="bottom", fontsize=7,
                        rotation=90, color="white")
    drew_baseline = False  # one legend entry for the baseline
    for j, metric in enumerate(metrics):
        v = _num(baseline.get(metric, {}).get("value"))
        if math.isfinite(v):
            ax.hlines(v, j - 0.45, j + 0.45, colors="0.2", linestyles="--", linewidth=1.2,
                      label=None if drew_baseline else "All-benign baseline")
            drew_baseline = True
    ax.set_xticks(np.arange(n_k), ticks)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Score (95 % CI)")
    test = result.get("test", {})
    where = "validation-chosen threshold" if at == "at_threshold" else "threshold 0.5"
    ax.set_title(f"Test set: n = {test.get('n', '?')}, {test.get('n_malignant', '?')} "
                 f"malignant ({where})", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08),
              ncols=min(n_m + 1, 4), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_model_comparison(result: Mapping[str, Any], path: str | os.PathLike[str],
                          metrics: Sequence[str] = ("accuracy", "f1_benign", "f1_malignant"),
                          at: str = "at_threshold") -> Path:
    """Write :func:`build_model_comparison` to ``path`` and return the path."""
    return save_figure(build_model_comparison(result, metrics, at), path)


def build_confusion_matrix(cm: Any, labels: Sequence[str], title: str | None = None) -> Figure:
    """Confusion matrix ``(K, K)`` (rows true): counts and row percentages, coloured by rate."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(labels):
        raise ValueError(
            f"cm must be (K, K) with K = len(labels) = {len(labels)}, got shape {cm.shape}")
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(rows > 0, cm / rows, 0.0)
    fig = new_figure((4.2, 3.8))
    ax = fig.add_subplot()
    im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="Row rate")
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, f"{int(n)}\n{100 * rate[i, j]:.1f} %", ha="center", va="center",
                color="white" if rate[i, j] > 0.5 else "black", fontsize=10)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_confusion_matrix(cm: Any, labels: Sequence[str], path: str | os.PathLike[str],
                          title: str | None = None) -> Path:
    """Write :func:`build_confusion_matrix` to ``path`` and return the path."""
    return save_figure(build_confusion_matrix(cm, labels, title), path)


def build_roc_curves(result: Mapping[str, Any]) -> Figure:
    """All models' ROC curves (AUC with CI), the chance diagonal, and the operating points."""
    models = _models(result)
    fig = new_figure((5.2, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls=":", color="0.5", label="Chance (AUC 0.5)")
    for i, (name, entry) in enumerate(models):
        roc = entry["roc_curve"]
        ax.plot(roc["fpr"], roc["tpr"], color=f"C{i}", lw=1.6,
                label=f"{_label(name, entry)}: AUC "
                      f"{_ci_text(entry['threshold_free']['roc_auc'])}")
        at = entry.get("at_threshold", {})
        sens = _num(at.get("sensitivity", {}).get("value"))
        spec = _num(at.get("specificity", {}).get("value"))
        if math.isfinite(sens) and math.isfinite(spec):
            ax.plot([1 - spec], [sens], "o", color=f"C{i}", ms=5, mec="black", mew=0.6)
    _unit_square(ax)
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
    """All models' precision-recall curves, AP with 95 % CI in the legend (ranked by AP;
    colours in the models' order, as in the ROC figure), and the prevalence line (the AP
    without skill). ``dataset``: named in the title where given."""
    models = _models(result)
    prevalence = _num(result.get("test", {}).get("prevalence"))
    fig = new_figure((5.2, 5.0))
    ax = fig.add_subplot()
    handles = []
    if math.isfinite(prevalence):
        handles.append(ax.axhline(prevalence, ls=":", color="0.5",
                                  label=f"Prevalence (chance AP {prevalence:.3f})"))
    ranked = []
    for i, (name, entry) in enumerate(models):
        pr = entry["pr_curve"]
        ap = entry["threshold_free"]["average_precision"]
        (curve,) = ax.step(pr["recall"], pr["precision"], where="post", color=f"C{i}", lw=1.6,
                           label=f"{_label(name, entry)}: AP {_ci_text(ap)}")
        value = _num(ap.get("value"))
        ranked.append((-value if math.isfinite(value) else math.inf, i, curve))
        sens = _num(entry.get("at_threshold", {}).get("recall_malignant", {}).get("value"))
        prec = _num(entry.get("at_threshold", {}).get("precision_malignant", {}).get("value"))
        if math.isfinite(sens) and math.isfinite(prec):
            ax.plot([sens], [prec], "o", color=f"C{i}", ms=5, mec="black", mew=0.6)
    handles += [curve for *_, curve in sorted(ranked, key=lambda t: t[:2])]
    _unit_square(ax)
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


def _finite_curve(rel: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A reliability block's (mean predicted, fraction positive) where both are finite."""
    mp = np.array([_num(v) for v in rel["mean_predicted"]])
    fp = np.array([_num(v) for v in rel["fraction_positive"]])
    ok = np.isfinite(mp) & np.isfinite(fp)
    return mp[ok], fp[ok]


def build_reliability(result: Mapping[str, Any]) -> Figure:
    """Reliability diagram per model (ECE with CI in the legend), the diagonal, and a
    histogram of predictions below. With ``result["calibration"]`` each model's curve
    before temperature scaling is drawn dashed, with ECE before and ``T`` in the legend."""
    models = _models(result)
    calib = result.get("calibration") or {}
    fig = new_figure((5.2, 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], ls=":", color="0.5", label="Perfect calibration")
    for i, (name, entry) in enumerate(models):
        rel = entry["reliability"]
        ece = entry["threshold_free"]["ece"]
        top.plot(*_finite_curve(rel), "o-", color=f"C{i}", ms=4, lw=1.3,
                 label=f"{_label(name, entry)}: ECE {_ci_text(ece)}"
                 + (f" (T = {_num(calib[name]['temperature']):.2f}, "
                    f"b = {_num(calib[name].get('bias', 0.0)):+.2f})" if name in calib else ""))
        if name in calib:  # before calibration, dashed
            top.plot(*_finite_curve(calib[name]["reliability_before"]), "x--", color=f"C{i}",
                     ms=4, lw=1.0, alpha=0.6,
                     label=f"  before scaling: ECE {_ci_text(calib[name]['before']['ece'])}")
        lower, upper, count = (np.array([_num(v) for v in rel[k]])
                               for k in ("bin_lower", "bin_upper", "count"))
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


_HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auc")


def build_training_history(history_df: pd.DataFrame) -> Figure:
    """Per-epoch train/validation loss (left) and validation AUC (right), one line per
    ``model`` where that column exists. A NaN skips that line's row only (Lightning logs
    train and validation values on separate rows)."""
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
                ax_loss.plot(s["epoch"], s[col], ls=ls, color=f"C{i}", marker=".",
                             label=f"{prefix}{label} loss")
        s = g[["epoch", "val_auc"]].dropna().sort_values("epoch")
        if len(s):
            ax_auc.plot(s["epoch"], s["val_auc"], color=f"C{i}", marker=".",
                        label=f"{prefix}val {metric_label('roc_auc', short=True)}".strip())
            best = s.loc[s["val_auc"].idxmax()]
            ax_auc.plot([best["epoch"]], [best["val_auc"]], "*", color=f"C{i}", ms=10,
                        mec="black", mew=0.5)
    for ax, ylabel, title in ((ax_loss, "Loss", "Loss"),
                              (ax_auc, "Validation ROC AUC", "Validation AUC (star: best epoch)")):
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


def plot_training_history(history_df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write :func:`build_training_history` to ``path`` and return the path."""
    return save_figure(build_training_history(history_df), path)
