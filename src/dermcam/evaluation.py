"""Test-set evaluation a reviewer would accept: metrics, bootstrap CIs, paired tests.

Labels: ``0`` = benign, ``1`` = malignant. ``prob`` is the predicted probability
of *malignant*. A threshold ``t`` means "malignant if ``prob >= t``" (the
scikit-learn ``roc_curve`` convention), everywhere in dermcam.

Why these metrics. With 75 malignant images out of 379, predicting "benign" for
everything already scores accuracy 304/379 = 0.802, so accuracy differences of a
few thousandths between models say nothing. :func:`evaluate_predictions` reports
every figure with a stratified bootstrap CI, adds the threshold-free metrics that
the ISIC 2016 challenge ranked by (average precision) and ROC AUC, the all-benign
baseline with its own CIs, and paired model comparisons (DeLong for AUC, paired
bootstrap for AUC/AP/accuracy, McNemar for accuracy) with Holm correction across
pairs.

Speed. Every bootstrap figure is computed from per-resample sample multiplicities
(``(B, N)`` count matrices, :func:`dermcam.stats.bootstrap_counts`): confusion
counts are matrix products and AUC/AP/ECE are cumulative sums over the sorted
scores, so all resamples are evaluated at once. The scikit-learn based
:func:`classification_metrics` is the reference those fast paths are tested
against, and provides the point estimates.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from dermcam.formatting import METRIC_LABELS, MINUS, fmt_ci, fmt_num, metric_label
from dermcam.stats import (
    ADJUST_METHODS,
    _as_labels,
    _as_scores,
    adjust_pvalues,
    bootstrap_counts,
    cluster_info,
    cluster_labels,
    delong_test,
    mcnemar,
    percentile_interval,
    stratified_bootstrap_indices,
    summarise_paired_diff,
)

__all__ = [
    "THRESHOLD_METRICS",
    "THRESHOLD_FREE_METRICS",
    "TABLE_METRICS",
    "HIGHER_IS_BETTER",
    "SCHEMA_VERSION",
    "display_name",
    "youden_threshold",
    "specificity_at_sensitivity",
    "expected_calibration_error",
    "reliability_curve",
    "classification_metrics",
    "evaluate_predictions",
    "metrics_table",
    "format_comparison",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

#: Metrics that depend on the decision threshold (computed from the confusion counts).
THRESHOLD_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "precision_benign",
    "recall_benign",
    "f1_benign",
    "precision_malignant",
    "recall_malignant",
    "f1_malignant",
    "sensitivity",
    "specificity",
)
#: Metrics computed from the scores alone.
THRESHOLD_FREE_METRICS: tuple[str, ...] = (
    "roc_auc",
    "average_precision",
    "spec_at_95_sens",
    "ece",
)
#: Score direction of every reported metric (from :data:`dermcam.formatting.METRIC_LABELS`).
HIGHER_IS_BETTER: dict[str, bool] = {
    key: METRIC_LABELS[key].higher_is_better
    for key in THRESHOLD_METRICS + THRESHOLD_FREE_METRICS
}

_SENS_TARGET = 0.95  # the "95" in spec_at_95_sens
_TIE_TOL = 1e-12
_CHUNK_ELEMENTS = 4_000_000  # cap on B_chunk * N floats held per count matrix

_BASELINE_NAME = "All benign (baseline)"

_REQUIRED_COLUMNS = ("image_id", "model", "label", "prob_malignant")


def display_name(model: str) -> str:
    """Human-readable model name (``efficientnet_b0`` -> ``EfficientNet-B0``).

    Looked up in the model registry (:func:`dermcam.models.display_name`, which
    imports no torch at module level); unknown names are returned unchanged.
    """
    if model == "all_benign":
        return _BASELINE_NAME
    try:
        from dermcam.models import display_name as registry_name
    except ImportError:  # pragma: no cover - registry missing in a stripped install
        return model
    return registry_name(model)


# --------------------------------------------------------------------------- checks


def _labels_probs(y_true: Any, prob: Any, unit: bool = True) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(y_true)
    p = _as_scores(prob, y.size, "prob")
    if unit and ((p < 0).any() or (p > 1).any()):
        raise ValueError(f"prob must lie in [0, 1], got range [{p.min():.4g}, {p.max():.4g}]")
    return y, p


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < int(y.sum()) < y.size


# --------------------------------------------------------------------------- thresholds


def youden_threshold(y_true: Any, prob: Any) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1.

    Meant for the *validation* set; apply the result unchanged to the test set.
    ``y_true``, ``prob``: ``(N,)``. Candidates are the observed scores (from
    ``sklearn.metrics.roc_curve`` with ``drop_intermediate=False``; its ``inf``
    sentinel is excluded) and the rule is ``malignant if prob >= threshold``.
    Ties in J (within 1e-12) are broken by the smallest ``|threshold - 0.5|``,
    i.e. the candidate closest to the default operating point. Raises
    ``ValueError`` when ``y_true`` holds only one class (J is undefined).
    """
    y, p = _labels_probs(y_true, prob, unit=False)
    if not _both_classes(y):
        raise ValueError(
            "youden_threshold needs both classes in y_true "
            f"(got {int(y.sum())} malignant of {y.size})"
        )
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    j = np.where(np.isfinite(thr), tpr - fpr, -np.inf)
    cand = np.flatnonzero(j >= j.max() - _TIE_TOL)
    return float(thr[cand[np.argmin(np.abs(thr[cand] - 0.5))]])


