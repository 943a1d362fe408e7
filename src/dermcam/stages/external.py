"""External validation (``dermcam evaluate RUN --data OTHER``, also ``explain`` and
``probe``) and the per-image columns every evaluation records (skin tone, ``--by``
metadata).

A run's models score another data set of any supported layout, with the thresholds
chosen on the training data's validation split, into ``RUN/external/<name>/``
(``predictions.csv``, ``metrics.json``, ``metrics.csv``, ``figures/``), recorded in the
manifest as stage ``external:<name>``. ``metrics.json`` holds the internal evaluation's
blocks (:func:`dermcam.stages.evaluate.score_predictions`: CIs, subgroups, calibration before and
after); the models run on ``--device``; ``--artifact-labels FILE`` labels the external images
(``artifact_<name>`` subgroups) without touching the run's own manifest. Which images are
scored:

- ISIC 2016, ISIC 2017 and a generic ``labels.csv`` whose split column holds both
  splits: the layout's test split;
- PH2, HAM10000 (no official split), a generic folder without a split column or whose
  split column is all ``test``: every image.

Images that also occur in the run's own data (training and test) are flagged, by file
content (SHA-256) or as near-duplicates (:mod:`dermcam.duplicates`), and left out with
``exclude_duplicates``.

``explain --data`` and ``probe --data`` audit the same images (those with a lesion mask)
into the same folder (``attention.csv``, ``attention_summary.json``, ``probe.csv``,
``probe_summary.json``, their figures), with the run's thresholds and CAM choice, recorded
as stages ``external:<name>/explain`` and ``external:<name>/probe``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermcam import run as runmod
from dermcam.errors import DermcamError
from dermcam.formatting import metric_label
from dermcam.io import write_csv, write_json

log = logging.getLogger(__name__)

#: ``--by`` names served by the image itself rather than the metadata.
SKIN_COLUMNS = ("ita", "ita_category")
#: Layouts whose test split is official; the others are scored whole.
_OFFICIAL_SPLIT = ("isic2016", "isic2017")


# ------------------------------------------------------------------ per-image columns

def by_columns(by) -> tuple[str, ...]:
    """``"age,sex"`` or ``["age", "sex"]`` -> ``("age", "sex")`` (empty parts dropped)."""
    if not by:
        return ()
    parts = [by] if isinstance(by, str) else list(by)
    return tuple(dict.fromkeys(c.strip() for p in parts for c in str(p).split(",")
                               if c.strip()))


def available_columns(ds) -> list[str]:
    from dermcam.data.metadata import metadata_table

    meta = metadata_table(ds)
    cols = list(SKIN_COLUMNS) + (list(meta.columns) if meta is not None else [])
    if any(s.group is not None for s in ds.samples) and "group" not in cols:
        cols.append("group")
    return cols


def check_by(ds, by) -> None:
    """Refuse (one line) a ``--by`` column the data set does not carry."""
    cols = available_columns(ds)
    for c in by_columns(by):
        if c not in cols:
            raise DermcamError(f"--by {c}: no such column; {ds.name} offers "
                               f"{', '.join(cols)}", ds.root)


def annotate_predictions(preds: pd.DataFrame, ds, samples, split, by=()) -> pd.DataFrame:
    """``preds`` with ``ita``, ``ita_category``, ``ita_source`` and each ``by`` column.

    ITA (:mod:`dermcam.skin`) is estimated from each sample's cached image at the run's
    size (``split``: a :class:`~dermcam.data.cached_split.CachedSplit`), outside its lesion mask
    where it has one (``ita_source``: ``outside lesion mask``, ``whole image (no mask)``,
    or why it is undefined).
    """
    from dermcam.data.metadata import metadata_table
    from dermcam.skin import ita_category

    angle, source = _ita(samples, split.cache, split.size)
    out = preds.copy()
    out["ita"] = out["image_id"].map(angle)
    out["ita_category"] = out["ita"].map(ita_category)
    out["ita_source"] = out["image_id"].map(source)
    wanted = [c for c in by_columns(by) if c not in out.columns]
    if wanted:
        check_by(ds, wanted)
        meta = metadata_table(ds)
        for c in wanted:
            out[c] = out["image_id"].map(meta[c]) if meta is not None else np.nan
    return out


def _ita(samples, cache, size: int) -> tuple[dict[str, float], dict[str, str]]:
    """``({image_id: ITA in degrees or NaN}, {image_id: where it was measured})``."""
    from dermcam.skin import ita_with_reason

    angle, source = {}, {}
    for s in samples:
        item = cache.get(s, size)
        a, why = ita_with_reason(item["image"], item["mask"])
        angle[s.image_id] = round(a, 2) if np.isfinite(a) else np.nan
        source[s.image_id] = (f"undefined: {why}" if why else
                              "outside lesion mask" if item["mask"] is not None else
                              "whole image (no mask)")
    return angle, source


def by_names(by) -> list[str]:
    """The ``--by`` columns as analysed: ``ita_category`` is served by ``ita`` (binned into
    its categories), each name once."""
    return list(dict.fromkeys("ita" if c in SKIN_COLUMNS else c for c in by_columns(by)))


def image_columns(ds, samples, cache, size: int, by) -> pd.DataFrame:
    """One row per sample: ``image_id`` and each ``--by`` column (:func:`by_names`), for
    the attention and probe summaries; ``ita`` is estimated from the cached image at the
    run's ``size`` as for evaluate (``ita_source`` beside it)."""
    from dermcam.data.metadata import metadata_table

    check_by(ds, by)
    ids = [s.image_id for s in samples]
    out = pd.DataFrame({"image_id": ids})
    cols = by_names(by)
    if "ita" in cols:
        angle, source = _ita(samples, cache, size)
        out["ita"] = out["image_id"].map(angle)
        out["ita_source"] = out["image_id"].map(source)
    meta = metadata_table(ds)
    for c in cols:
        if c == "ita":
            continue
        if c == "group":
            out[c] = [s.group for s in samples]
        else:
            out[c] = out["image_id"].map(meta[c]) if meta is not None else np.nan
    return out


