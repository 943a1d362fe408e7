"""Evaluate and compare models on one test set: :func:`evaluate_predictions`.

Every figure gets a stratified (or cluster) bootstrap CI from one shared set of resamples; model
pairs are compared with DeLong, paired bootstraps and McNemar, Holm-adjusted within each family.
The result's keys: see :func:`_assemble` and :func:`_model_entry` (docs/evaluation.md).
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

from dermcam.evaluation.metrics import (
    THRESHOLD_FREE_METRICS,
    THRESHOLD_METRICS,
    batch_ranking_metrics,
    batch_threshold_metrics,
    both_classes,
    classification_metrics,
)
from dermcam.models import display_name as registry_name
from dermcam.reliability import labels_probs, reliability_curve
from dermcam.stats import (
    ADJUST_METHODS,
    adjust_in_place,
    as_labels,
    bootstrap_counts,
    ci_entry,
    cluster_info,
    cluster_labels,
    delong_test,
    mcnemar,
    stratified_bootstrap_indices,
    summarise_paired_diff,
)

__all__ = ["SCHEMA_VERSION", "BASELINE_NAME", "display_name", "evaluate_predictions"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_CHUNK_ELEMENTS = 4_000_000  # cap on B_chunk * N floats held per count matrix

#: The all-benign baseline's name in tables and sentences.
BASELINE_NAME = "All benign (baseline)"

_REQUIRED_COLUMNS = ("image_id", "model", "label", "prob_malignant")


def display_name(model: str) -> str:
    """Human-readable model name from the model registry (``efficientnet_b0`` ->
    ``EfficientNet-B0``); unknown names unchanged."""
    return BASELINE_NAME if model == "all_benign" else registry_name(model)


# --------------------------------------------------------------------------- evaluate


def _validate_predictions(predictions: pd.DataFrame
                          ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Returns ``(models, image_ids (N,), y (N,), probs (K, N))`` aligned on image_id."""
    if not isinstance(predictions, pd.DataFrame):
        raise ValueError(f"predictions must be a pandas DataFrame, got {type(predictions)}")
    missing = [c for c in _REQUIRED_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack columns {missing}; need {list(_REQUIRED_COLUMNS)}, "
                         f"have {list(predictions.columns)}")
    df = predictions.loc[:, list(_REQUIRED_COLUMNS)]
    if df.empty:
        raise ValueError("predictions are empty")
    if df.isna().any().any():
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
            raise ValueError(f"models must be evaluated on the same images: {models[0]!r} has "
                             f"{only_ref} image_ids that {m!r} lacks, {m!r} has {only_m} extra")
    wide = df.pivot(index="image_id", columns="model", values="prob_malignant").sort_index()
    y = as_labels(_per_image(df, "label", wide.index, "labels").to_numpy(), "label")
    probs = np.vstack([labels_probs(y, wide[m].to_numpy(dtype=np.float64))[1] for m in models])
    return models, wide.index.to_numpy(), y, probs


def _per_image(df: pd.DataFrame, column: str, image_ids, what: str) -> pd.Series:
    """``column``'s one value per image, aligned with ``image_ids``; ValueError where models
    disagree."""
    n_values = df.groupby("image_id")[column].nunique(dropna=False)
    if (n_values > 1).any():
        bad = n_values.index[n_values > 1][:3].tolist()
        raise ValueError(f"image_ids with different {what} across models: {bad}")
    per_image = df.drop_duplicates("image_id").set_index("image_id")[column]
    return per_image.loc[image_ids]


def _ci(value: float, boot: np.ndarray, alpha: float, what: str) -> dict[str, float]:
    if not math.isfinite(value):
        return {"value": math.nan, "lo": math.nan, "hi": math.nan}
    return ci_entry(value, boot, alpha, what)


