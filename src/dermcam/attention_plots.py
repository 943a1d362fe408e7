"""Figures for the attention-leakage audit: the reference study's and size-aware ones.

Each figure comes in two forms: ``build_*`` takes a per-image table (or
arrays) and returns the :class:`~matplotlib.figure.Figure`, so tests can look at
what was drawn; ``plot_*`` takes the same data and an output path, writes the
built figure there atomically (a temporary file in the same folder, then
``os.replace``) and returns the path as a :class:`pathlib.Path`. Figures are
built on :class:`matplotlib.figure.Figure` with the Agg canvas: no pyplot, no
window, no global state. The file format follows the path's suffix (PNG when
there is none).

Per-image tables use the columns written by the scoring stage: ``label``
(0 benign, 1 malignant), ``leakage``, ``inside_score``, ``outside_score``,
``lesion_area``, ``correct`` and, for grouping, ``model`` and ``method``.
Rows with NaN in a plotted column are left out of that panel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dermcam.leakage import CHANCE, LABEL_NAMES, METRICS, bootstrap_mean_ci, score_batch

log = logging.getLogger(__name__)

__all__ = [
    "build_attention_summary",
    "build_leakage_vs_accuracy",
    "build_leakage_vs_area",
    "build_size_aware_table",
    "build_example",
    "plot_attention_summary",
    "plot_leakage_vs_accuracy",
    "plot_leakage_vs_area",
    "plot_size_aware_table",
    "plot_example",
]

CLASS_COLOURS = {0: "#1f77b4", 1: "#d62728"}  # benign blue, malignant red
SIZE_AWARE = ("excess_leakage", "localisation_gain", "pixel_auroc", "pointing_game")


def _figure(width: float, height: float) -> Figure:
    from dermcam.plots import new_figure

    return new_figure((width, height))


def _save(fig: Figure, path, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` atomically and return the path."""
    from dermcam.io import save_figure

    return save_figure(fig, path, dpi=dpi)


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs column(s) {missing}; the table has {list(df.columns)}")


def _by_class(df: pd.DataFrame, column: str) -> dict[int, np.ndarray]:
    """``{0: benign values, 1: malignant values}`` with NaNs dropped."""
    lab = pd.to_numeric(df["label"], errors="coerce")
    x = pd.to_numeric(df[column], errors="coerce")
    return {c: x[(lab == c) & x.notna()].to_numpy(dtype=float) for c in (0, 1)}


