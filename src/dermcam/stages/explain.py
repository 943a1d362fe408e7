"""The explain stage: heatmaps for every model and test image, scored against the masks.

Heatmaps are computed in batches (:mod:`dermcam.attribution`) and streamed to
``RUN_DIR/attention/<model>/<method>/batch_<start>.npz`` (compressed, float16),
one file per batch, written atomically. That makes the stage

* resumable: an interrupted run skips the batches already on disk;
* re-scorable: :func:`score_run` recomputes every metric from the saved heatmaps
  without touching a model;
* flat in memory: neither heatmaps nor images of the whole split are held at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermcam import run as runmod
from dermcam.audit_set import AuditSet, by_columns, by_names, check_by, cluster_name, image_columns
from dermcam.errors import DermcamError
from dermcam.heatmap_files import (
    batch_file,
    heatmap_batches,
    heatmap_dir,
    read_heatmap_batch,
    write_heatmap_batch,
)
from dermcam.io import write_csv, write_json
from dermcam.pictures import examples_png, pick_examples

log = logging.getLogger(__name__)

def _artifact_names() -> tuple[str, ...]:
    try:
        from dermcam.data.synth import ARTIFACTS

        return tuple(ARTIFACTS)
    except Exception:  # pragma: no cover
        return ("ruler", "ink", "patch", "vignette", "hair")


def _own_images(run: runmod.Run) -> AuditSet:
    """The run's own masked test images (heatmaps and scores in the run folder)."""
    return AuditSet.test_split(run, "explain", require_masks=True, warm=False, missing=(
        "no test images with lesion masks: attention leakage needs masks"))


def parse_layer_spec(spec: str | dict | None, names) -> dict[str, str]:
    """``--layer`` -> ``{model: choice}``; a choice is ``auto``, ``last`` or a layer name.

    ``auto`` (the default) runs the localisation benchmark; ``last`` is the study's layer
    (the last convolutional block); ``NAME`` applies one layer to every model;
    ``resnet18=layer2,mobilenet_v2=features.13`` names one per model (others: auto).
    """
    if isinstance(spec, dict):
        return {n: spec.get(n, "auto") for n in names}
    spec = (spec or "auto").strip()
    if "=" not in spec:
        return {n: spec for n in names}
    out = {n: "auto" for n in names}
    for part in spec.split(","):
        model, sep, layer = part.partition("=")
        model, layer = model.strip(), layer.strip()
        if not sep or not layer:
            raise DermcamError(f"--layer entries must look like model=layer, got {part!r}")
        if model not in out:
            raise DermcamError(f"--layer names model {model!r}, which this run did not train "
                               f"({', '.join(names)})")
        out[model] = layer
    return out


def _validation_samples(run: runmod.Run) -> list:
    """The run's validation images (the training split's held-out part) that have masks."""
    from dermcam.data.splits import stratified_split

    train = run.dataset.split("train")
    if not train:
        return []
    labels = np.array([s.label for s in train], np.int64)
    cfg = run.config
    try:
        _, va = stratified_split(labels, cfg.val_fraction, cfg.seed,
                                 groups=[s.group for s in train])
    except DermcamError:
        return []
    return [train[i] for i in va if train[i].mask_path is not None]


def _benchmark_images(run: runmod.Run, test_samples, n: int, seed: int):
    """Images for the localisation benchmark: validation images with masks, else test."""
    val = _validation_samples(run)
    if len(val) >= min(n, 16):
        pool, where = val, "validation"
    else:
        pool, where = test_samples, "test"
        log.warning("localisation benchmark: the training split has too few masked validation "
                    "images, so layers are chosen on test images (optimistic)")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(pool), size=min(n, len(pool)), replace=False))
    return [pool[i] for i in pick], where


def _stack(cache, samples, size):
    import torch

    from dermcam.augment import preprocess

    items = [cache.get(s, size) for s in samples]
    x = preprocess(torch.from_numpy(np.stack([it["image"] for it in items])))
    masks = np.stack([it["mask"] for it in items]).astype(bool)
    return x, masks, np.array([s.label for s in samples], np.int64)


def _random_copies(model, k: int, seed: int) -> list:
    """``k`` randomised copies of ``model``: the nulls of the reported sanity check
    (:func:`dermcam.sanity.randomised_copies`, same seeds), so that a layer chosen for
    passing it on validation images is judged as the final check judges it."""
    from dermcam.sanity import randomised_copies

    return [m.eval() for m in randomised_copies(model, k, seed)]


def localisation_benchmark(run: runmod.Run, names, methods, n_images: int = 64,
                           n_inits: int = 2, normalize: str = "minmax", target="malignant",
                           n_boot: int = 1000, progress=None) -> list[dict[str, Any]]:
    """Every model x method x candidate layer scored on masked validation images (on the
    CPU)."""
    from dermcam.localisation import score_candidates

    size, seed = run.image_size, run.seed
    test_samples = _own_images(run).samples
    samples, where = _benchmark_images(run, test_samples, n_images, seed)
    x, masks, labels = _stack(run.cache, samples, size)
    rows: list[dict[str, Any]] = []
    for name in names:
        model, info, payload = run.load_model(name)
        model.cpu()
        classes = _target_classes(model, x, target, labels, float(payload["threshold"]))
        rows += score_candidates(model, name, info.candidate_layers, methods, x, masks,
                                 classes, size, _random_copies(model, n_inits, seed),
                                 normalize=normalize, n_boot=n_boot, seed=seed, images=where)
        if progress:
            progress(len(rows), len(names))
    return rows


def _target_classes(model, x, target, labels, threshold) -> np.ndarray:
    import torch

    if target == "true":
        return labels
    if target == "malignant":
        return np.ones(len(labels), np.int64)
    from dermcam.calibration import calibrated_prob

    model.eval()
    with torch.inference_mode():  # calibrated, as the threshold was chosen on them
        probs = calibrated_prob(model, model(x)).numpy()
    return (probs >= threshold).astype(np.int64)