def _jsonable(obj: Any) -> Any:
    """Plain-Python, JSON-ready copy: numpy scalars/arrays -> float/int/list, NaN/inf -> None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


@dataclass(frozen=True)
class _Inputs:
    """The checked inputs of :func:`evaluate_predictions`, aligned on image_id."""
    models: list[str]
    y: np.ndarray  # (N,) 0/1 labels
    probs: np.ndarray  # (K, N) malignant probabilities, one row per model
    clusters: tuple[np.ndarray, int] | None  # (image -> cluster index, n_clusters)
    thr: dict[str, float]
    names: dict[str, str]


def _prepare_inputs(predictions: pd.DataFrame, thresholds: Mapping[str, float],
                    display_names: Mapping[str, str] | None) -> _Inputs:
    """Validate the predictions and thresholds; ``ValueError`` on anything unusable."""
    models, image_ids, y, probs = _validate_predictions(predictions)
    clusters = None
    if "group" in predictions.columns:
        g = predictions.loc[:, ["image_id", "group"]]
        g = g.assign(group=g["group"].astype(object).where(g["group"].notna(), None))
        clusters = cluster_info(_per_image(g, "group", image_ids, "groups").to_numpy(object))
    if "all_benign" in models:
        raise ValueError("'all_benign' is reserved for the baseline; rename that model")
    missing = [m for m in models if m not in thresholds]
    if missing:
        raise ValueError(f"no threshold for models {missing}; choose them on validation "
                         "(e.g. youden_threshold) or pass 0.5 explicitly")
    thr = {m: float(thresholds[m]) for m in models}
    names = {m: str((display_names or {}).get(m) or display_name(m)) for m in models}
    for m, t in thr.items():
        if not math.isfinite(t):
            raise ValueError(f"threshold for {m!r} must be finite, got {t}")
    return _Inputs(models, y, probs, clusters, thr, names)


def _bootstrap_distributions(data: _Inputs, baseline_prob: np.ndarray, n_boot: int, seed: int,
                             n_bins: int) -> dict[str, dict[str, np.ndarray]]:
    """``{subject: {key: (B,)}}`` for every model and ``all_benign`` on the same stratified
    resamples of the images or of whole clusters, in chunks of resamples to bound memory:
    ``thr:<metric>``, ``half:<metric>`` (models only) and the threshold-free metrics."""
    y, n = data.y, data.y.size
    expand, n_units = data.clusters or (None, n)
    idx = stratified_bootstrap_indices(y if expand is None else cluster_labels(y, expand, n_units),
                                       n_boot, seed)
    subjects = {**{m: data.probs[i] for i, m in enumerate(data.models)},
                "all_benign": baseline_prob}
    sub_thr = {**data.thr, "all_benign": 0.5}
    boot: dict[str, dict[str, list[np.ndarray]]] = {s: {} for s in subjects}
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, idx.shape[0], chunk):
        w = bootstrap_counts(idx[start : start + chunk], n_units)
        w = w if expand is None else w[:, expand]
        for s, p in subjects.items():
            parts = {f"thr:{k}": v
                     for k, v in batch_threshold_metrics(w, y, p >= sub_thr[s]).items()}
            if s != "all_benign":
                parts.update({f"half:{k}": v
                              for k, v in batch_threshold_metrics(w, y, p >= 0.5).items()})
            parts.update(batch_ranking_metrics(w, y, p, n_bins))
            for key, v in parts.items():
                boot[s].setdefault(key, []).append(v)
    return {s: {key: np.concatenate(v) for key, v in d.items()} for s, d in boot.items()}


def _ci_block(point: Mapping[str, Any], boot: Mapping[str, np.ndarray], keys: tuple[str, ...],
              prefix: str, alpha: float, what: str) -> dict[str, dict[str, float]]:
    """``{metric: {"value", "lo", "hi"}}`` for ``keys``, bootstraps under ``prefix + metric``."""
    return {key: _ci(point[key], boot[f"{prefix}{key}"], alpha, f"{what} {key}")
            for key in keys}


def _model_entry(m: str, data: _Inputs, p: np.ndarray, b: Mapping[str, np.ndarray], alpha: float,
                 n_bins: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(models[m] entry, point metrics at m's threshold)`` of one model."""
    y, both = data.y, both_classes(data.y)
    pt = classification_metrics(y, p, data.thr[m], n_bins)
    pt_half = classification_metrics(y, p, 0.5, n_bins)
    fpr, tpr, _ = skm.roc_curve(y, p) if both else ([], [], None)  # empty with one class
    prec, rec, _ = skm.precision_recall_curve(y, p) if both else ([], [], None)
    entry = {
        "display_name": data.names[m], "threshold": data.thr[m],
        "at_threshold": _ci_block(pt, b, THRESHOLD_METRICS, "thr:", alpha, m),
        "at_0.5": {key: _ci(pt_half[key], b[f"half:{key}"], alpha, f"{m} {key} @0.5")
                   for key in THRESHOLD_METRICS},
        "threshold_free": _ci_block(pt, b, THRESHOLD_FREE_METRICS, "", alpha, m),
        "confusion_matrix": pt["confusion_matrix"],
        "confusion_matrix_at_0.5": pt_half["confusion_matrix"],
        "roc_curve": {"fpr": fpr, "tpr": tpr}, "pr_curve": {"precision": prec, "recall": rec},
        "reliability": reliability_curve(y, p, n_bins),
        "prob_range": dict(zip(("p05", "p95"), np.percentile(p, [5, 95]).tolist())),
    }
    return entry, pt


def _paired_diff(metric: str, a: str, b: str, points: Mapping[str, Mapping[str, Any]],
                 bootc: Mapping[str, Mapping[str, np.ndarray]], alpha: float, what: str,
                 boot_key: str | None = None) -> dict[str, Any]:
    """Paired bootstrap of ``metric`` b - a on the shared resamples."""
    key = boot_key or metric
    return summarise_paired_diff(points[b][metric] - points[a][metric],
                                 bootc[b][key] - bootc[a][key], alpha, what=f"{what} {b} - {a}")