def subgroups_for(preds: pd.DataFrame, by, thresholds: dict[str, float], n_boot: int,
                  seed: int, min_group: int | None = None) -> dict[str, Any]:
    """``metrics.json["subgroups"]``: :func:`dermcam.subgroups.subgroup_analyses` over the
    ``by`` columns (``ita_category`` is served by ``ita``, binned into its categories)."""
    from dermcam.subgroups import MIN_GROUP, subgroup_analyses

    return subgroup_analyses(preds, by_names(by), thresholds, n_boot=n_boot, seed=seed,
                             min_group=MIN_GROUP if min_group is None else min_group)


# ------------------------------------------------------------------ external stage

def safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    if not name:
        raise DermcamError(f"--name {text!r} holds no usable characters (letters, digits, . _ -)")
    return name


def external_samples(ds) -> tuple[list, str]:
    """The samples scored from ``ds`` and a phrase saying which (see the module docstring)."""
    if ds.layout in _OFFICIAL_SPLIT and ds.split("test"):
        return ds.split("test"), "its official test split"
    if ds.layout == "generic":
        from dermcam.data.dataset import read_csv_rows
        from dermcam.data.generic import CSV_NAME

        header = [h.lower() for h in read_csv_rows(Path(ds.root) / CSV_NAME)[0]]
        if "split" in header and ds.split("train") and ds.split("test"):
            return ds.split("test"), "its test split (split column)"
    return list(ds.samples), "every image (no official split)"


def stage_key(name: str, stage: str | None = None) -> str:
    """The manifest key of a stage on external set ``name``: ``external:<name>`` for
    evaluate (``stage`` None), ``external:<name>/<stage>`` for ``explain`` or ``probe``
    (names never hold ``/``)."""
    return f"external:{name}" if stage is None else f"external:{name}/{stage}"


def load_external(data: str | Path, name: str | None = None,
                  artifacts: str | Path | None = None, what: str = "attention leakage"
                  ) -> tuple[Any, list, str, str]:
    """``(data set, its masked samples to audit, which images, folder name)`` for
    ``explain --data`` and ``probe --data``: the images :func:`external_samples` scores,
    those with a lesion mask; refused in one line when none has one. ``artifacts``: a
    per-image artifact label file joined to the external set."""
    from dermcam.data import load_dataset

    ds = load_dataset(data, artifacts=artifacts)
    name = safe_name(name or Path(data).resolve().name)
    samples, which = external_samples(ds)
    masked = [s for s in samples if s.mask_path is not None]
    if not masked:
        raise DermcamError(f"the external set has no lesion masks among the {len(samples)} "
                           f"images scored ({which}): {what} needs them", ds.root)
    return ds, masked, which, name