def resolve_layers(run: runmod.Run, names, methods, spec, bench_methods=None,
                   bench_images: int = 64, normalize="minmax", target="malignant",
                   n_boot: int = 1000) -> tuple[list[dict[str, str]], list]:
    """``(selection [{model, method, layer, reason}], benchmark rows)``.

    ``methods`` may be ``["auto"]``: then each model's method is chosen with its layer,
    over ``bench_methods``, by the localisation benchmark.
    """
    from dermcam.attribution import METHODS, check_method

    choice = parse_layer_spec(spec, names)
    auto_method = list(methods) == ["auto"]
    loaded = {name: run.load_model(name)[:2] for name in names}
    _check_layer_names(loaded, choice)
    auto = [n for n in names if choice[n] == "auto" or auto_method]
    bench = [check_method(m) for m in (bench_methods or METHODS)]
    if not auto_method:
        bench = list(dict.fromkeys([*methods, *bench]))
    rows: list[dict[str, Any]] = []
    scored = names if bench_methods else auto
    if scored:
        key = _bench_key(scored, bench, bench_images, normalize, target)
        rows = _cached_benchmark(run, key)
        if rows is None:
            rows = localisation_benchmark(run, scored, bench, bench_images,
                                          normalize=normalize, target=target, n_boot=n_boot)
            write_json(run.outputs.localisation, {"key": key, "rows": rows})
    selection = []
    for name in names:
        selection += _select_layers(name, loaded[name][1], choice[name], methods,
                                    [r for r in rows if r["model"] == name], bench[0])
    return selection, rows


def _check_layer_names(loaded, choice: dict[str, str]) -> None:
    """Refuse a ``--layer`` name that a model does not have."""
    for name, c in choice.items():
        if c not in ("auto", "last", "study"):
            try:
                loaded[name][0].get_submodule(c)
            except AttributeError:
                raise DermcamError(f"--layer: {name} has no layer {c!r}; 'dermcam models' "
                                   "lists the candidates") from None


def _select_layers(name: str, info, c: str, methods, mine: list[dict], first_bench: str
                   ) -> list[dict[str, str]]:
    """Model ``name``'s ``{model, method, layer, reason}`` rows for layer choice ``c``
    (``reason``: :data:`dermcam.localisation.CHOICE_REASONS`), from
    its benchmark rows ``mine`` where the benchmark decides (``methods == ["auto"]``: the
    method too, defaulting to ``first_bench``)."""
    from dermcam.localisation import choose

    if list(methods) == ["auto"]:
        if c != "auto":
            raise DermcamError("--methods auto chooses the layer too; drop --layer or "
                               "name the methods")
        method, layer, why = choose(mine, info.target_layer, first_bench)
        return [{"model": name, "method": method, "layer": layer, "reason": why}]
    out = []
    for method in methods:
        if c == "auto":
            _, layer, why = choose([r for r in mine if r["method"] == method],
                                   info.target_layer, method)
        elif c in ("last", "study"):
            layer, why = info.target_layer, "study_layer"
        else:
            layer, why = c, "user_layer"
        out.append({"model": name, "method": method, "layer": layer, "reason": why})
    return out


LOCALISATION_FILE = runmod.LOCALISATION


def _bench_key(names, methods, n, normalize, target) -> dict:
    return {"models": list(names), "methods": list(methods), "n_images": int(n),
            "normalize": normalize, "target": target}


def _cached_benchmark(run: runmod.Run, key):
    path = run.outputs.localisation
    if not path.exists():
        return None
    from dermcam.io import read_json

    try:
        saved = read_json(path)
    except Exception:
        return None
    if saved.get("key") != key:
        return None
    return saved["rows"]


def run_explain(run_dir: runmod.Run | str | Path, methods=("gradcam",), target: str = "malignant",
                normalize: str = "minmax", limit: int | None = None, batch_size: int = 16,
                fast: bool = True, sanity: bool = True, n_boot: int = 1000,
                progress=None, figures: bool = True, shard: tuple[int, int] | None = None,
                merge: bool = False, layer: str | dict | None = "auto",
                bench_methods=None, bench_images: int = 64, cascade: bool = True,
                margin: float = 0.02, device: str = "cpu", data: str | Path | None = None,
                name: str | None = None, by=(), min_group: int | None = None,
                artifacts: str | Path | None = None) -> dict[str, Any]:
    """Compute (or resume) heatmaps for every trained model and ``methods``, then score.

    ``layer``: see :func:`parse_layer_spec` (default ``auto``: the localisation benchmark
    picks each model x method's layer on masked validation images). ``shard=(i, n)``
    computes only batches ``k`` with ``k % n == i`` (for several processes or machines
    sharing the run folder) and does not score; ``merge=True`` computes nothing, checks
    every batch is present, and scores them all into one attention.csv. ``margin``: the
    equivalence margin of the size-confound TOST (in each metric's units), stored in the
    summary. ``device``: where the heatmaps are computed (auto, cpu, cuda, cuda:i); with a
    shard, ``auto``/``cuda`` put shard ``i`` on GPU ``i % count`` and on the CPU each of
    ``n`` shards takes ``1/n`` of the cores. The localisation benchmark and the sanity
    check run on the CPU.

    ``data``: audit another data set's masked images instead (the images
    :func:`dermcam.audit_set.external_samples` picks), into ``RUN/external/<name>/``
    (heatmaps, attention.csv, attention_summary.json, figures) as stage
    ``external:<name>/explain``; layers are chosen on the run's own validation images and
    the heatmaps' predicted class uses the run's thresholds. ``artifacts``: an artifact
    label file joined to that set. ``by``: columns (metadata, ``ita``) for the attention
    summary by subgroup (``subgroups``), groups under ``min_group`` images too few to
    estimate.
    """
    from dermcam.device import resolve_device, set_shard_threads

    run = runmod.Run.of(run_dir, require="train")
    run_dir = run.dir
    methods = _check_options(methods, margin, target)
    audit = _explain_images(run, data, name, artifacts, by)
    _check_saved_settings(run, audit, normalize, target)
    _check_shard(shard)
    dev = resolve_device(device, shard)
    set_shard_threads(dev, shard)
    work = dict(methods=methods, target=target, normalize=normalize, limit=limit,
                batch_size=batch_size, fast=fast, sanity=sanity, n_boot=n_boot,
                progress=progress, figures=figures, shard=shard, merge=merge, layer=layer,
                bench_methods=bench_methods, bench_images=bench_images, cascade=cascade,
                margin=margin, dev=dev, by=by, min_group=min_group)
    if shard is not None:  # a shard only computes its heatmap batches and records nothing
        return _explain_stage(run, audit, {}, **work)
    with run.stage(audit.stage, methods=methods, target=target, normalize=normalize,
                   limit=limit, **audit.where) as record:
        return _explain_stage(run, audit, record, **work)