def specificity_at_sensitivity(y_true: Any, prob: Any, target: float = _SENS_TARGET) -> float:
    """Best specificity among thresholds whose sensitivity is at least ``target``.

    ``y_true``, ``prob``: ``(N,)``. Evaluated at the observed thresholds (no
    interpolation between ROC points). NaN with only one class present.
    """
    y, p = _labels_probs(y_true, prob, unit=False)
    if not 0 <= target <= 1:
        raise ValueError(f"target must be in [0, 1], got {target}")
    if not _both_classes(y):
        return math.nan
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    return float(1.0 - fpr[tpr >= target - _TIE_TOL].min())


# --------------------------------------------------------------------------- calibration


def _bin_ids(prob: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability, as ``sklearn.calibration.calibration_curve``:
    bin 0 is ``[0, 1/n]``, bin k is ``(k/n, (k+1)/n]``."""
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    return np.searchsorted(edges[1:-1], prob, side="left")


def expected_calibration_error(y_true: Any, prob: Any, n_bins: int = 10) -> float:
    """Expected calibration error of the malignant-class probability.

    ``ECE = sum_k (n_k / N) * |mean(y)_k - mean(prob)_k|`` over ``n_bins``
    equal-width bins of ``prob`` on [0, 1] (bin edges as in
    :func:`reliability_curve`); empty bins contribute nothing. Lower is better;
    0 = perfectly calibrated. ``y_true``, ``prob``: ``(N,)``, ``prob`` in [0, 1].
    Defined even with one class (it is a calibration, not a ranking, measure).
    """
    y, p = _labels_probs(y_true, prob)
    if y.size == 0:
        return math.nan
    bins = _bin_ids(p, n_bins)
    gap = np.bincount(bins, weights=y - p, minlength=int(n_bins))
    return float(np.abs(gap).sum() / y.size)


def reliability_curve(y_true: Any, prob: Any, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per-bin calibration summary for a reliability diagram.

    ``y_true``, ``prob``: ``(N,)``. Returns ``(n_bins,)`` arrays ``bin_lower``,
    ``bin_upper``, ``count``, ``mean_predicted`` and ``fraction_positive``
    (the last two NaN for empty bins). Non-empty bins match
    ``sklearn.calibration.calibration_curve(strategy="uniform")``.
    """
    y, p = _labels_probs(y_true, prob)
    n_bins = int(n_bins)
    bins = _bin_ids(p, n_bins)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_pred = np.bincount(bins, weights=p, minlength=n_bins) / count
        frac_pos = np.bincount(bins, weights=y.astype(float), minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "count": count,
        "mean_predicted": mean_pred,
        "fraction_positive": frac_pos,
    }


# --------------------------------------------------------------------------- point metrics


def classification_metrics(
    y_true: Any, prob: Any, threshold: float = 0.5, n_bins: int = 10
) -> dict[str, Any]:
    """All point metrics of one model on one test set (scikit-learn based).

    ``y_true``: ``(N,)`` 0/1; ``prob``: ``(N,)`` malignant probability in [0, 1];
    prediction is ``prob >= threshold``. Returns a dict with the threshold
    metrics of :data:`THRESHOLD_METRICS` (per-class precision/recall/F1 as in
    the reference study's table; sensitivity = malignant recall, specificity =
    benign recall), ``confusion_matrix`` ``[[tn, fp], [fn, tp]]``, ``roc_auc``,
    ``average_precision``, ``spec_at_95_sens``, ``ece``, ``n``, ``n_malignant``
    and ``threshold``. Undefined values (one class only, 0/0 such as precision
    with no predicted positives) are NaN, never an error and never a silent 0.
    """
    y, p = _labels_probs(y_true, prob)
    pred = (p >= threshold).astype(np.int64)
    both = _both_classes(y)
    prec, rec, f1, _ = skm.precision_recall_fscore_support(
        y, pred, labels=[0, 1], zero_division=np.nan
    )
    cm = skm.confusion_matrix(y, pred, labels=[0, 1])
    out: dict[str, Any] = {
        "accuracy": float(skm.accuracy_score(y, pred)) if y.size else math.nan,
        # sklearn's balanced accuracy silently averages over the classes present;
        # with one class it is undefined here.
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)) if both else math.nan,
        "precision_benign": float(prec[0]),
        "recall_benign": float(rec[0]),
        "f1_benign": float(f1[0]),
        "precision_malignant": float(prec[1]),
        "recall_malignant": float(rec[1]),
        "f1_malignant": float(f1[1]),
        "sensitivity": float(rec[1]),
        "specificity": float(rec[0]),
        "confusion_matrix": cm.astype(int).tolist(),
        "roc_auc": float(skm.roc_auc_score(y, p)) if both else math.nan,
        "average_precision": float(skm.average_precision_score(y, p)) if both else math.nan,
        "spec_at_95_sens": specificity_at_sensitivity(y, p, _SENS_TARGET),
        "ece": expected_calibration_error(y, p, n_bins),
        "n": int(y.size),
        "n_malignant": int(y.sum()),
        "threshold": float(threshold),
    }
    return out


