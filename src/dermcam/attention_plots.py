"""Figures for the attention-leakage audit: the reference study's and size-aware ones.

``build_*`` returns the Figure (Agg canvas, no pyplot); ``plot_*`` writes it atomically and
returns the path. Tables carry the scoring stage's columns; NaN rows leave a panel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dermcam.io import save_figure
from dermcam.leakage import CHANCE, LABEL_NAMES, METRICS, bootstrap_mean_ci, score_batch
from dermcam.overlay import leak_overlay, unit_cam
from dermcam.plots import new_figure

log = logging.getLogger(__name__)

__all__ = ["build_attention_summary", "build_leakage_vs_accuracy", "build_leakage_vs_area",
           "build_size_aware_table", "build_localisation_grid", "build_example",
           "plot_attention_summary", "plot_leakage_vs_accuracy", "plot_leakage_vs_area",
           "plot_size_aware_table", "plot_localisation_grid", "plot_example"]

CLASS_COLOURS = {0: "#1f77b4", 1: "#d62728"}  # benign blue, malignant red
SIZE_AWARE = ("excess_leakage", "localisation_gain", "pixel_auroc", "pointing_game")


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs column(s) {missing}; the table has {list(df.columns)}")


def _numeric(df: pd.DataFrame, *columns: str) -> list[pd.Series]:
    return [pd.to_numeric(df[c], errors="coerce") for c in columns]


def _by_class(df: pd.DataFrame, column: str) -> dict[int, np.ndarray]:
    """``{0: benign values, 1: malignant values}`` with NaNs dropped."""
    lab, x = _numeric(df, "label", column)
    return {c: x[(lab == c) & x.notna()].to_numpy(dtype=float) for c in (0, 1)}


def _no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _name_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def _scatter_by_class(ax, lab: pd.Series, x: pd.Series, y: pd.Series, label) -> bool:
    """One scatter per class of the rows where ``x`` and ``y`` are defined; ``label(c, n)``
    names class ``c`` with ``n`` points. True when any point was drawn."""
    drawn = False
    for c in (0, 1):
        sel = (lab == c) & x.notna() & y.notna()
        if sel.any():
            drawn = True
            ax.scatter(x[sel], y[sel], s=12, alpha=0.6, color=CLASS_COLOURS[c],
                       label=label(c, int(sel.sum())))
    return drawn


def build_attention_summary(df: pd.DataFrame, title: str = "Attention leakage analysis") -> Figure:
    """The study's 2 x 2 figure for one model x method (rows are pooled): leakage box plot
    and histogram by class, inside vs outside score, mean leakage per class with bootstrap
    CI (and the mean chance leakage ``1 - lesion_area`` where the table has it)."""
    _require(df, ["label", "leakage", "inside_score", "outside_score"], "plot_attention_summary")
    leak = _by_class(df, "leakage")
    fig = new_figure((11, 8.5))
    (ax_box, ax_hist), (ax_sc, ax_bar) = fig.subplots(2, 2)
    present = [c for c in (0, 1) if leak[c].size]
    _leakage_box_panel(ax_box, leak, present)
    _leakage_hist_panel(ax_hist, leak, present)
    _inside_outside_panel(ax_sc, df)
    _mean_leakage_panel(ax_bar, df, leak)
    fig.suptitle(title)
    return fig


def _leakage_box_panel(ax, leak: dict[int, np.ndarray], present: list[int]) -> None:
    if present:
        bp = ax.boxplot([leak[c] for c in present], positions=present, widths=0.5,
                        patch_artist=True)
        for patch, c in zip(bp["boxes"], present, strict=True):
            patch.set_facecolor(CLASS_COLOURS[c])
            patch.set_alpha(0.5)
    else:
        _no_data(ax)
    ax.set_xticks([0, 1], [f"{LABEL_NAMES[c]}\n(n={leak[c].size})" for c in (0, 1)])
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylabel("attention leakage (share outside lesion)")
    ax.set_title("Leakage by class")


def _leakage_hist_panel(ax, leak: dict[int, np.ndarray], present: list[int]) -> None:
    allv = np.concatenate([leak[0], leak[1]])
    if allv.size:
        ax.hist(allv, bins=np.linspace(0, 1, 31), color="grey", alpha=0.6)
        ax.axvline(allv.mean(), color="black", lw=2, label=f"mean {allv.mean():.1%}")
        for c in present:
            ax.axvline(leak[c].mean(), color=CLASS_COLOURS[c], ls="--",
                       label=f"{LABEL_NAMES[c]} mean {leak[c].mean():.1%}")
        ax.legend(fontsize=8)
    else:
        _no_data(ax)
    _name_axes(ax, "attention leakage", "images", "Leakage distribution")


def _inside_outside_panel(ax, df: pd.DataFrame) -> None:
    lab, ins, outs = _numeric(df, "label", "inside_score", "outside_score")
    if _scatter_by_class(ax, lab, outs, ins, lambda c, n: LABEL_NAMES[c]):
        lim = float(np.nanmax([ins.max(), outs.max(), 1e-12])) * 1.05
        ax.plot([0, lim], [0, lim], color="black", lw=1, ls=":", label="inside = outside")
        ax.legend(fontsize=8)
    else:
        _no_data(ax)
    _name_axes(ax, "outside score (mean heatmap off lesion)",
               "inside score (mean heatmap on lesion)", "Inside vs outside attention")


def _mean_leakage_panel(ax, df: pd.DataFrame, leak: dict[int, np.ndarray]) -> None:
    means = [leak[c].mean() if leak[c].size else np.nan for c in (0, 1)]
    cis = [bootstrap_mean_ci(leak[c]) for c in (0, 1)]
    err = np.array([[m - lo if np.isfinite(lo) else 0.0, hi - m if np.isfinite(hi) else 0.0]
                    for m, (lo, hi) in zip(means, cis, strict=True)]).T
    ax.bar([0, 1], np.nan_to_num(means), yerr=err, capsize=6,
           color=[CLASS_COLOURS[0], CLASS_COLOURS[1]], alpha=0.7)
    for x, mval in zip((0, 1), means, strict=True):
        if np.isfinite(mval):
            ax.text(x, mval / 2, f"{mval:.1%}", ha="center", va="center", color="white",
                    fontweight="bold")
    if "lesion_area" in df.columns:
        chance = _by_class(df.assign(_chance=1 - pd.to_numeric(df["lesion_area"],
                                                                errors="coerce")), "_chance")
        drawn = [x for x in (0, 1) if chance[x].size]
        for x in drawn:  # one legend entry, on the first line drawn
            ax.hlines(chance[x].mean(), x - 0.4, x + 0.4, color="black", lw=2,
                      label="mean chance leakage (1 - area)" if x == drawn[0] else None)
        if drawn:
            ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks([0, 1], [LABEL_NAMES[c] for c in (0, 1)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean leakage (95 % bootstrap CI)")
    ax.set_title("Mean leakage by class")


def plot_attention_summary(df: pd.DataFrame, path, title: str = "Attention leakage analysis"
                           ) -> Path:
    """Write :func:`build_attention_summary` to ``path`` and return the path."""
    return save_figure(build_attention_summary(df, title), path)


#: One marker per model (or model x method) in :func:`build_leakage_vs_accuracy`.
MODEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*")
ALL_COLOUR = "black"  # the point over both classes
#: What "share correct" means within each group of :func:`build_leakage_vs_accuracy`.
GROUP_NAMES = {0: "benign (specificity)", 1: "malignant (sensitivity)",
               "all": "all images (both classes)"}


def _n_text(ns: Sequence[int]) -> str:
    """``n=12`` where every model has the same n, else ``n=10-12``."""
    ns = sorted(set(ns))
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"


def build_leakage_vs_accuracy(df: pd.DataFrame,
                              title: str = "Attention leakage vs share classified correctly",
                              displays: dict[str, str] | None = None) -> Figure:
    """Per model (x method where several): mean leakage vs share classified correctly,
    within each class (specificity, sensitivity) and over all images; a marker per model,
    a colour per group, a grey line joining one model's classes. ``displays``: model names
    shown."""
    _require(df, ["model", "label", "leakage", "correct"], "plot_leakage_vs_accuracy")
    displays = displays or {}
    keys = ["model"]
    if "method" in df.columns and df["method"].nunique(dropna=False) > 1:
        keys.append("method")
    d = df.assign(_leak=pd.to_numeric(df["leakage"], errors="coerce"),
                  _correct=df["correct"].astype(float),
                  _label=pd.to_numeric(df["label"], errors="coerce"))
    d = d[d["_leak"].notna() & d["_correct"].notna()]
    fig = new_figure((8, 6))
    ax = fig.subplots()
    if d.empty:
        _no_data(ax)
    groups = list(d.groupby(keys, sort=True))
    if len(groups) > len(MODEL_MARKERS):
        raise ValueError(f"plot_leakage_vs_accuracy draws at most {len(MODEL_MARKERS)} "
                         f"models, got {len(groups)}")
    counts: dict = {0: [], 1: [], "all": []}
    model_handles = []
    for (key, g), marker in zip(groups, MODEL_MARKERS, strict=False):
        parts = key if isinstance(key, tuple) else (key,)
        name = " / ".join(str(k) for k in (displays.get(parts[0], parts[0]), *parts[1:]))
        points = {}
        for c in (0, 1, "all"):
            gc = g if c == "all" else g[g["_label"] == c]
            if len(gc):
                points[c] = (gc["_leak"].mean(), gc["_correct"].mean())
                counts[c].append(len(gc))
                ax.scatter(*points[c], marker=marker, s=60, alpha=0.9,
                           color=ALL_COLOUR if c == "all" else CLASS_COLOURS[c],
                           edgecolors="white", linewidths=0.6, zorder=3)
        if 0 in points and 1 in points:  # the point over all images lies on this segment
            ax.plot(*zip(points[0], points[1], strict=True), color="0.6", lw=0.8, zorder=1)
        model_handles.append(ax.scatter([], [], marker=marker, s=50, color="0.45", label=name))
    group_handles = [ax.scatter([], [], marker="o", s=50,
                                color=ALL_COLOUR if c == "all" else CLASS_COLOURS[c],
                                label=f"{GROUP_NAMES[c]}, {_n_text(counts[c])}")
                     for c in (0, 1, "all") if counts[c]]
    if model_handles:
        ax.legend(handles=model_handles + group_handles, fontsize=8, loc="best",
                  title="marker: model, colour: images\n(a line joins one model's classes)",
                  title_fontsize=8)
    _name_axes(ax, "mean attention leakage",
               "share classified correctly\n(benign: specificity, malignant: sensitivity)",
               title)
    ax.grid(alpha=0.3)
    return fig


def plot_leakage_vs_accuracy(df: pd.DataFrame, path,
                             title: str = "Attention leakage vs share classified correctly",
                             displays: dict[str, str] | None = None) -> Path:
    """Write :func:`build_leakage_vs_accuracy` to ``path`` and return the path."""
    return save_figure(build_leakage_vs_accuracy(df, title, displays), path)


def build_leakage_vs_area(df: pd.DataFrame, title: str = "Leakage vs lesion area",
                          displays: dict[str, str] | None = None) -> Figure:
    """Leakage against lesion area by class, with the chance line ``leakage = 1 - area``
    (a uniform heatmap: points below attend to the lesion more than chance); one panel per
    model (x method where several) when the table has ``model``."""
    _require(df, ["label", "leakage", "lesion_area"], "plot_leakage_vs_area")
    displays = displays or {}
    keys = [k for k in ("model", "method") if k in df.columns
            and (k == "model" or df[k].nunique(dropna=False) > 1)]
    panels = [(None, df)] if not keys else list(df.groupby(keys, sort=True))
    fig = new_figure((max(7.0, 5.0 * len(panels)) if len(panels) > 1 else 7, 6))
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True, sharey=True))
    for ax, (key, g) in zip(axes, panels, strict=True):
        lab, x, y = _numeric(g, "label", "lesion_area", "leakage")
        _scatter_by_class(ax, lab, x, y, lambda c, n: f"{LABEL_NAMES[c]} (n={n} images)")
        ax.plot([0, 1], [1, 0], color="black", ls="--", lw=1.5,
                label="chance: uniform heatmap (1 - area)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("lesion area (share of image)")
        if ax is axes[0]:
            ax.set_ylabel("attention leakage")
        ax.legend(fontsize=8)
        if key is not None:
            model = key[0] if isinstance(key, tuple) else key
            where = " at ".join(f"{g[k].iloc[0]}" for k in ("method", "layer")
                                if k in g.columns and g[k].nunique(dropna=False) == 1)
            ax.set_title(f"{displays.get(model, model)}" + (f" ({where})" if where else ""),
                         fontsize=10)
    if keys:
        fig.suptitle(title)
    else:
        axes[0].set_title(title)
    return fig


def plot_leakage_vs_area(df: pd.DataFrame, path, title: str = "Leakage vs lesion area",
                         displays: dict[str, str] | None = None) -> Path:
    """Write :func:`build_leakage_vs_area` to ``path`` and return the path."""
    return save_figure(build_leakage_vs_area(df, title, displays), path)


def _table_values(summary_df: pd.DataFrame, metric: str, stat: str = "mean"):
    """(models, methods, grid) of one metric's ``stat`` from a long or wide summary table."""
    if stat not in ("mean", "median"):
        raise ValueError(f"stat must be 'mean' or 'median', got {stat!r}")
    if "metric" in summary_df.columns:
        _require(summary_df, ["model", "method", stat], "plot_size_aware_table")
        d = summary_df[summary_df["metric"] == metric]
        per_class = bool(len(d)) and d.groupby(["model", "method"]).size().max() > 1
        if per_class and stat == "median":
            raise ValueError(
                f"plot_size_aware_table: the median of {metric} cannot be pooled from "
                "several rows per model x method (e.g. per class); summarise by "
                "('model', 'method') instead")
        if per_class and "n" in d.columns:
            # Per-class rows: the n-weighted mean of the class means is the pooled mean.
            d = d.assign(_w=d["n"] * d["mean"]).groupby(["model", "method"], sort=True)[
                ["_w", "n"]].sum()
            d = d.assign(mean=d["_w"] / d["n"].where(d["n"] > 0)).reset_index()
        elif per_class:
            d = d.groupby(["model", "method"], sort=True)["mean"].mean().reset_index()
        else:
            d = d[["model", "method", stat]]
        col = stat
    else:
        _require(summary_df, ["model", "method", metric], "plot_size_aware_table")
        d = summary_df.assign(_v=pd.to_numeric(summary_df[metric], errors="coerce"))
        d = d.groupby(["model", "method"], sort=True)["_v"].agg(stat).reset_index()
        col = "_v"
    models = sorted(summary_df["model"].dropna().unique(), key=str)
    methods = sorted(summary_df["method"].dropna().unique(), key=str)
    grid = np.full((len(models), len(methods)), np.nan)
    for _, row in d.iterrows():
        grid[models.index(row["model"]), methods.index(row["method"])] = row[col]
    return models, methods, grid