def _check_options(methods, margin: float, target: str) -> list[str]:
    """``methods`` checked (``["auto"]`` kept); a bad ``--margin`` or ``--target`` refused."""
    from dermcam.attribution import TARGETS, check_method

    methods = ["auto"] if list(methods) == ["auto"] else [check_method(m) for m in methods]
    if not margin > 0:
        raise DermcamError(f"--margin must be > 0, got {margin}")
    if target not in TARGETS:
        raise DermcamError(f"unknown --target {target!r}; choose from {', '.join(TARGETS)}")
    return methods


def _check_shard(shard: tuple[int, int] | None) -> None:
    if shard is not None:
        i, n = shard
        if not (n >= 1 and 0 <= i < n):
            raise DermcamError(f"--shard must be i/n with 0 <= i < n, got {i}/{n}")


def _explain_images(run: runmod.Run, data, name, artifacts, by) -> AuditSet:
    """The run's own masked test images, or with ``data`` another set's (see
    :func:`run_explain`); the ``--by`` columns checked against it."""
    audit = (AuditSet.external_set(run, data, "explain", name=name, artifacts=artifacts)
             if data is not None else _own_images(run))
    if by:
        check_by(audit.ds, by)
    return audit


def _check_saved_settings(run: runmod.Run, audit: AuditSet, normalize: str, target: str
                          ) -> None:
    """Refuse to mix heatmaps of another ``--target``/``--normalize`` into saved ones."""
    if (run.stage_setting(audit.stage, "normalize", normalize) != normalize
            or run.stage_setting(audit.stage, "target", target) != target):
        raise DermcamError("saved heatmaps use another --target/--normalize; delete "
                           f"{audit.out.heatmaps} to recompute", run.dir)


def _explain_stage(run: runmod.Run, audit: AuditSet, record: dict[str, Any], *, methods,
                   target, normalize, limit, batch_size, fast, sanity, n_boot, progress,
                   figures, shard, merge, layer, bench_methods, bench_images, cascade,
                   margin, dev, by, min_group) -> dict[str, Any]:
    """The explain stage's work once its inputs are checked: layer choice, heatmaps (or one
    shard of them: of the first ``limit`` images), sanity check, scores and summary (of
    every image with saved heatmaps); ``record`` receives what the manifest keeps of it."""
    out = audit.out
    samples = audit.samples[:limit] if limit else audit.samples
    t0 = time.perf_counter()
    names = run.trained_models
    selection, bench_rows = resolve_layers(
        run, names, methods, layer, bench_methods, bench_images,
        normalize=normalize, target=target, n_boot=n_boot)
    bench_seconds = time.perf_counter() - t0
    starts = _batch_starts(run, out, selection, len(samples), batch_size, shard, merge)
    t_cam, n_computed = _compute_heatmaps(run, out, names, selection, samples, starts,
                                          batch_size, dev, fast, target, normalize, progress)
    timing = {"cam_seconds": round(t_cam, 3), "images_computed": n_computed, "device": str(dev),
              "images_per_second": round(n_computed / t_cam, 2) if t_cam > 0 else None,
              "benchmark_seconds": round(bench_seconds, 3)}
    if shard is not None:
        return {"shard": list(shard), "batches": len(starts), "timing": timing,
                "folder": str(out.root)}
    if not audit.external:  # the run's own choice, for 'dermcam predict'
        _record_cam_choice(run, selection)
    sanity_res = {}
    t_s = time.perf_counter()
    if sanity:
        sanity_res = _sanity(run, selection, samples, normalize, n_boot=n_boot,
                             cascade=cascade, out=out)
    timing["sanity_seconds"] = round(time.perf_counter() - t_s, 3)
    t_score = time.perf_counter()
    extra = {"timing": timing, "layer_choice": selection, "localisation": bench_rows}
    if audit.external:
        extra["external"] = _external_note(run, audit)
    summary = _score(run, audit, selection, sanity_res, n_boot, figures, extra, margin, by,
                     min_group)
    if figures and not audit.external:
        if bench_rows:
            from dermcam.attention_plots import plot_localisation_grid

            plot_localisation_grid(bench_rows, out.figures / "localisation_grid.png",
                                   chosen=selection, displays=run.display_names)
        write_examples(run, out, selection, audit.samples)
    timing["score_seconds"] = round(time.perf_counter() - t_score, 3)
    timing["metric_seconds"] = summary["timing"]["metric_seconds"]
    timing["explain_seconds"] = round(time.perf_counter() - t0, 3)
    record.update(methods=sorted({sel["method"] for sel in selection}), target=target,
                  normalize=normalize, limit=limit, n_images=len(samples), layers=selection,
                  timing=timing, by=list(by_columns(by)))
    return summary


def _batch_starts(run: runmod.Run, out: runmod.Outputs, selection, n_samples: int,
                  batch_size: int, shard, merge: bool) -> list[int]:
    """The first image of each heatmap batch to compute: all, one shard's (every ``n``-th
    from ``i``), or none when merging (every batch must then be on disk already)."""
    starts = list(range(0, n_samples, batch_size))
    if merge:
        missing = [str(p) for sel in selection for st in starts
                   if not (p := batch_file(out.root, sel["model"], sel["method"],
                                            sel["layer"], st)).exists()]
        if missing:
            raise DermcamError(f"cannot merge: {len(missing)} heatmap batch(es) missing, e.g. "
                               f"{missing[0]}; run the missing --shard (same --batch-size)",
                               run.dir)
        return []
    if shard is not None:
        return [st for k, st in enumerate(starts) if k % shard[1] == shard[0]]
    return starts


