"""The evaluate stage: the run's models scored on the images a run audits.

The run's own test split goes into the run folder (each model card gets its test
metrics); another data set (``--data``, :func:`_external`) into ``RUN/external/<name>/``
with the same files, its duplicates of the run's own images flagged."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermcam import plots
from dermcam import run as runmod
from dermcam.audit_set import (
    AuditSet,
    annotate_predictions,
    by_columns,
    by_names,
    check_by,
    cluster_name,
)
from dermcam.calibration import apply_temperature, bias_of, calibration_summary, temperature_of
from dermcam.checkpoints import update_model_card
from dermcam.config import EvaluateConfig
from dermcam.data import load_dataset
from dermcam.data.artifact_labels import PREFIX, artifact_columns, read_artifact_labels
from dermcam.data.cache import warm_cache
from dermcam.data.cached_split import CachedSplit
from dermcam.device import inference_batch_size, resolve_device
from dermcam.duplicates import NEAR_DISTANCE, find_duplicates, phash, sha256_file
from dermcam.errors import DermcamError
from dermcam.evaluation import evaluate_predictions, metrics_table
from dermcam.inference import predict_logit_diff
from dermcam.io import write_csv, write_json
from dermcam.stages.external import SIDE_BY_SIDE
from dermcam.subgroups import MIN_GROUP, subgroup_analyses


def run_evaluate(run_dir: runmod.Run | str | Path, config: EvaluateConfig | None = None,
                 audit: AuditSet | None = None, progress=None) -> dict[str, Any]:
    """Predict the audited images with every model and write the metrics.

    Refused in one line before the stage starts when anything does not fit (training, device,
    ``by``, artifact labels, one class); a later failure is recorded. The run's own split's
    artifact labels are recorded in the manifest once every check has passed."""
    cfg = config or EvaluateConfig()
    device = str(resolve_device(cfg.device))  # an unavailable device: refused here, once
    run = runmod.Run.of(run_dir, require="train")
    audit = audit or AuditSet.open(run)
    seed = run.seed if cfg.seed is None else cfg.seed
    by = by_columns(cfg.by)
    if audit.labels is not None:  # the metrics are also split by each artifact's presence
        by = tuple(dict.fromkeys([*by, *artifact_columns(read_artifact_labels(audit.labels))]))
    if audit.external:
        return _external(run, audit, cfg, by, seed, device, progress)
    audit = audit.at("evaluate", warm=True, progress=progress)
    ds, labels = audit.ds, audit.split.labels
    if len(np.unique(labels)) < 2:  # refused before the stage starts
        have, lack = ("malignant", "benign") if labels[0] else ("benign", "malignant")
        raise DermcamError(f"the test split holds only {have} images ({len(audit.samples)}), "
                           f"no {lack}: ROC AUC, average precision, sensitivity and "
                           f"specificity are undefined; add {lack} test images", ds.root)
    if by:
        check_by(ds, by)
    if audit.labels is not None:  # every check passed: now the run keeps the labels
        runmod.record_in_run(run.dir, audit.labels, ds=ds)
        run.refresh()
    # a failure from here on is recorded, so 'report' says why rather than using old files
    with run.stage(audit.stage) as record:
        result = _evaluate(run, audit, cfg.n_boot, seed, by, cfg.min_group, device=device,
                           labels=labels_info(audit.labels, ds))
        record.update(n_test=len(audit.samples), n_boot=cfg.n_boot)
    return result


def _external(run: runmod.Run, audit: AuditSet, cfg: EvaluateConfig, by, seed: int,
              device: str, progress) -> dict[str, Any]:
    """Score the run's models on another data set into ``RUN/external/<name>/`` (its artifact
    labels label that set only); everything is checked before the stage is recorded."""
    ds, samples, name = audit.ds, audit.samples, audit.name
    check_by(ds, by)
    labels = {s.label for s in samples}
    if len(labels) < 2:
        raise DermcamError(f"the external set holds only {'malignant' if 1 in labels else 'benign'}"
                           " images: ROC AUC, sensitivity and specificity are undefined", ds.root)
    audit = audit.at("evaluate")
    joined = labels_info(audit.labels, ds)
    with run.stage(audit.stage, data=str(Path(ds.root).resolve()),
                   artifacts=joined["file"] if joined else None) as record:
        if audit.cache.enabled:
            warm_cache(samples, audit.size, audit.cache, progress=progress)
        own = load_dataset(run.data_root)
        own_split = CachedSplit(own.samples, run.image_size, run.cache)
        dups = find_duplicates(_hashes(samples, audit.split), _hashes(own.samples, own_split))
        n_all = len(samples)
        if cfg.exclude_duplicates and dups:
            samples = [s for s in samples if s.image_id not in dups]
            if len({s.label for s in samples}) < 2:
                raise DermcamError("without its duplicates the external set holds one class",
                                   ds.root)
            audit = replace(audit, samples=samples)
        about = _external_block(run, audit, dups, n_all, cfg.exclude_duplicates)
        result, _ = _score(run, audit, cfg.n_boot, seed, by, cfg.min_group, device, joined,
                           dups, about)
        plot_results(result, audit.out.figures, run)
        dup = result["external"]["duplicates"]
        record.update(data=str(Path(ds.root).resolve()), folder=f"external/{name}",
                      n_test=int(result["test"]["n"]), n_boot=cfg.n_boot,
                      n_exact_duplicates=dup["n_exact"], n_near_duplicates=dup["n_near"],
                      duplicates_excluded=dup["excluded"])
    return result


def _hashes(samples, split) -> list[tuple[str, str, int]]:
    return [(s.image_id, sha256_file(s.image_path),
             phash(split.cache.get(s, split.size)["image"])) for s in samples]


def _external_block(run: runmod.Run, audit: AuditSet, dups: dict, n_all: int,
                    excluded: bool) -> dict[str, Any]:
    """An external set's ``metrics.json["external"]``: which images, how, and duplicates."""
    exact = sorted(i for i, d in dups.items() if d["kind"] == "exact")
    near = sorted(i for i, d in dups.items() if d["kind"] == "near")
    return {
        **audit.about(), "images": audit.which, "n_available": n_all,
        "thresholds": "each model's threshold chosen on the training data's validation split",
        "trained_on": run.data.get("name"),
        "duplicates": {
            "against": f"the run's data set ({run.data.get('name')}), "
                       "training and test images",
            "method": f"exact: SHA-256 of the file; near: 64-bit DCT pHash of the image at "
                      f"{run.image_size} px, Hamming distance <= "
                      f"{NEAR_DISTANCE}",
            "n_exact": len(exact), "n_near": len(near), "exact": exact, "near": near,
            "matches": dups, "excluded": bool(excluded and dups)}}