#: The statistic each size-aware panel shows, as the summary's text quotes it (the median
#: pixel AUROC, the means of the others).
SIZE_AWARE_STATS = {"excess_leakage": "mean", "localisation_gain": "mean",
                    "pixel_auroc": "median", "pointing_game": "mean"}


def _colour_range(finite: np.ndarray, chance: float | None) -> tuple[float, float]:
    """Centred on chance where it is fixed (at least +-0.1, so noise-level differences are
    not painted deep red vs deep green), else 0-1 for shares, else the data's range."""
    if chance is not None:
        dev = float(np.abs(finite - chance).max()) if finite.size else 0.0
        half = max(dev, 0.1)
        return chance - half, chance + half
    if finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1):
        return 0.0, 1.0
    vmin, vmax = float(finite.min()), float(finite.max())
    return (vmin - 0.5, vmax + 0.5) if vmin == vmax else (vmin, vmax)


def build_size_aware_table(summary_df: pd.DataFrame,
                           metrics: Sequence[str] = SIZE_AWARE,
                           title: str = "Size-aware localisation scores",
                           stats: dict[str, str] | None = None) -> Figure:
    """Model x method heat-tables of the size-aware scores, one panel per metric, each the
    statistic ``stats[metric]`` (default :data:`SIZE_AWARE_STATS`). Per-class long rows
    are pooled into n-weighted means (a median cannot be: ``ValueError``). Green = better."""
    metrics = list(metrics)
    if not metrics:
        raise ValueError("plot_size_aware_table needs at least one metric")
    stats = {**SIZE_AWARE_STATS, **(stats or {})}
    fig = new_figure((4.2 * len(metrics), 1.2 + 0.55 * max(
        2, summary_df["model"].nunique() if "model" in summary_df.columns else 2)))
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, metric in zip(axes, metrics, strict=True):
        stat = stats.get(metric, "mean")
        models, methods, grid = _table_values(summary_df, metric, stat)
        entry = METRICS.get(metric)
        higher = True if entry is None or entry.higher_is_better is None else entry.higher_is_better
        chance = CHANCE.get(metric)
        vmin, vmax = _colour_range(grid[np.isfinite(grid)], chance)
        ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn" if higher else "RdYlGn_r",
                  vmin=vmin, vmax=vmax, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:.3f}", ha="center",
                    va="center", fontsize=9)
        ax.set_xticks(range(len(methods)), [str(m) for m in methods], rotation=30, ha="right")
        ax.set_yticks(range(len(models)), [str(m) for m in models])
        sub = "" if chance is None else f", chance {chance:g}"
        ax.set_title(f"{stat} {metric}\n({'higher' if higher else 'lower'} is better{sub})",
                     fontsize=10)
    fig.suptitle(title)
    return fig