def _external_note(run: runmod.Run, audit: AuditSet) -> dict[str, Any]:
    """The attention summary's ``external``: which set was audited, and how."""
    return {
        **audit.about(), "images": f"{audit.which}, those with a lesion mask",
        "thresholds": "each model's threshold chosen on the training data's validation "
                      "split", "layers": "chosen on the run's own validation images",
        "trained_on": run.data.get("name")}


def _compute_heatmaps(run: runmod.Run, out: runmod.Outputs, names, selection, samples,
                      starts, batch_size: int, dev, fast: bool, target: str, normalize: str,
                      progress) -> tuple[float, int]:
    """Heatmap batches ``starts`` of every model x method x layer in ``selection``, written
    under ``out`` (a batch already there for the same images is kept: resuming).
    Returns ``(seconds computing CAMs, images computed)``."""
    from dermcam.attribution import CamExplainer

    size, cache = run.image_size, run.cache
    total = len(selection) * len(starts)
    done = n_computed = 0
    t_cam = 0.0
    for model_name in names:
        model, info, payload = run.load_model(model_name)
        model.to(dev)  # CamExplainer.compute moves each batch to the model's device
        threshold = float(payload["threshold"])
        for sel in (s for s in selection if s["model"] == model_name):
            method, lay = sel["method"], sel["layer"]
            with CamExplainer(model, lay, method, fast=fast) as ex:
                for start in starts:
                    path = batch_file(out.root, model_name, method, lay, start)
                    chunk = samples[start:start + batch_size]
                    ids = np.array([s.image_id for s in chunk])
                    if path.exists():
                        try:
                            if np.array_equal(read_heatmap_batch(path)["ids"], ids):
                                done += 1
                                if progress:
                                    progress(done, total)
                                continue
                        except DermcamError:
                            pass
                        log.warning("%s: stale heatmap batch, recomputing", path)
                    x, _, labels = _stack(cache, chunk, size)
                    t1 = time.perf_counter()
                    cb = ex.compute(x, target=target, labels=labels, size=size,
                                    normalize=normalize, threshold=threshold)
                    t_cam += time.perf_counter() - t1
                    n_computed += len(chunk)
                    write_heatmap_batch(path, ids, cb.heatmaps, cb.probs, cb.targets, labels)
                    done += 1
                    if progress:
                        progress(done, total)
    return t_cam, n_computed


def _record_cam_choice(run: runmod.Run, selection) -> None:
    """Store each model's chosen CAM method and layer in its checkpoint ('dermcam predict'
    uses them for its overlays)."""
    from dermcam.checkpoints import update_checkpoint

    for sel in selection:
        update_checkpoint(run.model_file(sel["model"]),
                          {"cam": {k: sel[k] for k in ("method", "layer", "reason")}})


def _sanity(run: runmod.Run, selection, samples, normalize, k: int = 64,
            n_boot: int = 1000, cascade: bool = True, out: runmod.Outputs | None = None):
    """Adebayo et al. (2018) on the chosen layers, on the CPU: full and cascading
    randomisation (the trained heatmaps read from ``out``, default the run's own)."""
    from dermcam.sanity import model_randomisation

    size = run.image_size
    chunk = samples[:k]
    x, _, _ = _stack(run.cache, chunk, size)
    res = {}
    for sel in selection:
        name, method, lay = sel["model"], sel["method"], sel["layer"]
        trained = _heatmaps_in_order((out or run.outputs).root, name, method, lay,
                                     [s.image_id for s in chunk])
        res[f"{name}/{method}"] = model_randomisation(
            run.load_model(name)[0].cpu(), lay, method, x, trained["targets"],
            trained["heatmaps"], size, normalize=normalize, seed=run.seed, cascade=cascade,
            n_boot=n_boot)
    return res


def _heatmaps_in_order(root, model, method, layer, ids) -> dict[str, np.ndarray]:
    """Saved heatmaps and target classes of ``ids``, in that order."""
    want = set(map(str, ids))
    heat, targ = {}, {}
    for f in heatmap_batches(heatmap_dir(root, model, method, layer)):
        if len(heat) == len(want):
            break
        b = read_heatmap_batch(f)
        for i, iid in enumerate(b["ids"]):
            if str(iid) in want:
                heat[str(iid)] = b["heatmaps"][i].astype(np.float32)
                targ[str(iid)] = int(b["targets"][i])
    missing = want - heat.keys()
    if missing:
        raise DermcamError(f"no saved heatmap for {sorted(missing)[0]}",
                           heatmap_dir(root, model, method, layer))
    return {"heatmaps": np.stack([heat[str(i)] for i in ids]),
            "targets": np.array([targ[str(i)] for i in ids], np.int64)}


def _metadata(ds) -> pd.DataFrame | None:
    if ds.metadata_path is None:
        return None
    from dermcam.data.describe import read_metadata as read_meta

    return read_meta(ds)


def _selection(run: runmod.Run) -> list[dict[str, str]]:
    """The model x method x layer triples the last explain run scored (from the manifest)."""
    sel = run.stage_setting("explain", "layers")
    if sel:
        return [dict(s) for s in sel]
    raise DermcamError("no explain selection recorded; run 'dermcam explain' first", run.dir)


def score_run(run_dir: runmod.Run | str | Path, selection: list[dict] | None = None,
              sanity: dict | None = None, n_boot: int = 1000, figures: bool = True,
              extra: dict | None = None, margin: float = 0.02, by=(),
              min_group: int | None = None) -> dict[str, Any]:
    """Score saved heatmap batches against their masks; write attention.csv, summary, figures.

    ``selection``: ``[{model, method, layer}]`` to score (default: what the last explain
    run recorded in the manifest). ``by``, ``min_group``: the summary by subgroup (see
    :func:`run_explain`).
    """
    run = runmod.Run.of(run_dir, require="train")
    run_dir = run.dir
    selection = selection or _selection(run)
    return _score(run, _own_images(run), selection, sanity, n_boot, figures, extra, margin,
                  by, min_group)