# --------------------------------------------------------------------------- fast bootstrap paths


def _metrics_from_counts(
    tn: np.ndarray, fp: np.ndarray, fn: np.ndarray, tp: np.ndarray
) -> dict[str, np.ndarray]:
    """Threshold metrics from confusion counts, all ``(B,)``; 0/0 -> NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = tp / (tp + fn)
        spec = tn / (tn + fp)
        return {
            "accuracy": (tp + tn) / (tn + fp + fn + tp),
            "balanced_accuracy": (sens + spec) / 2,
            "precision_benign": tn / (tn + fn),
            "recall_benign": spec,
            "f1_benign": 2 * tn / (2 * tn + fn + fp),
            "precision_malignant": tp / (tp + fp),
            "recall_malignant": sens,
            "f1_malignant": 2 * tp / (2 * tp + fp + fn),
            "sensitivity": sens,
            "specificity": spec,
        }


def _batch_threshold_metrics(
    w: np.ndarray, y: np.ndarray, pred: np.ndarray
) -> dict[str, np.ndarray]:
    """``w``: ``(B, N)`` sample multiplicities; ``y``, ``pred``: ``(N,)`` 0/1.
    Returns each of :data:`THRESHOLD_METRICS` as a ``(B,)`` array."""
    pos, pp = y == 1, pred.astype(bool)
    tp = w @ (pos & pp).astype(np.float64)
    fn = w @ (pos & ~pp).astype(np.float64)
    fp = w @ (~pos & pp).astype(np.float64)
    tn = w @ (~pos & ~pp).astype(np.float64)
    return _metrics_from_counts(tn, fp, fn, tp)


def _batch_ranking_metrics(
    w: np.ndarray, y: np.ndarray, prob: np.ndarray, n_bins: int, target: float = _SENS_TARGET
) -> dict[str, np.ndarray]:
    """ROC AUC, AP, specificity at ``target`` sensitivity and ECE for every row
    of ``w`` (``(B, N)`` multiplicities). Matches scikit-learn on the resampled
    data: scores are grouped into distinct values (ties handled as sklearn does:
    1/2 for AUC, one PR point per distinct score for AP)."""
    order = np.argsort(-prob, kind="stable")  # descending scores
    s = prob[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    wo = w[:, order]
    yo = y[order].astype(np.float64)
    wp = np.add.reduceat(wo * yo, starts, axis=1)  # (B, U) positives per score
    wn = np.add.reduceat(wo * (1.0 - yo), starts, axis=1)  # (B, U) negatives per score
    n_pos = wp.sum(axis=1)
    n_neg = wn.sum(axis=1)
    tp = np.cumsum(wp, axis=1)  # predicted positive at threshold = this score
    fp = np.cumsum(wn, axis=1)
    defined = (n_pos > 0) & (n_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # AUC: each positive beats the negatives with strictly lower scores, ties 1/2.
        below = n_neg[:, None] - fp
        auc = (wp * (below + 0.5 * wn)).sum(axis=1) / (n_pos * n_neg)
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 0.0)
        ap = (wp * precision).sum(axis=1) / n_pos
        tpr = tp / n_pos[:, None]
        fpr = fp / n_neg[:, None]
    hit = tpr >= target - _TIE_TOL
    first = np.argmax(hit, axis=1)
    spec = 1.0 - fpr[np.arange(w.shape[0]), first]
    if target <= 0:
        spec = np.ones(w.shape[0])
    nan = np.full(w.shape[0], np.nan)
    # ECE: per-bin sums of (y - p), weighted by multiplicity.
    bins = _bin_ids(prob, n_bins)
    m = np.zeros((prob.size, int(n_bins)))
    m[np.arange(prob.size), bins] = y - prob
    with np.errstate(divide="ignore", invalid="ignore"):
        ece = np.abs(w @ m).sum(axis=1) / w.sum(axis=1)
    return {
        "roc_auc": np.where(defined, auc, nan),
        "average_precision": np.where(defined, ap, nan),
        "spec_at_95_sens": np.where(defined, spec, nan),
        "ece": ece,
    }


# --------------------------------------------------------------------------- evaluate


def _validate_predictions(
    predictions: pd.DataFrame,
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Returns ``(models, image_ids (N,), y (N,), probs (K, N))`` aligned on image_id."""
    if not isinstance(predictions, pd.DataFrame):
        raise ValueError(f"predictions must be a pandas DataFrame, got {type(predictions)}")
    missing = [c for c in _REQUIRED_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(
            f"predictions lack columns {missing}; "
            f"need {list(_REQUIRED_COLUMNS)}, have {list(predictions.columns)}"
        )
    df = predictions.loc[:, list(_REQUIRED_COLUMNS)]
    if df.empty:
        raise ValueError("predictions are empty")
    if df[["image_id", "model", "label", "prob_malignant"]].isna().any().any():
        raise ValueError("predictions contain missing values")
    dup = df.duplicated(["model", "image_id"])
    if dup.any():
        first = df.loc[dup, ["model", "image_id"]].iloc[0].tolist()
        raise ValueError(f"{int(dup.sum())} duplicated (model, image_id) rows, e.g. {first}")
    models = [str(m) for m in pd.unique(df["model"])]
    sets = {m: set(df.loc[df["model"] == m, "image_id"]) for m in models}
    ref = sets[models[0]]
    for m in models[1:]:
        if sets[m] != ref:
            only_ref, only_m = len(ref - sets[m]), len(sets[m] - ref)
            raise ValueError(
                f"models must be evaluated on the same images: {models[0]!r} has "
                f"{only_ref} image_ids that {m!r} lacks, {m!r} has {only_m} extra"
            )
    n_labels = df.groupby("image_id")["label"].nunique()
    if (n_labels > 1).any():
        bad = n_labels.index[n_labels > 1][:3].tolist()
        raise ValueError(f"image_ids with different labels across models: {bad}")
    wide = df.pivot(index="image_id", columns="model", values="prob_malignant")
    wide = wide.sort_index()
    labels = df.drop_duplicates("image_id").set_index("image_id")["label"].loc[wide.index]
    y = _as_labels(labels.to_numpy(), "label")
    probs = np.vstack([_labels_probs(y, wide[m].to_numpy(dtype=np.float64))[1] for m in models])
    return models, wide.index.to_numpy(), y, probs


def _image_groups(predictions: pd.DataFrame, image_ids: np.ndarray) -> np.ndarray | None:
    """The ``group`` column per image (aligned with ``image_ids``), or None without one."""
    if "group" not in predictions.columns:
        return None
    g = predictions.loc[:, ["image_id", "group"]]
    g = g.assign(group=g["group"].astype(object).where(g["group"].notna(), None))
    n_groups = g.groupby("image_id")["group"].nunique(dropna=False)
    if (n_groups > 1).any():
        bad = n_groups.index[n_groups > 1][:3].tolist()
        raise ValueError(f"image_ids with different groups across models: {bad}")
    per_image = g.drop_duplicates("image_id").set_index("image_id")["group"]
    return per_image.loc[image_ids].to_numpy(dtype=object)


def _ci(value: float, boot: np.ndarray, alpha: float, what: str) -> dict[str, float]:
    if not math.isfinite(value):
        return {"value": math.nan, "lo": math.nan, "hi": math.nan}
    lo, hi = percentile_interval(boot, alpha, what=what)
    return {"value": float(value), "lo": lo, "hi": hi}


def _jsonable(obj: Any) -> Any:
    """Plain-Python, JSON-ready copy: numpy scalars/arrays -> float/int/list, NaN/inf -> None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def _fmt_num(x: float) -> str:
    """A number in the library's sentences and terminal tables: 3 decimals, typographic
    minus, ``n/a`` when undefined."""
    return fmt_num(x, minus=MINUS)


@dataclass(frozen=True)
class _Inputs:
    """The checked inputs of :func:`evaluate_predictions`, aligned on image_id."""

    models: list[str]
    y: np.ndarray  # (N,) 0/1 labels
    probs: np.ndarray  # (K, N) malignant probabilities, one row per model
    clusters: tuple[np.ndarray, int] | None  # (image -> cluster index, n_clusters)
    thr: dict[str, float]
    names: dict[str, str]


def _prepare_inputs(
    predictions: pd.DataFrame,
    thresholds: Mapping[str, float],
    display_names: Mapping[str, str] | None,
) -> _Inputs:
    """Validate the predictions and thresholds; ``ValueError`` on anything unusable."""
    models, image_ids, y, probs = _validate_predictions(predictions)
    clusters = cluster_info(_image_groups(predictions, image_ids))
    if "all_benign" in models:
        raise ValueError("'all_benign' is reserved for the baseline; rename that model")
    missing = [m for m in models if m not in thresholds]
    if missing:
        raise ValueError(
            f"no threshold for models {missing}; choose them on validation "
            "(e.g. youden_threshold) or pass 0.5 explicitly"
        )
    thr = {m: float(thresholds[m]) for m in models}
    names = {m: str((display_names or {}).get(m) or display_name(m)) for m in models}
    for m, t in thr.items():
        if not math.isfinite(t):
            raise ValueError(f"threshold for {m!r} must be finite, got {t}")
    return _Inputs(models, y, probs, clusters, thr, names)


def _resample_indices(
    y: np.ndarray, clusters: tuple[np.ndarray, int] | None, n_boot: int, seed: int
) -> tuple[np.ndarray, int, np.ndarray | None]:
    """``(idx (B, n_units), n_units, expand)``: stratified resamples of the images, or of
    whole clusters (``expand`` maps each image to its cluster; None without clusters)."""
    if clusters is None:
        return stratified_bootstrap_indices(y, n_boot, seed), y.size, None
    expand, n_units = clusters
    return stratified_bootstrap_indices(cluster_labels(y, expand, n_units), n_boot, seed), \
        n_units, expand


def _resample_metrics(
    w: np.ndarray, y: np.ndarray, p: np.ndarray, thr: float, at_half: bool, n_bins: int
) -> dict[str, np.ndarray]:
    """Every bootstrap metric of one subject on the resamples ``w`` (``(B, N)``):
    ``thr:<metric>`` at its threshold, ``half:<metric>`` at 0.5 (with ``at_half``) and
    the threshold-free metrics under their own keys, each ``(B,)``."""
    parts = {f"thr:{key}": v for key, v in _batch_threshold_metrics(w, y, p >= thr).items()}
    if at_half:
        parts.update(
            {f"half:{key}": v for key, v in _batch_threshold_metrics(w, y, p >= 0.5).items()}
        )
    parts.update(_batch_ranking_metrics(w, y, p, n_bins))
    return parts


def _bootstrap_distributions(
    data: _Inputs, baseline_prob: np.ndarray, n_boot: int, seed: int, n_bins: int
) -> dict[str, dict[str, np.ndarray]]:
    """``{subject: {key: (B,)}}`` for every model and ``all_benign``, all on the same
    resamples, computed in chunks of resamples to bound memory."""
    y, n = data.y, data.y.size
    idx, n_units, expand = _resample_indices(y, data.clusters, n_boot, seed)
    subjects = {**{m: data.probs[i] for i, m in enumerate(data.models)},
                "all_benign": baseline_prob}
    sub_thr = {**data.thr, "all_benign": 0.5}
    boot: dict[str, dict[str, list[np.ndarray]]] = {s: {} for s in subjects}
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, idx.shape[0], chunk):
        w = bootstrap_counts(idx[start : start + chunk], n_units)
        if expand is not None:
            w = w[:, expand]
        for s, p in subjects.items():
            parts = _resample_metrics(w, y, p, sub_thr[s], s != "all_benign", n_bins)
            for key, v in parts.items():
                boot[s].setdefault(key, []).append(v)
    return {s: {key: np.concatenate(v) for key, v in d.items()} for s, d in boot.items()}


def _ci_block(
    point: Mapping[str, Any], boot: Mapping[str, np.ndarray], keys: tuple[str, ...],
    prefix: str, alpha: float, what: str,
) -> dict[str, dict[str, float]]:
    """``{metric: {"value", "lo", "hi"}}`` for ``keys``; the bootstrap of ``metric`` is
    ``boot[prefix + metric]``, ``what`` (plus the metric) names it in warnings."""
    return {key: _ci(point[key], boot[f"{prefix}{key}"], alpha, f"{what} {key}")
            for key in keys}


def _curves(y: np.ndarray, p: np.ndarray) -> dict[str, dict[str, Any]]:
    """ROC and precision-recall curves of one model (empty with one class only)."""
    both = _both_classes(y)
    fpr, tpr, _ = skm.roc_curve(y, p) if both else ([], [], None)
    prec, rec, _ = skm.precision_recall_curve(y, p) if both else ([], [], None)
    return {"roc_curve": {"fpr": fpr, "tpr": tpr}, "pr_curve": {"precision": prec, "recall": rec}}


def _model_entry(
    m: str, data: _Inputs, p: np.ndarray, b: Mapping[str, np.ndarray], alpha: float,
    n_bins: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(models[m] entry of the result, point metrics at m's threshold)`` for one model
    with scores ``p`` and bootstrap distributions ``b``."""
    y = data.y
    pt = classification_metrics(y, p, data.thr[m], n_bins)
    pt_half = classification_metrics(y, p, 0.5, n_bins)
    curves = _curves(y, p)
    entry = {
        "display_name": data.names[m],
        "threshold": data.thr[m],
        "at_threshold": _ci_block(pt, b, THRESHOLD_METRICS, "thr:", alpha, m),
        "at_0.5": {key: _ci(pt_half[key], b[f"half:{key}"], alpha, f"{m} {key} @0.5")
                   for key in THRESHOLD_METRICS},
        "threshold_free": _ci_block(pt, b, THRESHOLD_FREE_METRICS, "", alpha, m),
        "confusion_matrix": pt["confusion_matrix"],
        "confusion_matrix_at_0.5": pt_half["confusion_matrix"],
        "roc_curve": curves["roc_curve"],
        "pr_curve": curves["pr_curve"],
        "reliability": reliability_curve(y, p, n_bins),
    }
    return entry, pt


def _baseline_block(
    y: np.ndarray, baseline_prob: np.ndarray, bb: Mapping[str, np.ndarray], alpha: float,
    n_bins: int,
) -> dict[str, dict[str, float]]:
    """All metrics of the all-benign classifier (constant score 0 at threshold 0.5)."""
    pb = classification_metrics(y, baseline_prob, 0.5, n_bins)
    out = _ci_block(pb, bb, THRESHOLD_METRICS, "thr:", alpha, "all_benign")
    out.update(_ci_block(pb, bb, THRESHOLD_FREE_METRICS, "", alpha, "all_benign"))
    return out


def _paired_diff(
    metric: str, a: str, b: str, points: Mapping[str, Mapping[str, Any]],
    bootc: Mapping[str, Mapping[str, np.ndarray]], alpha: float, what: str,
    boot_key: str | None = None,
) -> dict[str, Any]:
    """Paired bootstrap of ``metric`` b - a on the shared resamples."""
    key = boot_key or metric
    return summarise_paired_diff(
        points[b][metric] - points[a][metric],
        bootc[b][key] - bootc[a][key],
        alpha,
        what=f"{what} {b} - {a}",
    )


def _pair_entry(
    a: str, b: str, data: _Inputs, points: Mapping[str, Mapping[str, Any]],
    bootc: Mapping[str, Mapping[str, np.ndarray]], alpha: float,
) -> dict[str, Any]:
    """DeLong, paired bootstraps (AUC, AP, accuracy) and McNemar for one model pair."""
    y, probs, thr = data.y, data.probs, data.thr
    ia, ib = data.models.index(a), data.models.index(b)
    dl = delong_test(y, probs[ia], probs[ib], alpha=alpha)
    auc_bs = _paired_diff("roc_auc", a, b, points, bootc, alpha, "AUC")
    ap_bs = _paired_diff("average_precision", a, b, points, bootc, alpha, "AP")
    acc = _paired_diff("accuracy", a, b, points, bootc, alpha, "accuracy", "thr:accuracy")
    correct_a = (probs[ia] >= thr[a]).astype(int) == y
    correct_b = (probs[ib] >= thr[b]).astype(int) == y
    acc["mcnemar"] = mcnemar(correct_a, correct_b)
    return {"a": a, "b": b, "auc": dl, "auc_bootstrap": auc_bs,
            "average_precision": ap_bs, "accuracy": acc}


#: One multiplicity family per kind of paired test: name -> (description, test dict).
_PAIR_FAMILIES: dict[str, tuple[str, Any]] = {
    "auc_delong": ("DeLong test of the AUC difference", lambda pw: pw["auc"]),
    "auc_bootstrap": ("paired bootstrap of the AUC difference", lambda pw: pw["auc_bootstrap"]),
    "average_precision": ("paired bootstrap of the AP difference",
                          lambda pw: pw["average_precision"]),
    "accuracy_bootstrap": ("paired bootstrap of the accuracy difference",
                           lambda pw: pw["accuracy"]),
    "accuracy_mcnemar": ("McNemar test of the accuracies", lambda pw: pw["accuracy"]["mcnemar"]),
}


def _adjust_families(pairwise: list[dict[str, Any]]) -> None:
    """Holm-adjust each family of :data:`_PAIR_FAMILIES` over the pairs, in place:
    every test dict gets ``p_adjusted`` and ``family``."""
    for family, (_, get) in _PAIR_FAMILIES.items():
        adj = adjust_pvalues([get(pw)["p"] for pw in pairwise], "holm")
        for pw, pa in zip(pairwise, adj, strict=True):
            get(pw).update(p_adjusted=float(pa), family=family)


def _pair_verdicts(
    pairwise: list[dict[str, Any]], data: _Inputs, cluster_name: str, alpha: float
) -> None:
    """Add each pair's primary AUC verdict (``auc_test``, ``p_holm``, ``significant``) in
    place: DeLong, or the paired cluster bootstrap with clusters."""
    clusters = data.clusters
    for pw in pairwise:
        dl = pw["auc"] if clusters is None else pw["auc_bootstrap"]
        pa = dl["p_adjusted"]
        pw["auc_test"] = "DeLong" if clusters is None else "paired cluster bootstrap"
        pw["p_holm"] = float(pa)
        pw["significant"] = bool(math.isfinite(pa) and pa < alpha)


def _pairwise(
    data: _Inputs, points: Mapping[str, Mapping[str, Any]],
    bootc: Mapping[str, Mapping[str, np.ndarray]], alpha: float, cluster_name: str,
) -> list[dict[str, Any]]:
    """Every model pair in order of first appearance, tested and adjusted."""
    pairwise = [_pair_entry(a, b, data, points, bootc, alpha)
                for a, b in combinations(data.models, 2)]
    _adjust_families(pairwise)
    _pair_verdicts(pairwise, data, cluster_name, alpha)
    return pairwise


def _resampling_fields(
    clusters: tuple[np.ndarray, int] | None, cluster_name: str
) -> dict[str, str]:
    """``ci_method`` and ``resampling``: images, or whole clusters."""
    if clusters is None:
        return {"ci_method": "percentile bootstrap, resampled within each class (stratified)",
                "resampling": "images"}
    return {
        "ci_method": f"percentile cluster bootstrap: whole {cluster_name} clusters resampled "
        "within each class (a cluster is malignant if any of its images is)",
        "resampling": f"cluster ({cluster_name}), {clusters[1]} clusters",
    }


def _multiplicity(pairwise: list[dict[str, Any]], clusters: Any) -> dict[str, Any]:
    """The ``multiplicity`` block: method, families with their sizes, primary AUC test."""
    return {
        "method": ADJUST_METHODS["holm"],
        "families": {
            f: {"test": desc, "over": "model pairs",
                "k": int(sum(math.isfinite(get(pw)["p"]) for pw in pairwise))}
            for f, (desc, get) in _PAIR_FAMILIES.items()
        },
        "primary_auc": "auc_delong" if clusters is None else "auc_bootstrap",
    }


def _assemble(
    data: _Inputs, settings: Mapping[str, Any], models: dict[str, Any],
    all_benign: dict[str, Any], pairwise: list[dict[str, Any]], cluster_name: str,
) -> dict[str, Any]:
    """The result dict of :func:`evaluate_predictions`, in its documented key order
    (before :func:`_jsonable`); ``settings``: ``n_boot``, ``seed``, ``alpha``, ``n_bins``."""
    n, n_mal = data.y.size, int(data.y.sum())
    prevalence = n_mal / n
    fields = _resampling_fields(data.clusters, cluster_name)
    return {
        "schema_version": SCHEMA_VERSION,
        "n_boot": int(settings["n_boot"]),
        "seed": settings["seed"],
        "alpha": float(settings["alpha"]),
        "n_bins": int(settings["n_bins"]),
        "ci_method": fields["ci_method"],
        "resampling": fields["resampling"],
        "multiplicity": _multiplicity(pairwise, data.clusters),
        "threshold_rule": "malignant if prob_malignant >= threshold",
        "pairwise_diff": "b - a",
        "test": {"n": n, "n_malignant": n_mal, "n_benign": n - n_mal, "prevalence": prevalence},
        "models": models,
        "baselines": {
            "all_benign": all_benign,
            "chance_roc_auc": 0.5,
            "chance_average_precision": prevalence,
        },
        "pairwise": pairwise,
    }


def evaluate_predictions(
    predictions: pd.DataFrame,
    thresholds: Mapping[str, float],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    n_bins: int = 10,
    display_names: Mapping[str, str] | None = None,
    cluster_name: str = "group",
) -> dict[str, Any]:
    """Evaluate and compare models on one test set, with CIs for every figure.

    ``predictions``: long DataFrame with columns ``image_id, model, label,
    prob_malignant`` (one row per model and image). Every model must cover
    exactly the same image_ids with the same labels (``ValueError`` otherwise).
    ``thresholds``: ``{model: threshold}`` chosen on *validation* (e.g. with
    :func:`youden_threshold`); required for every model. Metrics are reported at
    that threshold and at 0.5. ``display_names``: optional ``{model: label}``
    for tables, figures and sentences (default: the model registry's names).

    CIs: one set of ``n_boot`` stratified bootstrap resamples (seeded) is shared
    by all models and the baseline, so paired differences use the same
    resamples; percentile intervals at level ``1 - alpha``.

    Clusters: an optional ``group`` column (one lesion or patient per value, e.g.
    HAM10000's lesion_id; ``cluster_name`` names it in the output) makes every
    resample draw whole clusters (stratified by the cluster's class, see
    :func:`dermcam.stats.cluster_bootstrap_counts`), for every CI and every paired
    bootstrap test. DeLong and McNemar assume independent images, so with clusters
    they are still reported but the AUC verdict (``p_holm``, ``significant``) uses
    the paired cluster bootstrap instead. Without a ``group`` column, or when every
    group holds one image, nothing changes. ``resampling`` says which was used.

    Multiplicity: each kind of paired test forms one family over the model pairs
    (``multiplicity["families"]``: DeLong AUC, paired bootstrap AUC, AP and accuracy,
    McNemar) and is Holm-adjusted within it; every test dict keeps its raw ``p`` and
    gets ``p_adjusted`` and ``family`` beside it.

    Returns a JSON-ready dict (plain floats/ints/lists; NaN -> ``None``)::

        {"schema_version": 1, "n_boot", "seed", "alpha", "n_bins",
         "ci_method", "threshold_rule", "pairwise_diff": "b - a",
         "test": {"n", "n_malignant", "n_benign", "prevalence"},
         "models": {name: {"display_name", "threshold",
             "at_threshold": {metric: {"value", "lo", "hi"}},   # THRESHOLD_METRICS
             "at_0.5": {...same...},
             "threshold_free": {"roc_auc"|"average_precision"|"spec_at_95_sens"|"ece":
                                {"value", "lo", "hi"}},
             "confusion_matrix": [[tn, fp], [fn, tp]],          # at the threshold
             "confusion_matrix_at_0.5": [[tn, fp], [fn, tp]],
             "roc_curve": {"fpr", "tpr"}, "pr_curve": {"precision", "recall"},
             "reliability": {"bin_lower", "bin_upper", "count", "mean_predicted",
                             "fraction_positive"}}},
         "baselines": {"all_benign": {metric: {"value", "lo", "hi"}},  # all metrics
                       "chance_roc_auc": 0.5, "chance_average_precision": prevalence},
         "pairwise": [{"a", "b", "auc": delong_test(...),
                       "auc_bootstrap": {"diff", "lo", "hi", "p", "n_valid"},
                       "average_precision": {...same...},
                       "accuracy": {"diff", "lo", "hi", "p", "n_valid",
                                    "mcnemar": {"b", "c", "statistic", "p", "method"}},
                       "auc_test", "p_holm", "significant"}],
         "resampling", "multiplicity": {"method", "families", "primary_auc"}}

    Pairwise entries cover every model pair in order of first appearance; all
    differences are ``b - a``. ``significant`` is the primary AUC test (``auc_test``:
    DeLong, or the paired cluster bootstrap with clusters) after Holm correction
    over all pairs (``p_holm < alpha``). The all-benign baseline is a
    constant score 0 at threshold 0.5 (so its AUC is 0.5, its AP the prevalence).
    """
    t0 = time.perf_counter()
    data = _prepare_inputs(predictions, thresholds, display_names)
    baseline_prob = np.zeros(data.y.size)
    bootc = _bootstrap_distributions(data, baseline_prob, n_boot, seed, n_bins)
    t_boot = time.perf_counter() - t0

    out_models: dict[str, Any] = {}
    points: dict[str, dict[str, Any]] = {}
    for i, m in enumerate(data.models):
        out_models[m], points[m] = _model_entry(m, data, data.probs[i], bootc[m], alpha, n_bins)
    all_benign = _baseline_block(data.y, baseline_prob, bootc["all_benign"], alpha, n_bins)
    pairwise = _pairwise(data, points, bootc, alpha, cluster_name)
    settings = {"n_boot": n_boot, "seed": seed, "alpha": alpha, "n_bins": n_bins}
    result = _assemble(data, settings, out_models, all_benign, pairwise, cluster_name)
    logger.info(
        "evaluated %d models on %d images (%d malignant), %d resamples: "
        "bootstrap %.2fs, total %.2fs",
        len(data.models),
        data.y.size,
        int(data.y.sum()),
        n_boot,
        t_boot,
        time.perf_counter() - t0,
    )
    return _jsonable(result)


# --------------------------------------------------------------------------- tables


#: Column order of :func:`metrics_table`: the reference study's columns first.
TABLE_METRICS: tuple[str, ...] = (
    "accuracy",
    "f1_benign",
    "f1_malignant",
    "precision_benign",
    "recall_benign",
    "precision_malignant",
    "recall_malignant",
    "balanced_accuracy",
    "roc_auc",
    "average_precision",
    "sensitivity",
    "specificity",
    "spec_at_95_sens",
    "ece",
)


def _model_metric(entry: Mapping[str, Any], metric: str, at: str) -> Mapping[str, Any]:
    block = "threshold_free" if metric in THRESHOLD_FREE_METRICS else at
    return entry[block][metric]


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def metrics_table(result: Mapping[str, Any], at: str = "at_threshold") -> pd.DataFrame:
    """One row per model plus the all-benign baseline, every metric with its CI.

    ``result``: output of :func:`evaluate_predictions`; ``at``: ``"at_threshold"``
    (the validation-chosen threshold) or ``"at_0.5"``. Columns: ``model``,
    ``display_name``, ``threshold``, then for each of :data:`TABLE_METRICS`
    (study's columns first) ``metric``, ``metric_lo``, ``metric_hi``.
    Undefined values are NaN.
    """
    if at not in ("at_threshold", "at_0.5"):
        raise ValueError(f"at must be 'at_threshold' or 'at_0.5', got {at!r}")
    rows = []
    for m, entry in result["models"].items():
        row: dict[str, Any] = {
            "model": m,
            "display_name": entry.get("display_name", m),
            "threshold": entry["threshold"] if at == "at_threshold" else 0.5,
        }
        for metric in TABLE_METRICS:
            ci = _model_metric(entry, metric, at)
            row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = (
                _nan(ci["value"]),
                _nan(ci["lo"]),
                _nan(ci["hi"]),
            )
        rows.append(row)
    base = result["baselines"]["all_benign"]
    row = {"model": "all_benign", "display_name": _BASELINE_NAME, "threshold": math.nan}
    for metric in TABLE_METRICS:
        ci = base[metric]
        row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = (
            _nan(ci["value"]),
            _nan(ci["lo"]),
            _nan(ci["hi"]),
        )
    rows.append(row)
    columns = ["model", "display_name", "threshold"] + [
        c for metric in TABLE_METRICS for c in (metric, f"{metric}_lo", f"{metric}_hi")
    ]
    return pd.DataFrame(rows, columns=columns)


#: Metric columns of :func:`format_comparison` (short labels from the registry).
_COMPARISON_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "f1_malignant",
    "sensitivity",
    "specificity",
    "roc_auc",
    "average_precision",
    "ece",
)