def _hashes(samples, split) -> list[tuple[str, str, int]]:
    from dermcam.duplicates import phash, sha256_file

    return [(s.image_id, sha256_file(s.image_path),
             phash(split.cache.get(s, split.size)["image"])) for s in samples]


def run_external(run_dir: runmod.Run | str | Path, data: str | Path, name: str | None = None,
                 n_boot: int = 1000, seed: int | None = None, by=(),
                 min_group: int | None = None, exclude_duplicates: bool = False,
                 progress=None, device: str = "cpu",
                 artifacts: str | Path | None = None) -> dict[str, Any]:
    """Score the run's models on ``data``; write ``RUN/external/<name>/``. Returns the
    metrics (``metrics.json``, the internal evaluation's blocks, calibration included:
    :func:`dermcam.stages.evaluate.score_predictions`), with ``external`` describing the set and
    its duplicates.

    ``device``: where the models run (:func:`dermcam.device.resolve_device`).
    ``artifacts``: a per-image artifact label file joined to ``data`` (as ``explain
    --data`` and ``probe --data`` do), so ``by`` may name its ``artifact_<name>``
    columns; the run's own manifest is not changed. Everything is checked (device,
    labels, ``by``, both classes) before the stage is recorded."""
    from dermcam.data import load_dataset
    from dermcam.data.cache import warm_cache
    from dermcam.data.cached_split import CachedSplit
    from dermcam.device import resolve_device

    run = runmod.Run.of(run_dir, require="train")
    run_dir = run.dir
    seed = run.seed if seed is None else seed
    device = str(resolve_device(device))
    ds = load_dataset(data, artifacts=artifacts)
    check_by(ds, by)
    name = safe_name(name or Path(data).resolve().name)
    samples, which = external_samples(ds)
    labels = {s.label for s in samples}
    if len(labels) < 2:
        raise DermcamError(f"the external set holds only {'malignant' if 1 in labels else 'benign'}"
                           " images: ROC AUC, sensitivity and specificity are undefined", ds.root)
    stage = stage_key(name)
    out = run.external(name)
    joined = None
    if artifacts is not None:
        from dermcam.stages.evaluate import labels_info

        joined = labels_info(artifacts, ds)
    with run.stage(stage, data=str(Path(data).resolve()),
                   artifacts=joined["file"] if joined else None) as record:
        size, cache = run.image_size, run.cache
        if cache.enabled:
            warm_cache(samples, size, cache, progress=progress)
        split = CachedSplit(samples, size, cache)
        own = load_dataset(run.data_root)
        own_split = CachedSplit(own.samples, size, cache)
        dups = _duplicates(samples, split, own.samples, own_split)
        n_all = len(samples)
        if exclude_duplicates and dups:
            samples = [s for s in samples if s.image_id not in dups]
            if len({s.label for s in samples}) < 2:
                raise DermcamError("without its duplicates the external set holds one class",
                                   ds.root)
            split = CachedSplit(samples, size, cache)
        result = _score(run, ds, samples, split, out, which, dups, n_all, exclude_duplicates,
                        n_boot, seed, by, min_group, device, joined)
        dup = result["external"]["duplicates"]
        record.update(data=str(Path(ds.root).resolve()), folder=f"external/{name}",
                      n_test=int(result["test"]["n"]), n_boot=n_boot,
                      n_exact_duplicates=dup["n_exact"], n_near_duplicates=dup["n_near"],
                      duplicates_excluded=dup["excluded"])
    return result


def _duplicates(samples, split, own_samples, own_split) -> dict[str, dict[str, Any]]:
    from dermcam.duplicates import find_duplicates

    return find_duplicates(_hashes(samples, split), _hashes(own_samples, own_split))