def _score(run: runmod.Run, audit: AuditSet, n_boot: int, seed: int, by, min_group, device: str,
           labels: dict[str, Any] | None, dups: dict | None = None,
           external: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    """Predict ``audit``'s images with every model; write predictions.csv, metrics.json and
    metrics.csv into ``audit.out``; returns the metrics and each model's threshold. The
    metrics: CIs, subgroups of ``by``, calibration before and after, display names."""
    out = audit.out
    preds, thresholds = predict_models(run, audit.samples, audit.split, device=device)
    preds = annotate_predictions(preds, audit.ds, audit.samples, audit.split, by)
    if dups is not None:
        preds["duplicate"] = preds["image_id"].map(lambda i: dups.get(i, {}).get("kind", ""))
        preds["duplicate_of"] = preds["image_id"].map(
            lambda i: dups.get(i, {}).get("match", ""))
    write_csv(out.predictions, preds)
    result = evaluate_predictions(preds, thresholds, n_boot=n_boot, seed=seed,
                                  cluster_name=cluster_name(audit.ds))
    if by:
        result["subgroups"] = subgroup_analyses(
            preds, by_names(by), thresholds, n_boot=n_boot, seed=seed,
            min_group=MIN_GROUP if min_group is None else min_group)
    # ECE and Brier before and after calibration (Platt or temperature), with CIs
    result["calibration"] = calibration_summary(preds, n_boot=n_boot, seed=seed)
    result["display_names"] = {m: run.model_record(m)["display_name"] for m in thresholds}
    if labels:
        result["artifact_labels"] = labels
    if external is not None:
        result["external"] = external
    write_json(out.metrics, result)
    write_csv(out.metrics_csv, metrics_table(result))
    return result, thresholds


def predict_models(run: runmod.Run, samples, arrays, device: str = "cpu"
                   ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Long predictions (one row per model and sample) and each model's threshold."""
    dev = resolve_device(device)
    rows = []
    thresholds = {}
    for name in run.trained_models:
        model, info, payload = run.load_model(name)
        z = predict_logit_diff(model.to(dev), arrays.dataset(np.arange(len(arrays))),
                               batch_size=inference_batch_size(dev, None), device=dev)
        prob = apply_temperature(z, temperature_of(model), bias_of(model))  # every stage's
        thresholds[name] = thr = float(payload["threshold"])
        rows.append(pd.DataFrame({
            "image_id": [s.image_id for s in samples], "model": name, "label": arrays.labels,
            "prob_malignant": np.round(prob.astype(np.float64), 6),
            "pred": (prob >= thr).astype(int), "threshold": round(thr, 6),
            "prob_malignant_uncalibrated": np.round(apply_temperature(z, 1.0), 6),
            "temperature": round(temperature_of(model), 6),
            "calibration_bias": round(bias_of(model), 6)}))
    preds = pd.concat(rows, ignore_index=True)
    if any(s.group is not None for s in samples):  # lesion/patient: bootstrap by cluster
        preds["group"] = [s.group for s in samples] * len(rows)
    return preds, thresholds


def labels_info(artifacts: str | Path | None, ds=None) -> dict[str, Any] | None:
    """``metrics.json["artifact_labels"]``: the label file and, given the data set it was
    joined to, the join's counts (worded by :func:`dermcam.views.labels_line`)."""
    if artifacts is None:
        return None
    out: dict[str, Any] = {"file": str(Path(artifacts).resolve())}
    joined = getattr(ds, "artifact_labels", None)
    if joined is not None:
        have = {s.image_id for s in ds.samples}
        ids = read_artifact_labels(artifacts)["image_id"]
        out.update(artifacts=[c.removeprefix(PREFIX) for c in artifact_columns(joined)],
                   n_images=len(have), n_matched=int(joined["image_id"].isin(have).sum()),
                   n_unknown=int((~ids.isin(have)).sum()))
    return out


def plot_results(result: dict[str, Any], figs: Path, run: runmod.Run) -> None:
    """The evaluation figures of ``result`` into ``figs``."""
    plots.plot_model_comparison(result, figs / "model_comparison.png")
    plots.plot_roc_curves(result, figs / "roc_curves.png")
    plots.plot_pr_curves(result, figs / "pr_curves.png",
                         dataset=(result.get("external") or {}).get("data")
                         or run.data.get("name"))
    plots.plot_reliability(result, figs / "reliability.png")
    for name in result["models"]:
        plots.plot_confusion_matrix(np.array(result["models"][name]["confusion_matrix"]),
                                    ["benign", "malignant"],
                                    figs / f"{name}_confusion_matrix.png",
                                    title=run.model_record(name)["display_name"])


def _evaluate(run: runmod.Run, audit: AuditSet, n_boot: int, seed: int,
              by: tuple[str, ...] = (), min_group: int | None = None, device: str = "cpu",
              labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The run's own split scored, each model card given its test metrics, figures drawn."""
    result, thresholds = _score(run, audit, n_boot, seed, by, min_group, device, labels)
    # each checkpoint's model card gets its test metrics with CIs ('dermcam predict')
    evaluated_at = runmod.now()
    for name in thresholds:
        update_model_card(run.model_file(name), _card_test_fields(result, name, audit.ds,
                                                                  evaluated_at))
    plot_results(result, audit.out.figures, run)
    for name in thresholds:
        hist = run.history_file(name)
        if hist.exists():
            plots.plot_training_history(pd.read_csv(hist),
                                        audit.out.figures / f"{name}_history.png")
    return result


def _card_test_fields(result: dict[str, Any], name: str, ds, evaluated_at: str) -> dict[str, Any]:
    """Model-card entries for ``name``: test metrics with CIs, the test set, the CI method."""
    entry = result["models"][name]
    return {
        "test_metrics": {k: {f: entry[block][k][f] for f in ("value", "lo", "hi")}
                         for block, k, _ in SIDE_BY_SIDE},
        "test_set": {"name": str(ds.name), "n": int(result["test"]["n"]),
                     "n_malignant": int(result["test"]["n_malignant"])},
        "test_ci": (f"{1 - result['alpha']:.0%} percentile bootstrap, stratified, "
                    f"resampling {result['resampling']}, "
                    f"{result['n_boot']} resamples; sensitivity, specificity and balanced "
                    "accuracy at the validation-chosen threshold"),
        "evaluated_at": evaluated_at}