def _no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def build_attention_summary(df: pd.DataFrame, title: str = "Attention leakage analysis"
                            ) -> Figure:
    """The study's 2 x 2 figure (``attention_leakage_analysis.png``), for one table.

    Panels: leakage box plot by class; leakage histogram with the mean line
    (class means dashed); inside vs outside score scatter coloured by class, with
    the diagonal; mean leakage per class with 95 % bootstrap CI whiskers, and the
    class's mean chance leakage (``1 - lesion_area``) as a black tick when the
    table has ``lesion_area``. Needs ``label``, ``leakage``, ``inside_score``,
    ``outside_score``. Pass one model x method at a time: rows are pooled.
    """
    _require(df, ["label", "leakage", "inside_score", "outside_score"], "plot_attention_summary")
    leak = _by_class(df, "leakage")
    names = [LABEL_NAMES[c] for c in (0, 1)]
    fig = _figure(11, 8.5)
    (ax_box, ax_hist), (ax_sc, ax_bar) = fig.subplots(2, 2)

    # Box plot by class.
    present = [c for c in (0, 1) if leak[c].size]
    if present:
        bp = ax_box.boxplot([leak[c] for c in present], positions=present, widths=0.5,
                            patch_artist=True)
        for patch, c in zip(bp["boxes"], present, strict=True):
            patch.set_facecolor(CLASS_COLOURS[c])
            patch.set_alpha(0.5)
    else:
        _no_data(ax_box)
    ax_box.set_xticks([0, 1], [f"{LABEL_NAMES[c]}\n(n={leak[c].size})" for c in (0, 1)])
    ax_box.set_xlim(-0.6, 1.6)
    ax_box.set_ylabel("attention leakage (share outside lesion)")
    ax_box.set_title("Leakage by class")

    # Histogram with mean line.
    allv = np.concatenate([leak[0], leak[1]])
    if allv.size:
        ax_hist.hist(allv, bins=np.linspace(0, 1, 31), color="grey", alpha=0.6)
        ax_hist.axvline(allv.mean(), color="black", lw=2, label=f"mean {allv.mean():.1%}")
        for c in present:
            ax_hist.axvline(leak[c].mean(), color=CLASS_COLOURS[c], ls="--",
                            label=f"{LABEL_NAMES[c]} mean {leak[c].mean():.1%}")
        ax_hist.legend(fontsize=8)
    else:
        _no_data(ax_hist)
    ax_hist.set_xlabel("attention leakage")
    ax_hist.set_ylabel("images")
    ax_hist.set_title("Leakage distribution")

    # Inside vs outside scatter.
    lab = pd.to_numeric(df["label"], errors="coerce")
    ins = pd.to_numeric(df["inside_score"], errors="coerce")
    outs = pd.to_numeric(df["outside_score"], errors="coerce")
    any_points = False
    for c in (0, 1):
        sel = (lab == c) & ins.notna() & outs.notna()
        if sel.any():
            any_points = True
            ax_sc.scatter(outs[sel], ins[sel], s=12, alpha=0.6, color=CLASS_COLOURS[c],
                          label=LABEL_NAMES[c])
    if any_points:
        lim = float(np.nanmax([ins.max(), outs.max(), 1e-12])) * 1.05
        ax_sc.plot([0, lim], [0, lim], color="black", lw=1, ls=":", label="inside = outside")
        ax_sc.legend(fontsize=8)
    else:
        _no_data(ax_sc)
    ax_sc.set_xlabel("outside score (mean heatmap off lesion)")
    ax_sc.set_ylabel("inside score (mean heatmap on lesion)")
    ax_sc.set_title("Inside vs outside attention")

    # Mean leakage bars with bootstrap CI (and chance leakage where known).
    means = [leak[c].mean() if leak[c].size else np.nan for c in (0, 1)]
    cis = [bootstrap_mean_ci(leak[c]) for c in (0, 1)]
    err = np.array([[m - lo if np.isfinite(lo) else 0.0, hi - m if np.isfinite(hi) else 0.0]
                    for m, (lo, hi) in zip(means, cis, strict=True)]).T
    ax_bar.bar([0, 1], np.nan_to_num(means), yerr=err, capsize=6,
               color=[CLASS_COLOURS[0], CLASS_COLOURS[1]], alpha=0.7)
    for x, mval in zip((0, 1), means, strict=True):
        if np.isfinite(mval):
            ax_bar.text(x, mval / 2, f"{mval:.1%}", ha="center", va="center", color="white",
                        fontweight="bold")
    if "lesion_area" in df.columns:
        chance = _by_class(df.assign(_chance=1 - pd.to_numeric(df["lesion_area"],
                                                                errors="coerce")), "_chance")
        drawn = [x for x in (0, 1) if chance[x].size]
        for x in drawn:  # one legend entry, on the first line drawn
            ax_bar.hlines(chance[x].mean(), x - 0.4, x + 0.4, color="black", lw=2,
                          label="mean chance leakage (1 - area)" if x == drawn[0] else None)
        if drawn:
            ax_bar.legend(fontsize=8, loc="lower right")
    ax_bar.set_xticks([0, 1], names)
    ax_bar.set_ylim(0, 1)
    ax_bar.set_ylabel("mean leakage (95 % bootstrap CI)")
    ax_bar.set_title("Mean leakage by class")

    fig.suptitle(title)
    return fig


def plot_attention_summary(df: pd.DataFrame, path, title: str = "Attention leakage analysis"
                           ) -> Path:
    """Write :func:`build_attention_summary` to ``path`` and return the path."""
    return _save(build_attention_summary(df, title), path)


