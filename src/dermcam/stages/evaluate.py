"""Run-level stages that read and write the run folder: evaluate (and the demo's glue)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermcam import run as runmod
from dermcam.errors import DermcamError
from dermcam.io import write_csv, write_json

log = logging.getLogger(__name__)


def load_test_split(run: runmod.Run, limit: int | None = None, require_masks: bool = False,
                    progress=None, artifacts: str | Path | None = None):
    """``(dataset, samples, CachedSplit)``: the run's test split at the run's image size,
    streamed from the run's decode cache (warmed here).

    ``artifacts``: an artifact label file joined instead of the one the run records."""
    from dermcam.data import load_dataset
    from dermcam.data.cache import warm_cache
    from dermcam.data.cached_split import CachedSplit

    ds = run.dataset if artifacts is None else load_dataset(run.data_root, artifacts=artifacts)
    samples = ds.split("test")
    if require_masks:
        samples = [s for s in samples if s.mask_path is not None]
    if limit:
        samples = samples[:limit]
    if not samples:
        what = "test images with masks" if require_masks else "test images"
        raise DermcamError(f"the data set has no {what}", ds.root)
    if run.cache.enabled:
        warm_cache(samples, run.image_size, run.cache, progress=progress)
    return ds, samples, CachedSplit(samples, run.image_size, run.cache)


def run_evaluate(run_dir: runmod.Run | str | Path, n_boot: int = 1000, seed: int | None = None,
                 progress=None, data: str | Path | None = None, name: str | None = None,
                 by: tuple[str, ...] = (), min_group: int | None = None,
                 exclude_duplicates: bool = False, device: str = "cpu",
                 artifacts: str | Path | None = None) -> dict[str, Any]:
    """Predict the test split with every model's best checkpoint and write the metrics.

    ``device``: where the models run (:func:`dermcam.device.resolve_device`: auto, cpu,
    cuda, cuda:i), with a batch size that suits it.

    Refused before the stage starts (one line) when training is not complete, the device
    is unavailable, a ``by`` column or the artifact labels do not fit, or the test split
    holds one class; a failure once it has started is recorded as 'failed'.
    ``data``: score another data set instead, into ``RUN/external/<name>/``
    (:func:`dermcam.stages.external.run_external`). ``by``: metadata columns (or ``ita``) for
    per-subgroup metrics (:mod:`dermcam.subgroups`), groups under ``min_group`` images
    reported as too few to estimate. ``artifacts``: a per-image artifact label file
    (:mod:`dermcam.data.artifact_labels`) joined to the data scored; for the run's own
    test split it is recorded in the manifest (``data.artifacts``, for the later stages)
    once every check has passed, for ``data`` it labels that set only.
    """
    from dermcam.device import resolve_device

    device = str(resolve_device(device))  # an unavailable device: refused here, once
    if data is not None:
        from dermcam.stages.external import run_external

        return run_external(run_dir, data, name=name, n_boot=n_boot, seed=seed, by=by,
                            min_group=min_group, exclude_duplicates=exclude_duplicates,
                            progress=progress, device=device, artifacts=artifacts)
    run = runmod.Run.of(run_dir, require="train")
    run_dir = run.dir
    seed = run.seed if seed is None else seed
    ds, samples, arrays = load_test_split(run, progress=progress, artifacts=artifacts)
    if len(np.unique(arrays.labels)) < 2:  # refused before the stage starts
        have, lack = ("malignant", "benign") if arrays.labels[0] else ("benign", "malignant")
        raise DermcamError(f"the test split holds only {have} images ({len(samples)}), no "
                           f"{lack}: ROC AUC, average precision, sensitivity and specificity "
                           f"are undefined; add {lack} test images", ds.root)
    if by:
        from dermcam.stages.external import check_by

        check_by(ds, by)
    if artifacts is not None:  # every check passed: now the run keeps the labels
        from dermcam.run import record_in_run

        record_in_run(run.dir, artifacts, ds=ds)
        run.refresh()
    # a failure from here on is recorded, so 'report' says why rather than using old files
    with run.stage("evaluate") as record:
        result = _evaluate(run, ds, samples, arrays, n_boot, seed, by, min_group,
                           device=device, labels=labels_info(artifacts, ds))
        record.update(n_test=len(samples), n_boot=n_boot)
    return result


def predict_models(run: runmod.Run, samples, arrays, device: str = "cpu"
                   ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Long predictions (one row per model and sample) of every trained model, and each
    model's validation-chosen threshold."""
    from dermcam.calibration import apply_temperature, bias_of, temperature_of
    from dermcam.device import inference_batch_size, resolve_device
    from dermcam.inference import predict_logit_diff

    dev = resolve_device(device)
    rows = []
    thresholds = {}
    for name in run.trained_models:
        model, info, payload = run.load_model(name)
        z = predict_logit_diff(model.to(dev), arrays.dataset(np.arange(len(arrays))),
                               batch_size=inference_batch_size(dev, None), device=dev)
        prob = apply_temperature(z, temperature_of(model), bias_of(model))  # every stage's
        thr = float(payload["threshold"])
        thresholds[name] = thr
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
    """``metrics.json["artifact_labels"]``: the label file joined (``file``) and, given the
    data set ``ds`` it was joined to, the join's counts: ``artifacts`` (names),
    ``n_images`` (the data set's), ``n_matched`` (of those with a row), ``n_unknown`` (ids
    in the file that are not in the data set). Worded by :func:`dermcam.views.labels_line`."""
    if artifacts is None:
        return None
    out: dict[str, Any] = {"file": str(Path(artifacts).resolve())}
    joined = getattr(ds, "artifact_labels", None)
    if joined is not None:
        from dermcam.data.artifact_labels import PREFIX, artifact_columns, read_artifact_labels

        have = {s.image_id for s in ds.samples}
        ids = read_artifact_labels(artifacts)["image_id"]
        out.update(artifacts=[c.removeprefix(PREFIX) for c in artifact_columns(joined)],
                   n_images=len(have), n_matched=int(joined["image_id"].isin(have).sum()),
                   n_unknown=int((~ids.isin(have)).sum()))
    return out