def _score(run: runmod.Run, ds, samples, split, out: runmod.Outputs, which: str,
           dups: dict, n_all: int, excluded: bool, n_boot: int, seed: int, by, min_group,
           device: str = "cpu", labels: dict[str, str] | None = None) -> dict[str, Any]:
    from dermcam.duplicates import NEAR_DISTANCE
    from dermcam.evaluation import metrics_table
    from dermcam.stages.evaluate import plot_results, predict_models, score_predictions

    preds, thresholds = predict_models(run, samples, split, device=device)
    preds = annotate_predictions(preds, ds, samples, split, by)
    preds["duplicate"] = preds["image_id"].map(lambda i: dups.get(i, {}).get("kind", ""))
    preds["duplicate_of"] = preds["image_id"].map(lambda i: dups.get(i, {}).get("match", ""))
    write_csv(out.predictions, preds)
    result = score_predictions(preds, thresholds, ds, run, n_boot, seed, by, min_group)
    if labels:
        result["artifact_labels"] = labels
    exact = sorted(i for i, d in dups.items() if d["kind"] == "exact")
    near = sorted(i for i, d in dups.items() if d["kind"] == "near")
    result["external"] = {
        "name": out.root.name, "data": ds.name, "root": str(Path(ds.root).resolve()),
        "layout": ds.layout, "images": which, "n_available": n_all,
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
    write_json(out.metrics, result)
    write_csv(out.metrics_csv, metrics_table(result))
    plot_results(result, out.figures, run)
    return result


def _as_run(run: runmod.Run | str | Path, manifest: dict[str, Any] | None) -> runmod.Run:
    """``run`` itself, or the run folder ``run`` opened (with ``manifest`` where given,
    else read from the folder)."""
    if isinstance(run, runmod.Run):
        return run
    return runmod.Run(run, manifest) if manifest else runmod.Run.open(run)


def external_sets(run: runmod.Run | str | Path, manifest: dict[str, Any] | None = None
                  ) -> list[tuple[str, Path, dict[str, Any]]]:
    """``(name, folder, stage entry)`` of every external set the run records.

    ``run``: a :class:`dermcam.run.Run`, or a run folder (its manifest read unless
    ``manifest`` is given)."""
    run = _as_run(run, manifest)
    out = []
    for key, entry in sorted(run.stages.items()):
        if key.startswith("external:") and "/" not in key and isinstance(entry, dict):
            name = key.split(":", 1)[1]
            out.append((name, run.external(name).root, entry))
    return out


def external_audits(run: runmod.Run | str | Path, manifest: dict[str, Any] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """``{name: {"explain": stage entry, "probe": stage entry}}`` of every external set
    that ``explain --data`` or ``probe --data`` ran on (each stage only where it ran).

    ``run``: a :class:`dermcam.run.Run`, or a run folder (as :func:`external_sets`)."""
    run = _as_run(run, manifest)
    out: dict[str, dict[str, Any]] = {}
    for key, entry in sorted(run.stages.items()):
        if key.startswith("external:") and "/" in key and isinstance(entry, dict):
            name, stage = key.split(":", 1)[1].split("/", 1)
            out.setdefault(name, {})[stage] = entry
    return out


#: (metrics.json block, key, column title) of the internal-versus-external table; the
#: titles are the metric-label registry's short labels.
SIDE_BY_SIDE = tuple((block, key, metric_label(key, short=True)) for block, key in (
    ("threshold_free", "roc_auc"), ("threshold_free", "average_precision"),
    ("at_threshold", "sensitivity"), ("at_threshold", "specificity"),
    ("at_threshold", "balanced_accuracy")))


def side_by_side(internal: dict[str, Any] | None, externals: list[tuple[str, dict[str, Any]]]
                 ) -> list[dict[str, Any]]:
    """One record per model and test set: ``{"model", "set", "n", "n_malignant", key:
    {"value", "lo", "hi"}}`` for the keys of :data:`SIDE_BY_SIDE`, the internal test set
    first (``set`` = ``"internal test"``), then each external set by name."""
    sets = ([("internal test", internal)] if internal else []) + list(externals)
    models = list(dict.fromkeys(m for _, res in sets for m in (res.get("models") or {})))
    rows = []
    for m in models:
        for set_name, res in sets:
            entry = (res.get("models") or {}).get(m)
            if entry is None:
                continue
            test = res.get("test") or {}
            row = {"model": m, "set": set_name, "n": test.get("n"),
                   "n_malignant": test.get("n_malignant")}
            for block, key, _ in SIDE_BY_SIDE:
                row[key] = (entry.get(block) or {}).get(key) or {}
            rows.append(row)
    return rows
