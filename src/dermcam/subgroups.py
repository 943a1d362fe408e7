"""Metrics with CIs per subgroup (``dermcam evaluate --by COLUMN``) and heterogeneity tests:
Cochran's Q of the group AUCs, chi-square of correct x group, Kruskal-Wallis for per-image
scores, Holm-adjusted over all columns and models of one evaluation (docs/evaluation.md)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from dermcam import leakage as lk
from dermcam.evaluation import (
    batch_ranking_metrics,
    batch_threshold_metrics,
    classification_metrics,
)
from dermcam.formatting import fmt_ci_entry, metric_label
from dermcam.skin import ita_category
from dermcam.stats import adjust_in_place, ci_entry, delong_components, resampling_weights

__all__ = ["MIN_GROUP", "MIN_PER_CLASS", "SUBGROUP_METRICS", "bin_column",
           "subgroup_metrics", "subgroup_analyses", "cochran_q_auc", "image_levels",
           "kruskal_across", "subgroup_summaries", "subgroup_summary_analyses"]

MIN_GROUP = 20
MIN_PER_CLASS = 5
MAX_LEVELS = 8
N_QUANTILE_BINS = 4
SUBGROUP_METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity")
TOO_FEW = "too few to estimate"
MISSING = "missing"
FEWER = "fewer than 2 estimable groups"


def _edge(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() or abs(x) >= 100 else f"{x:.3g}"


def bin_column(values: pd.Series, name: str = "") -> tuple[pd.Series, str]:
    """``(group label per row (str), how the groups were made)``: few values kept, other
    numbers cut at quartiles, ``ita`` in the ITA categories, missing its own group."""
    v = pd.Series(values).reset_index(drop=True)
    num = pd.to_numeric(v, errors="coerce")
    is_num = num.notna().sum() > 0 and num.notna().sum() == v.notna().sum()
    if name == "ita" and is_num:
        labels = num.map(lambda a: ita_category(a) or MISSING)
        return labels, "ITA categories (very light > 55°, light 41–55, intermediate 28–41, " \
                       "tan 10–28, brown −30–10, dark ≤ −30)"
    if is_num and num.nunique() > MAX_LEVELS:
        cut = pd.qcut(num, N_QUANTILE_BINS, duplicates="drop")
        labels = cut.astype(object).map(lambda iv: f"{_edge(iv.left)}–{_edge(iv.right)}"
                                        if isinstance(iv, pd.Interval) else MISSING)
        return labels.astype(str), (f"quartile bins of the values ({cut.cat.categories.size} "
                                    "bins, left edge exclusive)")
    if is_num:
        labels = num.map(lambda x: MISSING if pd.isna(x) else _edge(x))
    else:
        labels = v.map(lambda x: MISSING if pd.isna(x) or str(x).strip() == "" else str(x).strip())
    return labels.astype(str), "each value its own group"


def _auc_var(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """``(AUC, DeLong variance)`` of one score; NaN where a class has < 2 images."""
    m, n = int(y.sum()), int((1 - y).sum())
    if m < 2 or n < 2:
        return math.nan, math.nan
    auc, v10, v01 = delong_components(y, p[None, :])
    return float(auc[0]), float(np.var(v10[0], ddof=1) / m + np.var(v01[0], ddof=1) / n)


def _untestable(stat: str, df: int, reason: str) -> dict[str, Any]:
    return {stat: math.nan, "df": df, "p": math.nan, "reason": reason}


def cochran_q_auc(aucs, variances) -> dict[str, Any]:
    """Cochran's Q for equal AUCs across independent groups, ``w_i = 1 / var_i``, chi-square
    on ``k - 1`` df: ``{q, df, p, reason}``; NaN with a reason below 2 groups or for a zero
    variance."""
    from scipy import stats as st

    a = np.asarray(aucs, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(v)
    a, v = a[ok], v[ok]
    if a.size < 2:
        return _untestable("q", int(max(a.size - 1, 0)), FEWER)
    if (v <= 1e-12).any():
        return _untestable("q", int(a.size - 1),
                           "a group's AUC has zero variance (perfect or constant ranking)")
    w = 1 / v
    pooled = float((w * a).sum() / w.sum())
    q = float((w * (a - pooled) ** 2).sum())
    return {"q": q, "df": int(a.size - 1), "p": float(st.chi2.sf(q, a.size - 1)),
            "pooled_auc": pooled, "reason": ""}


def _accuracy_chi2(correct_by_group: list[np.ndarray]) -> dict[str, Any]:
    from scipy import stats as st

    table = np.array([[int(c.sum()), int((~c).sum())] for c in correct_by_group])
    if table.shape[0] < 2:
        return _untestable("chi2", 0, FEWER)
    if (table.sum(axis=0) == 0).any():
        return _untestable("chi2", int(table.shape[0] - 1),
                           "every image correct (or every one wrong)")
    chi2, p, df, _ = st.chi2_contingency(table, correction=False)
    return {"chi2": float(chi2), "df": int(df), "p": float(p), "reason": ""}


def _group_rows(d: pd.DataFrame, thr: float, n_boot: int, seed: int, alpha: float,
                min_group: int, min_per_class: int) -> tuple[list[dict], dict, dict]:
    rows, aucs, correct = [], {}, {}
    for level, g in d.groupby("_level", sort=True):
        y = g["label"].to_numpy(dtype=np.int64)
        p = g["prob_malignant"].to_numpy(dtype=np.float64)
        n, n_mal = int(y.size), int(y.sum())
        row: dict[str, Any] = {"group": str(level), "n": n, "n_malignant": n_mal,
                               "n_benign": n - n_mal}
        if n < min_group or min(n_mal, n - n_mal) < min_per_class:
            row.update(estimable=False, note=TOO_FEW)
            rows.append(row)
            continue
        pt = classification_metrics(y, p, thr)
        w = resampling_weights(y, n_boot, seed, stratified=True,
                               groups=g["group"].to_numpy(dtype=object)
                               if "group" in g.columns else None)
        boot = {**batch_threshold_metrics(w, y, p >= thr), **batch_ranking_metrics(w, y, p, 10)}
        for k in SUBGROUP_METRICS:
            row[k] = ci_entry(pt[k], boot[k], alpha, f"{level} {k}")
        row.update(estimable=True, note="")
        rows.append(row)
        aucs[str(level)] = _auc_var(y, p)
        correct[str(level)] = (p >= thr).astype(int) == y
    return rows, aucs, correct


def subgroup_metrics(preds: pd.DataFrame, column: str, thresholds: dict[str, float],
                     n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                     min_group: int = MIN_GROUP, min_per_class: int = MIN_PER_CLASS
                     ) -> dict[str, Any]:
    """Per-group metrics with CIs and heterogeneity tests for one grouping ``column``:
    ``{"column", "binning", "min_group", "min_per_class", "models": {model: {"groups": [...],
    "heterogeneity": {"auc", "accuracy"}}}}``."""
    if column not in preds.columns:
        raise ValueError(f"no column {column!r} in the predictions")
    levels, binning = bin_column(preds[column], column)
    d = preds.reset_index(drop=True).assign(_level=levels.to_numpy())
    out: dict[str, Any] = {"column": column, "binning": binning, "min_group": int(min_group),
                           "min_per_class": int(min_per_class), "models": {}}
    for model, dm in d.groupby("model", sort=False):
        rows, aucs, correct = _group_rows(dm, float(thresholds[model]), n_boot, seed, alpha,
                                          min_group, min_per_class)
        het_auc = cochran_q_auc([a for a, _ in aucs.values()], [v for _, v in aucs.values()])
        out["models"][str(model)] = {
            "groups": rows,
            "heterogeneity": {"auc": {**het_auc, "test": "Cochran's Q of group AUCs, DeLong "
                                      "variances"},
                              "accuracy": {**_accuracy_chi2(list(correct.values())),
                                           "test": "chi-square, correct x group"}}}
    return out


def subgroup_analyses(preds: pd.DataFrame, columns: list[str], thresholds: dict[str, float],
                      n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                      min_group: int = MIN_GROUP, min_per_class: int = MIN_PER_CLASS
                      ) -> dict[str, Any]:
    """:func:`subgroup_metrics` for each column, each test kind Holm-adjusted over all
    columns and models (``p_adjusted``, ``family`` beside ``p``)."""
    out = {c: subgroup_metrics(preds, c, thresholds, n_boot, seed, alpha, min_group,
                               min_per_class) for c in columns}
    for kind in ("auc", "accuracy"):
        adjust_in_place([m["heterogeneity"][kind] for r in out.values()
                         for m in r["models"].values()],
                        f"subgroup heterogeneity ({kind}) over {len(columns)} column(s) x models")
    return out


# ------------------------------------------------ attention and probe summaries by group

def image_levels(table: pd.DataFrame, column: str) -> tuple[pd.Series, str]:
    """``(group label per image_id, how)``: :func:`bin_column` on one value per image."""
    if column not in table.columns:
        raise ValueError(f"no column {column!r} in the table")
    per = table.drop_duplicates("image_id").set_index("image_id")[column]
    labels, how = bin_column(per, column)
    return pd.Series(labels.to_numpy(), index=per.index, name=column), how


def kruskal_across(samples: list[np.ndarray]) -> dict[str, Any]:
    """Kruskal-Wallis H test across groups (scipy): ``{h, df, p, reason}``; NaN with a
    reason below 2 groups with values or when every value is the same."""
    from scipy import stats as st

    vals = [np.asarray(v, dtype=np.float64) for v in samples]
    vals = [v[np.isfinite(v)] for v in vals]
    vals = [v for v in vals if v.size]
    if len(vals) < 2:
        return _untestable("h", int(max(len(vals) - 1, 0)), FEWER)
    if np.ptp(np.concatenate(vals)) == 0:
        return _untestable("h", len(vals) - 1, "every value is the same")
    h, p = st.kruskal(*vals)
    return {"h": float(h), "df": len(vals) - 1, "p": float(p), "reason": ""}


def subgroup_summaries(table: pd.DataFrame, column: str, metrics, keys,
                       n_boot: int = 1000, seed: int = 0, min_group: int = MIN_GROUP,
                       cluster_col: str | None = None) -> dict[str, Any]:
    """Per-group means with CIs of per-image ``metrics`` for one grouping ``column``.

    ``table``: one row per image and entry (the ``keys`` columns). Returns ``{"column",
    "binning", "min_group", "entries": [{key: value, "groups": [...], "heterogeneity":
    {metric: ...}}]}``; groups under ``min_group`` images are too few and left out of the test.
    """
    keys, metrics = list(keys), list(metrics)
    levels, binning = image_levels(table, column)
    d = table.assign(_level=table["image_id"].map(levels).to_numpy())
    out: dict[str, Any] = {"column": column, "binning": binning, "min_group": int(min_group),
                           "entries": []}
    for key, g in d.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        stats = lk.summarise(g, metrics, by=["_level"], n_boot=n_boot, seed=seed,
                             cluster_col=cluster_col if cluster_col in g.columns else None)
        rows, values = [], {m: [] for m in metrics}
        for level, gl in g.groupby("_level", sort=True):
            n = int(gl["image_id"].nunique())
            row: dict[str, Any] = {"group": str(level), "n": n}
            if n < min_group:
                row.update(estimable=False, note=TOO_FEW)
                rows.append(row)
                continue
            row.update(estimable=True, note="")
            for r in stats[stats["_level"] == level].to_dict(orient="records"):
                row[r["metric"]] = {"value": r["mean"], "lo": r["ci_low"], "hi": r["ci_high"],
                                    "n": int(r["n"]), "n_nan": int(r["n_nan"]),
                                    "ci_method": r["ci_method"]}
            for m in metrics:
                values[m].append(pd.to_numeric(gl[m], errors="coerce").to_numpy(np.float64))
            rows.append(row)
        het = {m: {**kruskal_across(values[m]), "test": "Kruskal-Wallis across groups"}
               for m in metrics}
        out["entries"].append({**{k: (None if pd.isna(v) else v) for k, v in zip(keys, key)},
                               "groups": rows, "heterogeneity": het})
    return out


def subgroup_summary_analyses(table: pd.DataFrame, columns, metrics, keys,
                              n_boot: int = 1000, seed: int = 0,
                              min_group: int = MIN_GROUP, cluster_col: str | None = None,
                              what: str = "entries") -> dict[str, Any]:
    """:func:`subgroup_summaries` per column, each metric's tests Holm-adjusted over all
    columns and entries (``what`` names the entries)."""
    columns = list(columns)
    out = {c: subgroup_summaries(table, c, metrics, keys, n_boot, seed, min_group,
                                 cluster_col) for c in columns}
    for m in metrics:
        adjust_in_place([e["heterogeneity"][m] for r in out.values() for e in r["entries"]],
                        f"subgroup heterogeneity ({m}) over {len(columns)} column(s) x {what}")
    return out


def _row(g: dict[str, Any], lead: list[str], metrics, digits: int) -> list[str]:
    """A printed group row: ``lead``, then the note or each metric's CI."""
    if not g["estimable"]:
        return [*lead, g["note"]] + [""] * (len(metrics) - 1)
    return [*lead, *(fmt_ci_entry(g.get(m), digits, collapse=False) for m in metrics)]


def subgroup_table(analysis: dict[str, Any], model: str, digits: int = 2) -> list[list[str]]:
    """Rows for a printed table: header, then one row per group (``n/a`` where undefined)."""
    return [["group", "n", "malignant", *(metric_label(k, short=True) for k in SUBGROUP_METRICS)],
            *(_row(g, [g["group"], str(g["n"]), str(g["n_malignant"])], SUBGROUP_METRICS, digits)
              for g in analysis["models"][model]["groups"])]


def summary_table(analysis: dict[str, Any], entry: dict[str, Any], metrics,
                  titles=None, digits: int = 3) -> list[list[str]]:
    """Rows for a printed table of one :func:`subgroup_summaries` entry."""
    return [["group", "n", *(titles or metrics)],
            *(_row(g, [g["group"], str(g["n"])], metrics, digits) for g in entry["groups"])]