def plot_size_aware_table(summary_df: pd.DataFrame, path,
                          metrics: Sequence[str] = SIZE_AWARE,
                          title: str = "Size-aware localisation scores",
                          stats: dict[str, str] | None = None) -> Path:
    """Write :func:`build_size_aware_table` to ``path`` and return the path."""
    return save_figure(build_size_aware_table(summary_df, metrics, title, stats), path)


#: Hatches of :func:`build_localisation_grid`, one per reason a candidate cannot be chosen
#: (several combine in one cell).
GRID_HATCHES = {"uniform": "//", "sanity_failed": "\\\\", "sanity_unknown": ".."}
GRID_HATCH_NAMES = {"uniform": "95 % CI lower bound \u2264 0.5 (not better than uniform)",
                    "sanity_failed": "sanity check failed",
                    "sanity_unknown": "sanity check inconclusive or not run"}


def _ink(rgba) -> str:
    """Black or white text, whichever reads on the colour ``rgba``."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.45 else "white"


def build_localisation_grid(rows, chosen=None, displays: dict[str, str] | None = None,
                            title: str = "Localisation benchmark: median pixel AUROC by "
                                         "CAM method and layer") -> Figure:
    """The localisation benchmark's rows as a CAM method x layer heat-grid per model: the median
    pixel AUROC, ``chosen`` cells outlined, cells that cannot be chosen washed out and hatched
    by reason (:data:`GRID_HATCHES`)."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    df = pd.DataFrame(list(rows) if not isinstance(rows, pd.DataFrame) else rows)
    if df.empty:
        raise ValueError("plot_localisation_grid needs at least one benchmark row")
    _require(df, ["model", "method", "layer", "median_pixel_auroc", "ci_low"],
             "plot_localisation_grid")
    displays = displays or {}
    if isinstance(chosen, dict):  # {model: (method, layer)}, or layer_choice records
        picked = {str(k): (str(v[0]), str(v[1])) for k, v in chosen.items()}
    else:
        picked = {str(c["model"]): (str(c["method"]), str(c["layer"])) for c in chosen or ()}
    panels = []  # (model, its rows, its methods, its layers), all in order of appearance
    for model in dict.fromkeys(df["model"].astype(str)):
        g = df[df["model"].astype(str) == model]
        panels.append((model, g, list(dict.fromkeys(g["method"].astype(str))),
                       list(dict.fromkeys(g["layer"].astype(str)))))
    cmap, norm = colormaps["RdYlGn"], Normalize(0.0, 1.0)
    n_rows = max(len(p[2]) for p in panels)
    n_cols = sum(len(p[3]) for p in panels)
    width = max(9.0, 2.2 + 0.95 * n_cols + 1.4 * len(panels))
    fig = new_figure((width, 2.6 + 0.5 * n_rows))
    axes = np.atleast_1d(fig.subplots(1, len(panels), width_ratios=[len(p[3]) for p in panels]))
    image = None
    for ax, (model, g, methods, layers) in zip(axes, panels, strict=True):
        image = _draw_grid_panel(ax, g, methods, layers, cmap, norm)
        note = _mark_chosen(ax, picked.get(model), methods, layers)
        _grid_axes(ax, g, methods, layers)
        n = g["n"].iloc[0] if "n" in g.columns else None
        where = g["images"].iloc[0] if "images" in g.columns else ""
        sub = f"\n{n} {where} images".rstrip() if n is not None else ""
        ax.set_title(f"{displays.get(model, model)}{sub}{note}", fontsize=10)
        ax.set_xlabel("layer (heatmap grid)", fontsize=8)
    _grid_key(fig, list(axes), image, width)
    fig.suptitle(title)
    return fig