def score_predictions(preds: pd.DataFrame, thresholds: dict[str, float], ds,
                      run: runmod.Run, n_boot: int, seed: int, by=(),
                      min_group: int | None = None) -> dict[str, Any]:
    """``metrics.json`` of a predictions table (:func:`predict_models`, annotated), the
    same for the run's test split and an external set: the metrics with CIs
    (:func:`dermcam.evaluation.evaluate_predictions`, by ``ds``'s clusters), per subgroup
    of ``by``, ECE and Brier before and after calibration (``calibration``:
    :func:`dermcam.calibration.calibration_summary`) and the models' display names."""
    from dermcam.calibration import calibration_summary
    from dermcam.evaluation import evaluate_predictions
    from dermcam.stages.explain import cluster_name
    from dermcam.stages.external import subgroups_for

    result = evaluate_predictions(preds, thresholds, n_boot=n_boot, seed=seed,
                                  cluster_name=cluster_name(ds))
    if by:
        result["subgroups"] = subgroups_for(preds, by, thresholds, n_boot, seed, min_group)
    # ECE and Brier before and after calibration (Platt or temperature), with CIs
    result["calibration"] = calibration_summary(preds, n_boot=n_boot, seed=seed)
    result["display_names"] = {m: run.model_record(m)["display_name"] for m in thresholds}
    return result


def plot_results(result: dict[str, Any], figs: Path, run: runmod.Run) -> None:
    """The evaluation figures of ``result`` into ``figs``: model comparison, ROC and PR
    curves, the reliability diagram (dashed: before calibration) and each model's
    confusion matrix."""
    from dermcam import plots

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


def _evaluate(run: runmod.Run, ds, samples, arrays, n_boot: int, seed: int,
              by: tuple[str, ...] = (), min_group: int | None = None, device: str = "cpu",
              labels: dict[str, str] | None = None) -> dict[str, Any]:
    from dermcam import plots
    from dermcam.evaluation import metrics_table
    from dermcam.stages.external import annotate_predictions

    out = run.outputs
    preds, thresholds = predict_models(run, samples, arrays, device=device)
    preds = annotate_predictions(preds, ds, samples, arrays, by)
    write_csv(out.predictions, preds)
    result = score_predictions(preds, thresholds, ds, run, n_boot, seed, by, min_group)
    if labels:
        result["artifact_labels"] = labels
    write_json(out.metrics, result)
    write_csv(out.metrics_csv, metrics_table(result))
    # each checkpoint's model card gets its test metrics with CIs ('dermcam predict')
    from dermcam.checkpoints import update_model_card

    evaluated_at = runmod.now()
    for name in thresholds:
        update_model_card(run.model_file(name), _card_test_fields(result, name, ds,
                                                                  evaluated_at))
    plot_results(result, out.figures, run)
    for name in thresholds:
        hist = run.history_file(name)
        if hist.exists():
            plots.plot_training_history(pd.read_csv(hist), out.figures / f"{name}_history.png")
    return result


_CARD_METRICS = (("threshold_free", ("roc_auc", "average_precision")),
                 ("at_threshold", ("sensitivity", "specificity", "balanced_accuracy")))


def _card_test_fields(result: dict[str, Any], name: str, ds, evaluated_at: str
                      ) -> dict[str, Any]:
    """Model-card entries for ``name`` from ``metrics.json`` (``result``): the test
    metrics with CIs, the test set and how the CIs were made."""
    entry = result["models"][name]
    return {
        "test_metrics": {k: {f: entry[block][k][f] for f in ("value", "lo", "hi")}
                         for block, keys in _CARD_METRICS for k in keys},
        "test_set": {"name": str(ds.name), "n": int(result["test"]["n"]),
                     "n_malignant": int(result["test"]["n_malignant"])},
        "test_ci": (f"{1 - result['alpha']:.0%} percentile bootstrap, stratified, "
                    f"resampling {result['resampling']}, "
                    f"{result['n_boot']} resamples; sensitivity, specificity and balanced "
                    "accuracy at the validation-chosen threshold"),
        "evaluated_at": evaluated_at}