def build_leakage_vs_accuracy(df: pd.DataFrame,
                              title: str = "Attention leakage vs accuracy") -> Figure:
    """Per model (x method where several) and class: mean leakage vs accuracy.

    Coloured points are per class (accuracy within a class is its recall), black
    diamonds the model over both classes, each labelled with the model name. The
    study's ``leakage_vs_accuracy.png``. Needs ``model``, ``label``, ``leakage``,
    ``correct``.
    """
    _require(df, ["model", "label", "leakage", "correct"], "plot_leakage_vs_accuracy")
    keys = ["model"]
    if "method" in df.columns and df["method"].nunique(dropna=False) > 1:
        keys.append("method")
    d = df.assign(_leak=pd.to_numeric(df["leakage"], errors="coerce"),
                  _correct=df["correct"].astype(float),
                  _label=pd.to_numeric(df["label"], errors="coerce"))
    d = d[d["_leak"].notna() & d["_correct"].notna()]
    fig = _figure(8, 6)
    ax = fig.subplots()
    if d.empty:
        _no_data(ax)
    for key, g in d.groupby(keys, sort=True):
        name = " / ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        for c in (0, 1):
            gc = g[g["_label"] == c]
            if len(gc):
                ax.scatter(gc["_leak"].mean(), gc["_correct"].mean(), color=CLASS_COLOURS[c],
                           s=50, alpha=0.8)
        ax.scatter(g["_leak"].mean(), g["_correct"].mean(), color="black", marker="D", s=40)
        ax.annotate(name, (g["_leak"].mean(), g["_correct"].mean()), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    for c in (0, 1):
        ax.scatter([], [], color=CLASS_COLOURS[c], label=f"{LABEL_NAMES[c]} (class recall)")
    ax.scatter([], [], color="black", marker="D", label="all images")
    ax.legend(fontsize=8)
    ax.set_xlabel("mean attention leakage")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    return fig


def plot_leakage_vs_accuracy(df: pd.DataFrame, path,
                             title: str = "Attention leakage vs accuracy") -> Path:
    """Write :func:`build_leakage_vs_accuracy` to ``path`` and return the path."""
    return _save(build_leakage_vs_accuracy(df, title), path)


def build_leakage_vs_area(df: pd.DataFrame,
                          title: str = "Leakage vs lesion area") -> Figure:
    """Leakage against lesion area, coloured by class, with the chance line.

    The dashed line ``leakage = 1 - area`` is what a uniform heatmap scores:
    points below it attend to the lesion more than chance. Needs ``label``,
    ``leakage``, ``lesion_area``.
    """
    _require(df, ["label", "leakage", "lesion_area"], "plot_leakage_vs_area")
    lab = pd.to_numeric(df["label"], errors="coerce")
    x = pd.to_numeric(df["lesion_area"], errors="coerce")
    y = pd.to_numeric(df["leakage"], errors="coerce")
    fig = _figure(7, 6)
    ax = fig.subplots()
    for c in (0, 1):
        sel = (lab == c) & x.notna() & y.notna()
        if sel.any():
            ax.scatter(x[sel], y[sel], s=12, alpha=0.6, color=CLASS_COLOURS[c],
                       label=f"{LABEL_NAMES[c]} (n={int(sel.sum())})")
    ax.plot([0, 1], [1, 0], color="black", ls="--", lw=1.5,
            label="chance: uniform heatmap (1 - area)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("lesion area (share of image)")
    ax.set_ylabel("attention leakage")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


def plot_leakage_vs_area(df: pd.DataFrame, path,
                         title: str = "Leakage vs lesion area") -> Path:
    """Write :func:`build_leakage_vs_area` to ``path`` and return the path."""
    return _save(build_leakage_vs_area(df, title), path)


def _table_values(summary_df: pd.DataFrame, metric: str):
    """(models, methods, means) for one metric from a long or wide summary table."""
    if "metric" in summary_df.columns:
        _require(summary_df, ["model", "method", "mean"], "plot_size_aware_table")
        d = summary_df[summary_df["metric"] == metric]
        if "n" in d.columns and "label" in d.columns:
            # Per-class rows: the n-weighted mean of the class means is the pooled mean.
            d = d.assign(_w=d["n"] * d["mean"]).groupby(["model", "method"], sort=True)[
                ["_w", "n"]].sum()
            d = d.assign(mean=d["_w"] / d["n"].where(d["n"] > 0)).reset_index()
        else:
            d = d.groupby(["model", "method"], sort=True)["mean"].mean().reset_index()
        col = "mean"
    else:
        _require(summary_df, ["model", "method", metric], "plot_size_aware_table")
        d = summary_df.groupby(["model", "method"], sort=True)[metric].mean().reset_index()
        col = metric
    models = sorted(summary_df["model"].dropna().unique(), key=str)
    methods = sorted(summary_df["method"].dropna().unique(), key=str)
    grid = np.full((len(models), len(methods)), np.nan)
    for _, row in d.iterrows():
        grid[models.index(row["model"]), methods.index(row["method"])] = row[col]
    return models, methods, grid


def build_size_aware_table(summary_df: pd.DataFrame,
                           metrics: Sequence[str] = SIZE_AWARE,
                           title: str = "Size-aware localisation scores") -> Figure:
    """Model x method heat-tables of the size-aware scores, one panel per metric.

    ``summary_df`` is either :func:`dermcam.leakage.summarise` output (long:
    ``model, method, metric, mean`` and optionally ``label, n``; per-class rows
    are pooled with n-weighted means) or a wide table with one column per metric
    (averaged per model x method). Cells are coloured green = better: centred on
    the metric's chance level where it is fixed (``dermcam.leakage.CHANCE``, scale
    at least chance +- 0.1), else on a 0-1 scale for shares.
    """
    metrics = list(metrics)
    if not metrics:
        raise ValueError("plot_size_aware_table needs at least one metric")
    fig = _figure(4.2 * len(metrics), 1.2 + 0.55 * max(
        2, summary_df["model"].nunique() if "model" in summary_df.columns else 2))
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, metric in zip(axes, metrics, strict=True):
        models, methods, grid = _table_values(summary_df, metric)
        entry = METRICS.get(metric)
        higher = True if entry is None or entry.higher_is_better is None else \
            entry.higher_is_better
        cmap = "RdYlGn" if higher else "RdYlGn_r"
        finite = grid[np.isfinite(grid)]
        chance = CHANCE.get(metric)
        if chance is not None:
            # Centred on chance; at least +-0.1 so that noise-level differences
            # between cells are not painted as deep red vs deep green.
            dev = float(np.abs(finite - chance).max()) if finite.size else 0.0
            half = max(dev, 0.1)
            vmin, vmax = chance - half, chance + half
        elif finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1):
            vmin, vmax = 0.0, 1.0
        else:
            vmin, vmax = float(finite.min()), float(finite.max())
            if vmin == vmax:
                vmin, vmax = vmin - 0.5, vmax + 0.5
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(len(models)):
            for j in range(len(methods)):
                v = grid[i, j]
                ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:.3f}", ha="center",
                        va="center", fontsize=9)
        ax.set_xticks(range(len(methods)), [str(m) for m in methods], rotation=30, ha="right")
        ax.set_yticks(range(len(models)), [str(m) for m in models])
        arrow = "higher" if higher else "lower"
        sub = "" if chance is None else f", chance {chance:g}"
        ax.set_title(f"{metric}\n({arrow} is better{sub})", fontsize=10)
    fig.suptitle(title)
    return fig