def _pair_entry(a: str, b: str, data: _Inputs, points: Mapping[str, Mapping[str, Any]],
                bootc: Mapping[str, Mapping[str, np.ndarray]], alpha: float) -> dict[str, Any]:
    """DeLong, paired bootstraps (AUC, AP, accuracy) and McNemar for one model pair."""
    y, probs, thr = data.y, data.probs, data.thr
    ia, ib = data.models.index(a), data.models.index(b)
    dl = delong_test(y, probs[ia], probs[ib], alpha=alpha)
    auc_bs = _paired_diff("roc_auc", a, b, points, bootc, alpha, "AUC")
    ap_bs = _paired_diff("average_precision", a, b, points, bootc, alpha, "AP")
    acc = _paired_diff("accuracy", a, b, points, bootc, alpha, "accuracy", "thr:accuracy")
    acc["mcnemar"] = mcnemar((probs[ia] >= thr[a]).astype(int) == y,
                             (probs[ib] >= thr[b]).astype(int) == y)
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


def _pairwise(data: _Inputs, points: Mapping[str, Mapping[str, Any]],
              bootc: Mapping[str, Mapping[str, np.ndarray]], alpha: float
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(every model pair in order of first appearance, tested, each family of
    :data:`_PAIR_FAMILIES` Holm-adjusted over the pairs; the ``multiplicity`` block)``. The
    primary AUC verdict is DeLong, or with clusters the paired cluster bootstrap."""
    pairwise = [_pair_entry(a, b, data, points, bootc, alpha)
                for a, b in combinations(data.models, 2)]
    families = {f: {"test": desc, "over": "model pairs",
                    "k": adjust_in_place([get(pw) for pw in pairwise], f, named=False)}
                for f, (desc, get) in _PAIR_FAMILIES.items()}
    clusters = data.clusters
    for pw in pairwise:
        pa = (pw["auc"] if clusters is None else pw["auc_bootstrap"])["p_adjusted"]
        pw["auc_test"] = "DeLong" if clusters is None else "paired cluster bootstrap"
        pw["p_holm"] = float(pa)
        pw["significant"] = bool(math.isfinite(pa) and pa < alpha)
    return pairwise, {"method": ADJUST_METHODS["holm"], "families": families,
                      "primary_auc": "auc_delong" if clusters is None else "auc_bootstrap"}


def _assemble(data: _Inputs, settings: Mapping[str, Any], models: dict[str, Any],
              all_benign: dict[str, Any], pairwise: list[dict[str, Any]], cluster_name: str,
              multiplicity: dict[str, Any]) -> dict[str, Any]:
    """The result dict of :func:`evaluate_predictions`, in its documented key order."""
    n, n_mal = data.y.size, int(data.y.sum())
    prevalence = n_mal / n
    resampling = ({"ci_method": "percentile bootstrap, resampled within each class "
                   "(stratified)", "resampling": "images"} if data.clusters is None else
                  {"ci_method": f"percentile cluster bootstrap: whole {cluster_name} clusters "
                   "resampled within each class (a cluster is malignant if any of its images "
                   "is)", "resampling": f"cluster ({cluster_name}), {data.clusters[1]} clusters"})
    return {
        "schema_version": SCHEMA_VERSION, "n_boot": int(settings["n_boot"]),
        "seed": settings["seed"], "alpha": float(settings["alpha"]),
        "n_bins": int(settings["n_bins"]), **resampling, "multiplicity": multiplicity,
        "threshold_rule": "malignant if prob_malignant >= threshold", "pairwise_diff": "b - a",
        "test": {"n": n, "n_malignant": n_mal, "n_benign": n - n_mal, "prevalence": prevalence},
        "models": models,
        "baselines": {"all_benign": all_benign, "chance_roc_auc": 0.5,
                      "chance_average_precision": prevalence},
        "pairwise": pairwise,
    }


def evaluate_predictions(predictions: pd.DataFrame, thresholds: Mapping[str, float],
                         n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, n_bins: int = 10,
                         display_names: Mapping[str, str] | None = None, cluster_name: str = "group"
                         ) -> dict[str, Any]:
    """Evaluate and compare models on one test set, with CIs for every figure.

    ``predictions``: ``image_id, model, label, prob_malignant`` (optionally ``group``: whole
    clusters resampled, AUC verdict by paired cluster bootstrap as DeLong assumes independent
    images); ``thresholds``: ``{model: threshold}`` chosen on validation.
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
    # the all-benign classifier: constant score 0 at threshold 0.5
    pb, bb = classification_metrics(data.y, baseline_prob, 0.5, n_bins), bootc["all_benign"]
    all_benign = {**_ci_block(pb, bb, THRESHOLD_METRICS, "thr:", alpha, "all_benign"),
                  **_ci_block(pb, bb, THRESHOLD_FREE_METRICS, "", alpha, "all_benign")}
    pairwise, multiplicity = _pairwise(data, points, bootc, alpha)
    settings = {"n_boot": n_boot, "seed": seed, "alpha": alpha, "n_bins": n_bins}
    result = _assemble(data, settings, out_models, all_benign, pairwise, cluster_name,
                       multiplicity)
    logger.info("evaluated %d models on %d images (%d malignant), %d resamples: "
                "bootstrap %.2fs, total %.2fs", len(data.models), data.y.size,
                int(data.y.sum()), n_boot, t_boot, time.perf_counter() - t0)
    return _jsonable(result)