def _cell(ci: Mapping[str, Any]) -> str:
    """``value (lo–hi)`` of a ``{"value", "lo", "hi"}`` dict for a terminal table."""
    return fmt_ci(ci["value"], ci["lo"], ci["hi"], template="{v} ({lo}\u2013{hi})", minus=MINUS)


def format_comparison(result: Mapping[str, Any], at: str = "at_threshold") -> list[list[str]]:
    """Rows of strings for a terminal table (e.g. ``rich.table.Table``).

    The first row is the header (``Model``, ``Threshold``, then metrics); each
    following row is a model, the last the all-benign baseline. Cells read
    ``value (lo–hi)``. Pairwise comparisons are in ``result["pairwise"]``
    (:func:`dermcam.views.pairwise_table`).
    """
    if at not in ("at_threshold", "at_0.5"):
        raise ValueError(f"at must be 'at_threshold' or 'at_0.5', got {at!r}")
    header = ["Model", "Threshold"] + [metric_label(k, short=True) for k in _COMPARISON_METRICS]
    rows = [header]
    for m, entry in result["models"].items():
        t = entry["threshold"] if at == "at_threshold" else 0.5
        rows.append(
            [entry.get("display_name", m), _fmt_num(t)]
            + [_cell(_model_metric(entry, key, at)) for key in _COMPARISON_METRICS]
        )
    base = result["baselines"]["all_benign"]
    rows.append([_BASELINE_NAME, "\u2014"] + [_cell(base[key]) for key in _COMPARISON_METRICS])
    return rows