def plot_size_aware_table(summary_df: pd.DataFrame, path,
                          metrics: Sequence[str] = SIZE_AWARE,
                          title: str = "Size-aware localisation scores") -> Path:
    """Write :func:`build_size_aware_table` to ``path`` and return the path."""
    return _save(build_size_aware_table(summary_df, metrics, title), path)


def build_example(image: np.ndarray, cam: np.ndarray, mask: np.ndarray,
                  title: str = "") -> Figure:
    """Four panels for one image: image, heatmap (jet overlay), mask, leak overlay.

    ``image`` ``(H, W, 3) uint8``, ``cam`` ``(H, W)`` non-negative, ``mask`` ``(H, W)``
    bool/0-1, all at the same ``H, W``. In the last panel red shows attention
    outside the lesion (leaked) and green attention on it, with opacity following
    the heatmap; the title gives the leakage (or why it is undefined).
    """
    image = np.asarray(image)
    cam = np.asarray(cam)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got shape {image.shape} "
                         f"dtype {image.dtype}")
    if cam.ndim != 2 or mask.ndim != 2 or cam.shape != image.shape[:2] \
            or mask.shape != image.shape[:2]:
        raise ValueError(f"cam and mask must be (H, W) matching image {image.shape}, got cam "
                         f"{cam.shape} and mask {mask.shape}")
    values, reasons = score_batch(cam[None], mask[None])
    m = mask.astype(bool)
    leak = values["leakage"][0]
    leak_text = f"leakage {leak:.1%}" if np.isfinite(leak) else f"leakage undefined ({reasons[0]})"
    if np.isfinite(values["excess_leakage"][0]):
        leak_text += (f" (chance {values['chance_leakage'][0]:.1%}, "
                      f"excess {values['excess_leakage'][0]:+.1%})")

    c = np.nan_to_num(cam.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
    peak = c.max()
    cn = c / peak if peak > 0 else c
    img = image.astype(np.float64) / 255.0

    from matplotlib import colormaps

    jet = colormaps["jet"](cn)[..., :3]
    heat = 0.5 * img + 0.5 * jet
    alpha = (0.85 * cn)[..., None]
    colour = np.where(m[..., None], np.array([0.0, 0.8, 0.0]), np.array([0.9, 0.0, 0.0]))
    grey = img.mean(axis=2, keepdims=True) * 0.6
    leak_overlay = grey * (1 - alpha) + colour * alpha

    fig = _figure(14, 4.2)
    axes = fig.subplots(1, 4)
    panels = [(image, "image"), (heat, "heatmap (jet)"), (m, "lesion mask"),
              (leak_overlay, "red = leaked, green = on lesion")]
    for ax, (arr, name) in zip(axes, panels, strict=True):
        if arr.ndim == 2:
            ax.imshow(arr, cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(arr if arr.dtype == np.uint8 else arr.clip(0, 1))
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    if m.any() and not m.all():
        for ax in (axes[1], axes[3]):
            ax.contour(m.astype(float), levels=[0.5], colors="white", linewidths=1)
    fig.suptitle(f"{title} - {leak_text}" if title else leak_text)
    return fig


def plot_example(image: np.ndarray, cam: np.ndarray, mask: np.ndarray, path,
                 title: str = "") -> Path:
    """Write :func:`build_example` to ``path`` and return the path."""
    return _save(build_example(image, cam, mask, title), path)