def _draw_grid_panel(ax, g: pd.DataFrame, methods: list[str], layers: list[str], cmap, norm):
    """One model's method x layer grid on ``ax``; returns the image."""
    grid = np.full((len(methods), len(layers)), np.nan)
    cells = {}
    for r in g.to_dict("records"):
        i, j = methods.index(str(r["method"])), layers.index(str(r["layer"]))
        grid[i, j] = float(r["median_pixel_auroc"])
        cells[(i, j)] = r
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
    for (i, j), r in cells.items():
        v = grid[i, j]
        _draw_grid_cell(ax, i, j, v, r, _ink(cmap(norm(v))) if np.isfinite(v) else "black")
    return image


def _ineligible_reasons(r) -> list[str]:
    """Why candidate ``r`` cannot be chosen, as :data:`GRID_HATCHES` keys in that order."""
    lo = float(r["ci_low"]) if r["ci_low"] is not None else np.nan
    reasons = []
    if not (np.isfinite(lo) and lo > 0.5):
        reasons.append("uniform")
    verdict = r.get("sanity_passed")  # as read back from JSON or a table: NaN is unknown
    if verdict is None or (isinstance(verdict, float) and np.isnan(verdict)):
        reasons.append("sanity_unknown")
    elif not verdict:
        reasons.append("sanity_failed")
    return reasons