def _score(run: runmod.Run, audit: AuditSet, selection, sanity, n_boot: int, figures: bool,
           extra: dict | None, margin: float, by=(), min_group: int | None = None
           ) -> dict[str, Any]:
    """:func:`score_run` on ``audit`` (the run's own masked test images, or an external
    set's), whose heatmaps lie under ``audit.out``; writes there. The heatmaps' target is
    what ``audit.stage`` recorded."""
    out, ds, samples = audit.out, audit.ds, audit.samples
    sc = _Scoring.of(run, ds, samples)
    att, metric_seconds = _attention_table(out, selection, sc)
    if by:  # the --by columns (ita from the image), one value per image
        att = _with_image_columns(att, ds, sc, by)
    float_cols = att.select_dtypes("float").columns
    att[float_cols] = att[float_cols].round(6)
    write_csv(out.attention, att)
    summary = summarise_attention(att, run.stage_setting(audit.stage, "target"), sanity or {},
                                  n_boot=n_boot, seed=run.seed, margin=margin,
                                  cluster_name=cluster_name(ds), by=by, min_group=min_group)
    if extra:
        summary.update(extra)
    summary.setdefault("timing", {})["metric_seconds"] = round(metric_seconds, 3)
    write_json(out.attention_summary, summary)
    if figures:
        attention_figures(run, out, att, samples=samples)
    return summary


@dataclass
class _Scoring:
    """What scoring a heatmap batch needs besides the batch: the images by id, the run's
    cache, size and thresholds, and the artifact labels to join."""
    by_id: dict[str, Any]
    size: int
    cache: Any
    thresholds: dict[str, float]
    grouped: bool  # some image has a group (lesion or patient id)
    art_names: tuple[str, ...]
    meta_by_id: pd.DataFrame | None  # metadata.csv (artifact_<name> columns)
    labels_by_id: pd.DataFrame | None  # a joined --artifact-labels FILE (#16)

    @classmethod
    def of(cls, run: runmod.Run, ds, samples) -> _Scoring:
        by_id = {s.image_id: s for s in samples}
        size, cache = run.image_size, run.cache
        meta = _metadata(ds)
        labels = getattr(ds, "artifact_labels", None)
        return cls(by_id, size, cache, run.thresholds,
                   any(s.group is not None for s in samples), _artifact_names(),
                   meta.set_index("image_id") if meta is not None else None,
                   labels.set_index("image_id") if labels is not None else None)


def _attention_table(out: runmod.Outputs, selection, sc: _Scoring
                     ) -> tuple[pd.DataFrame, float]:
    """``(attention rows, seconds scoring)``: every saved batch of ``selection`` scored,
    one row per image x model x method (the last batch wins), sorted."""
    frames = []
    metric_seconds = 0.0
    for sel in selection:
        name, method, layer = sel["model"], sel["method"], sel["layer"]
        folder = heatmap_dir(out.root, name, method, layer)
        files = heatmap_batches(folder)
        if not files:
            raise DermcamError(f"no saved heatmaps for {name}/{method} at {layer}; run "
                               "'dermcam explain' first", folder)
        for f in files:
            df, seconds = _batch_frame(f, name, method, layer, sc)
            frames.append(df)
            metric_seconds += seconds
    att = pd.concat(frames, ignore_index=True)
    att = att.drop_duplicates(["image_id", "model", "method"], keep="last")
    att = att.sort_values(["model", "method", "image_id"], kind="stable").reset_index(drop=True)
    return att, metric_seconds


def _batch_frame(f: Path, name: str, method: str, layer: str, sc: _Scoring
                 ) -> tuple[pd.DataFrame, float]:
    """``(rows, seconds scoring)`` of one saved heatmap batch against its masks."""
    from dermcam import leakage as lk

    b = read_heatmap_batch(f)
    ids = [str(i) for i in b["ids"]]
    unknown = [i for i in ids if i not in sc.by_id]
    if unknown:
        raise DermcamError(f"heatmaps for unknown image id(s) {unknown[:3]}", f)
    items = [sc.cache.get(sc.by_id[i], sc.size) for i in ids]
    masks = np.stack([it["mask"] for it in items]).astype(bool)
    cams = b["heatmaps"].astype(np.float32)
    t_m = time.perf_counter()
    values, reasons = lk.score_batch(cams, masks)
    seconds = time.perf_counter() - t_m
    probs = b["probs"].astype(np.float64)
    labels = b["labels"].astype(int)
    pred = (probs >= sc.thresholds[name]).astype(int)
    df = pd.DataFrame({"image_id": ids, "model": name, "method": method,
                       "layer": layer, "label": labels,
                       "prob_malignant": np.round(probs, 6),
                       "pred": pred, "correct": (pred == labels),
                       "cam_target": b["targets"].astype(int)})
    if sc.grouped:
        df["group"] = [sc.by_id[i].group for i in ids]
    for k, v in values.items():
        df[k] = v
    df["reason"] = reasons
    _add_artifact_columns(df, ids, items, cams, sc)
    return df, seconds


def _add_artifact_columns(df: pd.DataFrame, ids: list[str], items, cams: np.ndarray,
                          sc: _Scoring) -> None:
    """Heatmap mass and area per artifact (pixel maps, synthetic data), artifact presence
    (metadata.csv) and a joined label file's columns, added to ``df`` in place."""
    from dermcam import leakage as lk

    if all(it["artifacts"] is not None for it in items):
        arts = np.stack([it["artifacts"] for it in items])
        codes = list(range(1, len(sc.art_names) + 1))
        mass = lk.artifact_mass(cams, arts, codes)
        for code, an in zip(codes, sc.art_names):
            df[f"mass_{an}"] = mass[code]
            df[f"area_{an}"] = (arts == code).reshape(len(ids), -1).mean(axis=1)
    if sc.meta_by_id is not None:
        for an in sc.art_names:
            col = f"artifact_{an}"
            if col in sc.meta_by_id.columns:
                df[col] = sc.meta_by_id.loc[ids, col].to_numpy()
    if sc.labels_by_id is not None:
        for col in sc.labels_by_id.columns:
            if col not in df.columns:
                df[col] = sc.labels_by_id.reindex(ids)[col].to_numpy()


