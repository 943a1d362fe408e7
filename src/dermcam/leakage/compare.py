"""Class comparisons and summaries of a per-image table (one row per image x model x
method): :func:`summarise` (means with CIs per group), :func:`compare_classes`
(benign vs malignant, Mann-Whitney), :func:`compare_classes_by_target` (the same
within each explained class) and :func:`missing_at_chance` (undefined heatmaps scored
at chance)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from dermcam.leakage.checks import (
    TARGET_NAMES,
    is_constant,
    label_values,
    require_columns,
    target_values,
)
from dermcam.leakage.metrics import CHANCE, METRICS

__all__ = ["bootstrap_mean_ci", "summarise", "compare_classes", "compare_classes_by_target",
           "CHANCE_TEXT", "missing_at_chance"]


def bootstrap_mean_ci(x, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95, groups=None) -> tuple[float, float]:
    """``(low, high)`` percentile bootstrap CI of the mean of a 1-D sample, NaNs dropped;
    ``(nan, nan)`` below 2 values. With ``groups`` (cluster ids) that share clusters, whole
    clusters are resampled (plain) and values weighted by their cluster's count."""
    from dermcam.stats import cluster_info

    x = np.asarray(x, dtype=np.float64).ravel()
    keep = ~np.isnan(x)
    x = x[keep]
    n = x.size
    if n < 2 or n_boot < 1:
        return (np.nan, np.nan)
    info = None
    if groups is not None:
        g = np.asarray(groups, dtype=object).ravel()
        if g.size != keep.size:
            raise ValueError(f"groups {g.shape} must match x ({keep.size},)")
        info = cluster_info(g[keep])
    if info is not None:
        if info[1] < 2:
            return (np.nan, np.nan)
        means = _cluster_means(x, info, n_boot, seed)
    else:
        rng = np.random.default_rng(seed)
        means = np.empty(n_boot)
        step = max(1, int(4_000_000 // n))  # bound the (boot, n) index array
        for s in range(0, n_boot, step):
            b = min(step, n_boot - s)
            means[s:s + b] = x[rng.integers(0, n, size=(b, n))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def summarise(df: pd.DataFrame, metrics: Sequence[str],
              by: Sequence[str] = ("model", "method", "label"), n_boot: int = 1000, seed: int = 0,
              cluster_col: str | None = None) -> pd.DataFrame:
    """Per-group statistics of each metric, one row per group x metric, with a 95 % CI of
    the mean: Wilson for 0/1 values (a percentile bootstrap collapses near 0 and 1), else a
    percentile bootstrap, same ``seed`` per group. With shared ``cluster_col`` clusters the
    bootstrap resamples clusters and Wilson uses ``n / deff``; ``ci_method`` says which."""
    from dermcam.stats import cluster_info
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    by = [by] if isinstance(by, str) else list(by)
    require_columns(df, [*by, *metrics])
    groups = df.groupby(by, dropna=False, sort=True) if by else [((), df)]
    rows = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            x = pd.to_numeric(g[metric], errors="coerce").to_numpy(dtype=np.float64)
            valid = x[~np.isnan(x)]
            clusters = None
            if cluster_col is not None and cluster_col in g.columns:
                clusters = g[cluster_col].to_numpy(dtype=object)[~np.isnan(x)]
                clusters = None if cluster_info(clusters) is None else clusters
            if valid.size and np.isin(valid, (0.0, 1.0)).all():
                if clusters is None:
                    lo, hi = _wilson_ci(int(np.count_nonzero(valid)), int(valid.size))
                    ci_method = "wilson"
                else:
                    deff = _design_effect(valid, clusters, n_boot, seed)
                    n_eff = valid.size / deff
                    lo, hi = _wilson_ci(float(valid.mean() * n_eff), n_eff)
                    ci_method = f"wilson, design effect {deff:.2f} from the cluster bootstrap"
            elif clusters is None:
                lo, hi = bootstrap_mean_ci(valid, n_boot=n_boot, seed=seed)
                ci_method = "percentile bootstrap"
            else:
                lo, hi = bootstrap_mean_ci(valid, n_boot=n_boot, seed=seed, groups=clusters)
                ci_method = "percentile cluster bootstrap"
            entry = METRICS.get(metric)
            rows.append({
                **dict(zip(by, key, strict=True)), "metric": metric,
                "higher_is_better": None if entry is None else entry.higher_is_better,
                "n": int(valid.size), "n_nan": int(x.size - valid.size),
                "mean": float(valid.mean()) if valid.size else np.nan,
                "median": float(np.median(valid)) if valid.size else np.nan,
                "std": float(valid.std(ddof=1)) if valid.size > 1 else np.nan,
                "ci_low": lo, "ci_high": hi, "ci_method": ci_method})
    cols = [*by, "metric", "higher_is_better", "n", "n_nan", "mean", "median", "std",
            "ci_low", "ci_high", "ci_method"]
    return pd.DataFrame(rows, columns=cols)


def _cluster_means(x: np.ndarray, info: tuple[np.ndarray, int], n_boot: int, seed: int
                   ) -> np.ndarray:
    """``(n_boot,)`` means of ``x`` over plain resamples of whole clusters (``info`` from
    :func:`dermcam.stats.cluster_info`), each value weighted by its cluster's count."""
    from dermcam.stats import cluster_bootstrap_counts

    w = cluster_bootstrap_counts(np.zeros(x.size, np.int64), info[0], info[1], n_boot, seed,
                                 stratified=False)
    return (w @ x) / w.sum(axis=1)


def _design_effect(x: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> float:
    """Cluster-bootstrap variance of the mean of ``x`` over the i.i.d. ``var / n``, at least
    1 (1 for a constant ``x``)."""
    from dermcam.stats import cluster_info

    info = cluster_info(groups)
    var = float(x.var())
    if info is None or var == 0 or n_boot < 2:
        return 1.0
    return max(1.0, float(_cluster_means(x, info, n_boot, seed).var(ddof=1)) / (var / x.size))


def _wilson_ci(successes: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (statsmodels)."""
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(successes, n, alpha=1.0 - level, method="wilson")
    return float(lo), float(hi)


def compare_classes(df: pd.DataFrame, metric: str, label_col: str = "label") -> dict:
    """Benign (label 0) vs malignant (label 1) on one metric: two-sided Mann-Whitney U, with
    counts, medians, means, ``cles`` (P(malignant > benign) + 0.5 P(tie)), ``rank_biserial``
    and ``reason`` (``"too_few"``, or ``"constant_metric"`` where ranks would order round-off)."""
    require_columns(df, [metric, label_col])
    x = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=np.float64)
    lab = label_values(df, label_col)
    missing = np.isnan(x)
    ok = ~missing & ~np.isnan(lab)
    ben, mal = x[ok & (lab == 0)], x[ok & (lab == 1)]
    out = {
        "metric": metric, "n_benign": int(ben.size), "n_malignant": int(mal.size),
        "n_nan": int((~ok).sum()), "n_nan_benign": int((missing & (lab == 0)).sum()),
        "n_nan_malignant": int((missing & (lab == 1)).sum()),
        "median_benign": float(np.median(ben)) if ben.size else np.nan,
        "median_malignant": float(np.median(mal)) if mal.size else np.nan,
        "mean_benign": float(ben.mean()) if ben.size else np.nan,
        "mean_malignant": float(mal.mean()) if mal.size else np.nan,
        "u_statistic": np.nan, "p_value": np.nan, "cles": np.nan, "rank_biserial": np.nan,
        "reason": "",
    }
    if ben.size == 0 or mal.size == 0:
        out["reason"] = "too_few"
        return out
    if is_constant(np.concatenate([ben, mal])):
        out["reason"] = "constant_metric"
        return out
    res = stats.mannwhitneyu(mal, ben, alternative="two-sided")
    cles = float(res.statistic) / (mal.size * ben.size)
    out.update(u_statistic=float(res.statistic), p_value=float(res.pvalue), cles=cles,
               rank_biserial=2.0 * cles - 1.0)
    return out


def compare_classes_by_target(df: pd.DataFrame, metric: str, target_col: str = "cam_target",
                              label_col: str = "label") -> dict:
    """Benign vs malignant on ``metric``, pooled and within each explained class.

    With ``--target predicted`` the pooled comparison mixes lesion type with the class the
    heatmap explains; within one ``target_col`` value the target is fixed. Returns
    ``{"metric", "pooled", "by_target": {name: ...}, "n_explained", "fixed_target"}``
    (``fixed_target``: the one class every row explains, else None).
    """
    require_columns(df, [metric, label_col, target_col])
    tgt = target_values(df, target_col)
    out: dict = {"metric": metric, "pooled": compare_classes(df, metric, label_col),
                 "by_target": {}, "n_explained": {}}
    for code, name in TARGET_NAMES.items():
        sel = tgt == code
        out["n_explained"][name] = int(sel.sum())
        if sel.any():
            out["by_target"][name] = compare_classes(df[sel], metric, label_col)
    present = [name for name, n in out["n_explained"].items() if n]
    out["fixed_target"] = present[0] if len(present) == 1 and np.isfinite(tgt).all() else None
    return out


def _chance_values(df: pd.DataFrame, metric: str) -> np.ndarray | None:
    """``(N,)`` the score a uniform heatmap gets on each row, or None if it has none."""
    if metric in CHANCE:
        return np.full(len(df), CHANCE[metric], dtype=np.float64)
    if "lesion_area" not in df.columns or metric not in ("leakage", "rank_accuracy",
                                                          "pointing_game"):
        return None
    area = pd.to_numeric(df["lesion_area"], errors="coerce").to_numpy(dtype=np.float64)
    return 1.0 - area if metric == "leakage" else area


#: How :func:`missing_at_chance` scores an undefined heatmap, per metric.
CHANCE_TEXT = {"leakage": "leakage = chance leakage = 1 - lesion area",
               "excess_leakage": "excess leakage 0", "pixel_auroc": "pixel AUROC 0.5",
               "localisation_gain": "localisation gain 1",
               "rank_accuracy": "rank accuracy = lesion area",
               "pointing_game": "pointing game = lesion area"}


def missing_at_chance(df: pd.DataFrame, metrics: Sequence[str] = ("leakage", "excess_leakage",
                                                                   "pixel_auroc"),
                      label_col: str = "label", target_col: str | None = "cam_target"
                      ) -> dict[str, dict]:
    """The class comparison again with undefined heatmaps (which drop out of the class
    means, informatively if one class has more) scored at chance (:data:`CHANCE_TEXT`):
    ``{metric: {counts, "observed", "at_chance", "diff_observed", "diff_at_chance", ...}}``."""
    require_columns(df, [label_col])
    lab = label_values(df, label_col)
    n_exp = None
    if target_col is not None and target_col in df.columns:
        tgt = target_values(df, target_col)
        n_exp = {name: int((tgt == code).sum()) for code, name in TARGET_NAMES.items()}
    out = {}
    for metric in ([metrics] if isinstance(metrics, str) else list(metrics)):
        if metric not in df.columns:
            continue
        chance = _chance_values(df, metric)
        if chance is None:
            continue
        x = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=np.float64)
        fill = np.isnan(x) & np.isfinite(chance)
        filled = df.assign(**{metric: np.where(fill, chance, x)})
        obs = compare_classes(df, metric, label_col)
        imp = compare_classes(filled, metric, label_col)
        out[metric] = {
            "metric": metric, "chance": CHANCE_TEXT[metric],
            "n_nan_benign": obs["n_nan_benign"], "n_nan_malignant": obs["n_nan_malignant"],
            "n_imputed_benign": int((fill & (lab == 0)).sum()),
            "n_imputed_malignant": int((fill & (lab == 1)).sum()),
            "observed": obs, "at_chance": imp,
            "diff_observed": obs["mean_malignant"] - obs["mean_benign"],
            "diff_at_chance": imp["mean_malignant"] - imp["mean_benign"],
            "explained_classes": n_exp, "pooled_over_targets": bool(n_exp and all(n_exp.values())),
        }
    return out