def _draw_grid_cell(ax, i: int, j: int, v: float, r, ink: str) -> None:
    """Cell ``(i, j)``: washed out and hatched where it cannot be chosen, and its value."""
    from matplotlib.patches import Rectangle

    from dermcam.localisation import MAX_UNDEFINED

    reasons = _ineligible_reasons(r)
    undefined = float(r.get("undefined_share", 0.0) or 0.0)
    if reasons or undefined > MAX_UNDEFINED:
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="white",
                               alpha=0.55, edgecolor="none", zorder=2))
        ink = "black"
    if reasons:
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=0, edgecolor="0.35",
                               hatch="".join(GRID_HATCHES[k] for k in reasons),
                               zorder=2, gid="hatch:" + ",".join(reasons)))
    ax.text(j, i, f"{v:.3f}" if np.isfinite(v) else "n/a", ha="center",
            va="center", fontsize=9, color=ink, fontweight="bold", zorder=4,
            gid="value", bbox={"boxstyle": "round,pad=0.15", "lw": 0,
                               "fc": "white" if reasons else "none",
                               "alpha": 0.8 if reasons else 0})
    if undefined > MAX_UNDEFINED:
        ax.text(j, i + 0.32, f"{undefined:.0%} undef.", ha="center", va="center",
                fontsize=6.5, color="black", zorder=4, gid="note",
                bbox={"boxstyle": "round,pad=0.1", "lw": 0, "fc": "white", "alpha": 0.8})