def _with_image_columns(att: pd.DataFrame, ds, sc: _Scoring, by) -> pd.DataFrame:
    """``att`` with the ``--by`` columns (metadata, ``ita`` from the image) per image."""
    cols = image_columns(ds, [sc.by_id[i] for i in att["image_id"].unique()], sc.cache,
                         sc.size, by)
    return att.merge(cols[[c for c in cols.columns if c == "image_id"
                           or c not in att.columns]], on="image_id", how="left")


SUMMARY_METRICS = ("leakage", "inside_score", "outside_score", "lesion_area", "chance_leakage",
                   "excess_leakage", "localisation_gain", "pixel_auroc", "rank_accuracy",
                   "pointing_game")


#: Metrics the class comparison, the size-confound model and the missingness analysis
#: run on.
TEST_METRICS = ("leakage", "excess_leakage", "pixel_auroc")

#: The scores of the attention summary by subgroup (``--by``) and their titles.
SUBGROUP_TITLES = {"leakage": "leakage", "excess_leakage": "excess leakage",
                   "pixel_auroc": "pixel AUROC"}

#: Multiplicity families of the attention summary: name -> (method, what it holds).
ATTENTION_FAMILIES = {
    "class_pooled": ("fdr_bh", "Mann-Whitney benign vs malignant, pooled over the explained "
                     "class: one test per metric x model x method (each at its layer)"),
    "class_within_target": ("fdr_bh", "Mann-Whitney benign vs malignant within heatmaps "
                            "explaining one class: one test per explained class x metric x "
                            "model x method"),
    "size_confound": ("fdr_bh", "t test of the size-adjusted class coefficient (HC3): one per "
                      "metric x model x method"),
    "equivalence": ("fdr_bh", "TOST of the size-adjusted class coefficient against the "
                    "margin: one per metric x model x method"),
    "artifact_presence": ("fdr_bh", "Mann-Whitney with vs without an artifact (artifact "
                          "labels): one test per artifact x metric x model x method"),
}

#: What the attention summary still computes per image when it resamples clusters.
PER_IMAGE_WHEN_CLUSTERED = (
    "Mann-Whitney p-values (class comparisons, artifact presence)",
    "size-confound models (HC3 standard errors, t tests, TOST)",
    "the bootstrap CI of the share of the class gap explained by area",
    "uniform_guard CIs (median pixel AUROC, mean excess leakage)",
    "artifact mass / area ratio CIs",
    "the sanity check's CI of the median |rank correlation|",
)


def summarise_attention(att: pd.DataFrame, target, sanity: dict, n_boot: int, seed: int,
                        margin: float = 0.02, cluster_name: str = "group", by=(),
                        min_group: int | None = None) -> dict[str, Any]:
    """attention_summary.json from attention.csv rows (see README, "Attention analysis").

    ``target``: the class the heatmaps explain (explain's ``--target``: ``malignant``,
    ``true`` or ``predicted``; None where unknown), or a :class:`dermcam.run.Run` (or,
    as older callers pass, a manifest dict) whose explain stage recorded it.
    ``margin``: TOST equivalence margin of the size-confound models. Images that share a
    ``group`` (lesion or patient; ``cluster_name`` names it) are resampled together in
    every bootstrap CI of the per-class summaries; ``resampling`` says which was used.
    Every p-value is kept raw beside its adjusted value (``p_adjusted``, within the
    families of :data:`ATTENTION_FAMILIES`, Benjamini-Hochberg); the size-confound
    verdicts are decided on the adjusted values (:func:`dermcam.leakage.adjust_confound`).
    With clusters, ``per_image`` lists the numbers that still treat images as independent
    (:data:`PER_IMAGE_WHEN_CLUSTERED`).

    ``by``: columns of ``att`` (metadata, ``ita``) to summarise by subgroup
    (``subgroups``: per model x method and group, leakage, excess leakage and pixel AUROC
    means with CIs and n, and a Kruskal-Wallis test per metric, Holm over columns and
    models x methods; :func:`dermcam.subgroups.subgroup_summary_analyses`).
    """
    from dermcam import leakage as lk

    if "layer" not in att.columns:
        att = att.assign(layer="")
    cluster_col, resampling = _resampling(att, cluster_name)
    target = _explained_class(target)
    stats = dict(n_boot=n_boot, seed=seed, cluster_col=cluster_col)
    by_class = lk.summarise(att, SUMMARY_METRICS, by=("model", "method", "label"), **stats)
    by_correct = lk.summarise(att, ("leakage", "excess_leakage", "pixel_auroc"),
                              by=("model", "method", "correct"), **stats)
    overall = lk.summarise(att, SUMMARY_METRICS, by=("model", "method"), **stats)
    tests, artifact_rows = {}, []
    families: dict[str, list[dict]] = {f: [] for f in ATTENTION_FAMILIES}
    for (model, method), g in att.groupby(["model", "method"], sort=True):
        key = f"{model}/{method}"
        tests[key], rows = _pair_tests(g, model, method, target, margin, cluster_name,
                                       cluster_col, n_boot, seed, families)
        if key in sanity:
            tests[key]["sanity"] = sanity[key]
        artifact_rows += rows
    multiplicity = _finish_tests(tests, families)
    reasons = att.loc[att["reason"] != "", "reason"].value_counts().to_dict()
    extra = _subgroups(att, by, n_boot, seed, min_group, cluster_col) if by else {}
    return {**extra, "schema_version": 1, "n_images": int(att["image_id"].nunique()),
            "models": sorted(att["model"].unique().tolist()),
            "methods": sorted(att["method"].unique().tolist()),
            "target": target, "equivalence_margin": margin, "resampling": resampling,
            "per_image": list(PER_IMAGE_WHEN_CLUSTERED) if cluster_col is not None else [],
            "multiplicity": multiplicity,
            "undefined": reasons,
            "metric_definitions": {k: {"definition": v.definition,
                                       "higher_is_better": v.higher_is_better,
                                       "chance": lk.CHANCE.get(k)} for k, v in lk.METRICS.items()},
            "by_class": by_class.to_dict(orient="records"),
            "by_correct": by_correct.to_dict(orient="records"),
            "overall": overall.to_dict(orient="records"),
            "artifacts": artifact_rows,
            "tests": tests}


def _explained_class(target) -> str | None:
    """:func:`summarise_attention`'s ``target`` as the class mode: as given, or what the
    explain stage of a Run (or of a manifest dict, the older calling convention)
    recorded."""
    if isinstance(target, Mapping):  # wrapped only to read it through Run's accessor
        target = runmod.Run(Path(), dict(target))
    if isinstance(target, runmod.Run):
        return target.stage_setting("explain", "target")
    return target


def _resampling(att: pd.DataFrame, cluster_name: str) -> tuple[str | None, str]:
    """``(cluster column or None, resampling label)``: whole clusters where images share a
    ``group``, else images."""
    from dermcam.stats import resampling_label

    if "group" not in att.columns:
        return None, "images"
    per_image = att.drop_duplicates("image_id")["group"]
    resampling = resampling_label(per_image.to_numpy(dtype=object), cluster_name)
    return (None if resampling == "images" else "group"), resampling


def _pair_tests(g: pd.DataFrame, model: str, method: str, target, margin: float,
                cluster_name: str, cluster_col: str | None, n_boot: int, seed: int,
                families: dict[str, list[dict]]) -> tuple[dict[str, Any], list[dict]]:
    """``(tests entry, artifact ratio rows)`` of one model x method; its p-values join
    ``families``."""
    from dermcam.localisation import uniform_guard

    layer = str(g["layer"].iloc[0])
    entry: dict[str, Any] = {"layer": layer,
                             "uniform_guard": uniform_guard(g, n_boot=n_boot, seed=seed)}
    _class_tests(g, entry, families)
    _confound_tests(g, entry, families, target, margin,
                    cluster_name if cluster_col is not None else None)
    rows = _artifact_tests(g, entry, families, n_boot, seed, cluster_col)
    return entry, [{"model": model, "method": method, "layer": layer, **r} for r in rows]


def _class_tests(g: pd.DataFrame, entry: dict[str, Any], families) -> None:
    """``classes_<metric>``: benign vs malignant (pooled over the explained class), and with
    ``cam_target`` ``class_comparison`` (also within each explained class)."""
    from dermcam import leakage as lk

    comparisons = {}
    for metric in TEST_METRICS:
        try:
            if "cam_target" in g.columns:
                comparisons[metric] = lk.compare_classes_by_target(g, metric)
                entry[f"classes_{metric}"] = comparisons[metric]["pooled"]
            else:
                entry[f"classes_{metric}"] = lk.compare_classes(g, metric)
        except ValueError as exc:
            entry[f"classes_{metric}"] = {"error": str(exc)}
            continue
        families["class_pooled"].append(entry[f"classes_{metric}"])
        if metric in comparisons:
            families["class_within_target"] += comparisons[metric]["by_target"].values()
    if comparisons:
        entry["class_comparison"] = comparisons


def _confound_tests(g: pd.DataFrame, entry: dict[str, Any], families, target,
                    margin: float, cluster_name: str | None) -> None:
    """``size_confounds`` (class effect adjusted for lesion area, with TOST) and
    ``missingness`` (are undefined scores missing at chance)."""
    from dermcam import leakage as lk

    try:
        entry["size_confounds"] = lk.size_confounds(
            g, TEST_METRICS, margin=margin, target_mode=target, cluster_name=cluster_name)
        for res in entry["size_confounds"].values():
            families["size_confound"].append(res)
            families["equivalence"].append(res["equivalence"])
        entry["size_confound"] = entry["size_confounds"]["leakage"]
    except ValueError as exc:
        entry["size_confound"] = {"error": str(exc)}
    try:
        entry["missingness"] = lk.missing_at_chance(g, TEST_METRICS)
    except ValueError as exc:
        entry["missingness"] = {"error": str(exc)}


def _artifact_tests(g: pd.DataFrame, entry: dict[str, Any], families, n_boot: int,
                    seed: int, cluster_col: str | None) -> list[dict]:
    """``artifacts`` (heatmap mass on artifact pixel maps) and ``artifact_presence``
    (leakage with vs without a labelled artifact); returns the artifact ratio rows."""
    from dermcam import leakage as lk
    from dermcam.localisation import artifact_ratios

    rows: list[dict] = []
    arts = [c.removeprefix("artifact_") for c in g.columns if c.startswith("artifact_")
            and f"mass_{c.removeprefix('artifact_')}" in g.columns]
    if arts:
        try:
            entry["artifacts"] = lk.artifact_summary(g, arts).to_dict(orient="records")
        except ValueError as exc:
            entry["artifacts"] = {"error": str(exc)}
        rows = artifact_ratios(g, arts, n_boot=n_boot, seed=seed)
    presence = [c for c in g.columns if c.startswith("artifact_")
                and f"mass_{c.removeprefix('artifact_')}" not in g.columns]
    if presence:  # labels without pixel maps (real images): leakage by presence
        try:
            entry["artifact_presence"] = lk.presence_comparison(
                g, presence, TEST_METRICS, n_boot=n_boot, seed=seed, cluster_col=cluster_col)
            families["artifact_presence"] += entry["artifact_presence"]
        except ValueError as exc:
            entry["artifact_presence"] = {"error": str(exc)}
    return rows


def _finish_tests(tests: dict[str, dict], families) -> dict[str, Any]:
    """Adjust each family's p-values, then decide the size-confound verdicts on the
    adjusted values; returns the families' description."""
    from dermcam import leakage as lk
    from dermcam.stats import ADJUST_METHODS, adjust_pvalues

    multiplicity = _adjust_families(families, adjust_pvalues, ADJUST_METHODS)
    for entry in tests.values():
        for res in (entry.get("size_confounds") or {}).values():
            lk.adjust_confound(res, multiplicity["size_confound"]["k"],
                               multiplicity["equivalence"]["k"])
    return multiplicity