def _mark_chosen(ax, want: tuple[str, str] | None, methods: list[str], layers: list[str]) -> str:
    """Outline the chosen cell; returns the title's note where it is not in the grid."""
    from matplotlib.patches import Rectangle

    if want is not None and want[0] in methods and want[1] in layers:
        i, j = methods.index(want[0]), layers.index(want[1])
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black",
                               lw=3, zorder=5, gid="chosen"))
    elif want is not None:
        return f"\nchosen {want[0]} at {want[1]}: not in the benchmark"
    return ""


def _grid_axes(ax, g: pd.DataFrame, methods: list[str], layers: list[str]) -> None:
    """Ticks (layers with their heatmap grid where known, methods) and white cell borders."""
    ticks = []
    for layer in layers:
        gr = g.loc[g["layer"].astype(str) == layer, "grid"].iloc[0] if "grid" in g.columns else None
        ok = isinstance(gr, (list, tuple, np.ndarray)) and len(gr) == 2 and gr[0]
        ticks.append(f"{layer}\n{gr[0]}\u00d7{gr[1]}" if ok else layer)
    ax.set_xticks(range(len(layers)), ticks, fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    ax.tick_params(length=0)
    ax.set_xticks(np.arange(len(layers) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(methods) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="minor", length=0)


def _grid_key(fig: Figure, axes: list, image, width: float) -> None:
    """The colour bar beside ``axes`` and the legend of hatches, outline and notes below."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from dermcam.localisation import MAX_UNDEFINED

    fig.colorbar(image, ax=axes, fraction=0.03, pad=0.02,
                 label="median pixel AUROC (0.5 = uniform attention)")
    handles = [Patch(facecolor="white", edgecolor="0.35", hatch=GRID_HATCHES[k],
                     label=GRID_HATCH_NAMES[k]) for k in GRID_HATCHES]
    handles += [Patch(fill=False, edgecolor="black", lw=2.5, label="chosen method and layer"),
                Line2D([], [], ls="none",
                       label=f"'x% undef.': maps undefined (over {MAX_UNDEFINED:.0%} "
                             "excludes the cell)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3 if width >= 13 else 2,
               fontsize=8, frameon=False)


def plot_localisation_grid(rows, path, chosen=None, displays: dict[str, str] | None = None,
                           title: str = "Localisation benchmark: median pixel AUROC by "
                                        "CAM method and layer") -> Path:
    """Write :func:`build_localisation_grid` to ``path`` and return the path."""
    return save_figure(build_localisation_grid(rows, chosen, displays, title), path)


def build_example(image: np.ndarray, cam: np.ndarray, mask: np.ndarray, title: str = "") -> Figure:
    """Four panels for one image: image, heatmap (jet overlay), mask, leak overlay (red:
    attention off the lesion, green: on it). ``image (H, W, 3) uint8``, ``cam (H, W)``
    non-negative, ``mask (H, W)`` bool/0-1; the title gives the leakage."""
    from matplotlib import colormaps

    image, cam, mask = np.asarray(image), np.asarray(cam), np.asarray(mask)
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
    cn = unit_cam(cam)
    img = image.astype(np.float64) / 255.0
    heat = 0.5 * img + 0.5 * colormaps["jet"](cn)[..., :3]
    fig = new_figure((14, 4.2))
    axes = fig.subplots(1, 4)
    panels = [(image, "image"), (heat, "heatmap (jet)"), (m, "lesion mask"),
              (leak_overlay(img, m, cn), "red = leaked, green = on lesion")]
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
    return save_figure(build_example(image, cam, mask, title), path)