def _subgroups(att: pd.DataFrame, by, n_boot: int, seed: int, min_group: int | None,
               cluster_col: str | None) -> dict[str, Any]:
    """``{"subgroups": ...}``: the attention summary by the ``--by`` columns."""
    from dermcam.subgroups import MIN_GROUP, subgroup_summary_analyses

    return {"subgroups": subgroup_summary_analyses(
        att, by_names(by), list(SUBGROUP_TITLES), ("model", "method"), n_boot=n_boot,
        seed=seed, min_group=MIN_GROUP if min_group is None else int(min_group),
        cluster_col=cluster_col, what="models x methods")}


def _adjust_families(members: dict[str, list[dict]], adjust, names) -> dict[str, Any]:
    """Adjust each family's p-values in place (``p_adjusted``, ``adjust_method``,
    ``family`` beside the raw p) and describe the families."""
    raw_key = {"class_pooled": "p_value", "class_within_target": "p_value",
               "size_confound": "class_p_adjusted", "equivalence": "p",
               "artifact_presence": "p"}
    out = {}
    for family, dicts in members.items():
        method, what = ATTENTION_FAMILIES[family]
        raw = [float(d.get(raw_key[family], np.nan)) for d in dicts]
        adj = adjust(raw, method) if dicts else np.array([])
        for d, pa in zip(dicts, adj, strict=True):
            d.update(p_adjusted=float(pa), adjust_method=names[method], family=family)
        out[family] = {"method": names[method], "tests": what,
                       "k": int(np.isfinite(np.asarray(raw, dtype=np.float64)).sum())}
    return out


def attention_figures(run: runmod.Run, out: runmod.Outputs, att: pd.DataFrame,
                      n_examples: int = 3, samples=None) -> None:
    """The attention figures into ``out.figures`` (``out``: the run's own outputs, or an
    external set's, holding the heatmaps; ``samples``: the images scored, default the
    run's test split)."""
    from dermcam import attention_plots as ap
    from dermcam import leakage as lk

    figs = out.figures
    size, cache = run.image_size, run.cache
    if samples is None:
        samples = run.test_samples()
    by_id = {s.image_id: s for s in samples}
    first_method = sorted(att["method"].unique())[0]
    for model, g in att.groupby("model"):
        gm = g[g["method"] == first_method]
        disp = run.display_names.get(model, model)
        ap.plot_attention_summary(gm, figs / f"attention_leakage_analysis_{model}.png",
                                  title=f"{disp} ({first_method}): attention leakage")
    ap.plot_leakage_vs_accuracy(att[att["method"] == first_method],
                                figs / "leakage_vs_accuracy.png",
                                title="Attention leakage vs share classified correctly "
                                      f"({first_method})", displays=run.display_names)
    ap.plot_leakage_vs_area(att[att["method"] == first_method], figs / "leakage_vs_area.png",
                            title="Leakage vs lesion area, one panel per model",
                            displays=run.display_names)
    table = lk.summarise(att, ("excess_leakage", "localisation_gain", "pixel_auroc",
                               "pointing_game"), by=("model", "method"), n_boot=200, seed=0)
    ap.plot_size_aware_table(table, figs / "size_aware_scores.png")
    for (model, method), g in att.groupby(["model", "method"]):
        valid = g[g["reason"] == ""].sort_values("excess_leakage")
        picks = [("least", r) for r in valid.head(n_examples).itertuples()] + \
                [("most", r) for r in valid.tail(n_examples).itertuples()]
        layer = str(g["layer"].iloc[0])
        heats = _heatmaps_for(out.root, model, method, layer, {r.image_id for _, r in picks})
        for kind, r in picks:
            heat = heats[r.image_id]
            item = cache.get(by_id[r.image_id], size)
            ap.plot_example(item["image"], heat, item["mask"].astype(bool),
                            figs / "examples" / f"{model}_{method}_{kind}_{r.image_id}.png",
                            title=f"{r.image_id} ({'malignant' if r.label else 'benign'}, "
                                  f"p={r.prob_malignant:.2f}, {model}/{method} at {layer})")


def example_rows(run: runmod.Run, out: runmod.Outputs, att: pd.DataFrame, selection,
                 samples, n: int = 3) -> list[tuple[dict, list[tuple]]]:
    """What :func:`dermcam.pictures.examples_png` draws: per ``selection`` entry (``{model,
    method, layer}``), the ``n`` images :func:`dermcam.pictures.pick_examples` picks from
    its ``att`` rows, as ``(kind, row, image, mask, saved heatmap)`` (``None`` for all but
    ``kind`` where no image qualifies); ``samples``: the images scored."""
    by_id = {s.image_id: s for s in samples}
    rows = []
    for c in selection:
        g = att[(att["model"] == c["model"]) & (att["method"] == c["method"])
                & (att["layer"] == c["layer"])]
        picks = pick_examples(g, n)
        heats = _heatmaps_for(out.root, c["model"], c["method"], c["layer"],
                              {str(r["image_id"]) for _, r in picks if r is not None})
        cells = []
        for kind, r in picks:
            if r is None:
                cells.append((kind, None, None, None, None))
                continue
            item = run.cache.get(by_id[str(r["image_id"])], run.image_size)
            cells.append((kind, r, item["image"], item.get("mask"), heats[str(r["image_id"])]))
        rows.append((c, cells))
    return rows


def write_examples(run: runmod.Run, out: runmod.Outputs, selection, samples) -> Path:
    """``figures/examples.png`` (:func:`dermcam.pictures.examples_png` of
    :func:`example_rows`, from the attention.csv just written), the report's first picture."""
    from dermcam.io import write_bytes

    att = pd.read_csv(out.attention, dtype={"image_id": str, "model": str, "method": str,
                                            "layer": str}, keep_default_na=False,
                      na_values=[""])
    rows = example_rows(run, out, att, selection, samples)
    return write_bytes(out.figures / runmod.EXAMPLES_PNG, examples_png(rows, run.display_names))


def _heatmaps_for(root: Path, model: str, method: str, layer: str, image_ids: set[str]
                  ) -> dict[str, np.ndarray]:
    """The saved heatmaps of ``image_ids``, reading each batch file once."""
    ids = sorted(image_ids)
    if not ids:
        return {}
    got = _heatmaps_in_order(root, model, method, layer, ids)
    return dict(zip(ids, got["heatmaps"]))
