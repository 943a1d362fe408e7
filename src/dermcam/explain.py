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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermcam import run as runmod
from dermcam.errors import DermcamError
from dermcam.io import atomic_path, write_csv, write_json

log = logging.getLogger(__name__)

HEATMAP_DIR = "attention"


def _batch_file(root: Path, model: str, method: str, start: int) -> Path:
    return root / HEATMAP_DIR / model / method / f"batch_{start:06d}.npz"


def _load_batch(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise DermcamError(f"unreadable heatmap file ({type(exc).__name__}); delete it and "
                           "re-run 'dermcam explain' to recompute it", path) from exc


def _artifact_names() -> tuple[str, ...]:
    try:
        from dermcam.data.synth import ARTIFACTS

        return tuple(ARTIFACTS)
    except Exception:  # pragma: no cover
        return ("ruler", "ink", "patch", "vignette", "hair")


def _explain_samples(manifest, limit):
    from dermcam.data import load_dataset

    ds = load_dataset(manifest["data"]["root"])
    samples = [s for s in ds.split("test") if s.mask_path is not None]
    if not samples:
        raise DermcamError("no test images with lesion masks: attention leakage needs masks",
                           ds.root)
    return ds, samples[:limit] if limit else samples


def run_explain(run_dir: str | Path, methods=("gradcam",), target: str = "predicted",
                normalize: str = "minmax", limit: int | None = None, batch_size: int = 16,
                fast: bool = True, sanity: bool = True, n_boot: int = 1000,
                progress=None, figures: bool = True, shard: tuple[int, int] | None = None,
                merge: bool = False) -> dict[str, Any]:
    """Compute (or resume) heatmaps for every trained model and ``methods``, then score.

    ``shard=(i, n)`` computes only batches ``k`` with ``k % n == i`` (for several processes
    or machines sharing the run folder) and does not score; ``merge=True`` computes
    nothing, checks every batch is present, and scores them all into one attention.csv.
    """
    import torch

    from dermcam.attribution import TARGETS, CamExplainer, check_method
    from dermcam.augment import preprocess
    from dermcam.data.cache import ImageCache
    from dermcam.pipeline import trained_models
    from dermcam.training import load_checkpoint

    run_dir = Path(run_dir)
    manifest = runmod.read_manifest(run_dir, require="train")
    methods = [check_method(m) for m in methods]
    if target not in TARGETS:
        raise DermcamError(f"unknown --target {target!r}; choose from {', '.join(TARGETS)}")
    prev = manifest.get("stages", {}).get("explain", {})
    if prev.get("normalize", normalize) != normalize or prev.get("target", target) != target:
        raise DermcamError("saved heatmaps use another --target/--normalize; delete "
                           f"{run_dir / HEATMAP_DIR} to recompute", run_dir)
    if shard is not None:
        i, n = shard
        if not (n >= 1 and 0 <= i < n):
            raise DermcamError(f"--shard must be i/n with 0 <= i < n, got {i}/{n}")
    t0 = time.perf_counter()
    if shard is None:
        runmod.set_stage(run_dir, "explain", "running", methods=methods, target=target,
                         normalize=normalize, limit=limit)
    ds, samples = _explain_samples(manifest, limit)
    size = manifest["config"]["image_size"]
    cache = ImageCache(manifest["config"].get("cache_dir"))
    names = trained_models(manifest)
    starts = list(range(0, len(samples), batch_size))
    if merge:
        missing = [str(_batch_file(run_dir, nm, me, st)) for nm in trained_models(manifest)
                   for me in methods for st in starts
                   if not _batch_file(run_dir, nm, me, st).exists()]
        if missing:
            raise DermcamError(f"cannot merge: {len(missing)} heatmap batch(es) missing, e.g. "
                               f"{missing[0]}; run the missing --shard (same --batch-size)",
                               run_dir)
        starts = []
    elif shard is not None:
        starts = [st for k, st in enumerate(starts) if k % shard[1] == shard[0]]
    total = len(names) * len(methods) * len(starts)
    done = 0
    n_computed = 0
    t_cam = 0.0
    for name in names:
        model, info, payload = load_checkpoint(run_dir / "models" / name / "model.pt")
        threshold = float(payload["threshold"])
        for method in methods:
            with CamExplainer(model, info.target_layer, method, fast=fast) as ex:
                for start in starts:
                    path = _batch_file(run_dir, name, method, start)
                    chunk = samples[start:start + batch_size]
                    ids = np.array([s.image_id for s in chunk])
                    if path.exists():
                        try:
                            if np.array_equal(_load_batch(path)["ids"], ids):
                                done += 1
                                if progress:
                                    progress(done, total)
                                continue
                        except DermcamError:
                            pass
                        log.warning("%s: stale heatmap batch, recomputing", path)
                    items = [cache.get(s, size) for s in chunk]
                    labels = np.array([s.label for s in chunk], np.int64)
                    x = preprocess(torch.from_numpy(np.stack([it["image"] for it in items])))
                    t1 = time.perf_counter()
                    cb = ex.compute(x, target=target, labels=labels, size=size,
                                    normalize=normalize, threshold=threshold)
                    t_cam += time.perf_counter() - t1
                    n_computed += len(chunk)
                    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                        np.savez_compressed(fh, ids=ids, heatmaps=cb.heatmaps.astype(np.float16),
                                            probs=cb.probs, targets=cb.targets, labels=labels)
                    done += 1
                    if progress:
                        progress(done, total)
    timing = {"cam_seconds": round(t_cam, 3), "images_computed": n_computed,
              "images_per_second": round(n_computed / t_cam, 2) if t_cam > 0 else None}
    if shard is not None:
        return {"shard": list(shard), "batches": len(starts), "timing": timing}
    sanity_res = {}
    if sanity:
        sanity_res = _sanity(run_dir, names, methods, samples, size, cache, target, normalize)
    t_score = time.perf_counter()
    summary = score_run(run_dir, methods=methods, sanity=sanity_res, n_boot=n_boot,
                        figures=figures, extra={"timing": timing})
    timing["score_seconds"] = round(time.perf_counter() - t_score, 3)
    timing["metric_seconds"] = summary["timing"]["metric_seconds"]
    timing["explain_seconds"] = round(time.perf_counter() - t0, 3)
    runmod.set_stage(run_dir, "explain", "complete", methods=methods, target=target,
                     normalize=normalize, limit=limit, n_images=len(samples),
                     wall_time_s=round(time.perf_counter() - t0, 2), timing=timing)
    return summary


def _sanity(run_dir, names, methods, samples, size, cache, target, normalize, k: int = 16):
    """Adebayo et al. (2018): heatmaps of the same architecture with random weights."""
    import torch

    from dermcam.attribution import CamExplainer
    from dermcam.augment import preprocess
    from dermcam.leakage import sanity_check
    from dermcam.models import build_model

    chunk = samples[:k]
    items = [cache.get(s, size) for s in chunk]
    x = preprocess(torch.from_numpy(np.stack([it["image"] for it in items])))
    out = {}
    for name in names:
        torch.manual_seed(0)
        rnd, info = build_model(name, weights="none")
        for method in methods:
            trained = _load_batch(_batch_file(run_dir, name, method, 0))
            n = min(len(chunk), len(trained["ids"]))
            with CamExplainer(rnd, info.target_layer, method) as ex:
                # same target classes as the trained model's heatmaps
                cb = ex.compute(x[:n], target=trained["targets"][:n], size=size,
                                normalize=normalize)
            res = sanity_check(trained["heatmaps"][:n].astype(np.float32), cb.heatmaps)
            out[f"{name}/{method}"] = res
    return out


def _metadata(ds) -> pd.DataFrame | None:
    if ds.metadata_path is None:
        return None
    from dermcam.data.describe import _metadata as read_meta

    return read_meta(ds)


def score_run(run_dir: str | Path, methods=None, sanity: dict | None = None,
              n_boot: int = 1000, figures: bool = True, extra: dict | None = None
              ) -> dict[str, Any]:
    """Score every saved heatmap batch against its mask; write attention.csv, summary, figures."""
    from dermcam import leakage as lk
    from dermcam.data.cache import ImageCache
    from dermcam.pipeline import trained_models

    run_dir = Path(run_dir)
    manifest = runmod.read_manifest(run_dir, require="train")
    ds, samples = _explain_samples(manifest, None)
    by_id = {s.image_id: s for s in samples}
    size = manifest["config"]["image_size"]
    cache = ImageCache(manifest["config"].get("cache_dir"))
    meta = _metadata(ds)
    art_names = _artifact_names()
    meta_by_id = meta.set_index("image_id") if meta is not None else None
    thresholds = {m: manifest["models"][m]["threshold"] for m in trained_models(manifest)}
    frames = []
    metric_seconds = 0.0
    for name in trained_models(manifest):
        mdir = run_dir / HEATMAP_DIR / name
        for method in (methods or sorted(p.name for p in mdir.iterdir() if p.is_dir())):
            files = sorted((mdir / method).glob("batch_*.npz"))
            if not files:
                raise DermcamError(f"no saved heatmaps for {name}/{method}; run 'dermcam "
                                   "explain' first", mdir)
            for f in files:
                b = _load_batch(f)
                ids = [str(i) for i in b["ids"]]
                unknown = [i for i in ids if i not in by_id]
                if unknown:
                    raise DermcamError(f"heatmaps for unknown image id(s) {unknown[:3]}", f)
                items = [cache.get(by_id[i], size) for i in ids]
                masks = np.stack([it["mask"] for it in items]).astype(bool)
                cams = b["heatmaps"].astype(np.float32)
                t_m = time.perf_counter()
                values, reasons = lk.score_batch(cams, masks)
                metric_seconds += time.perf_counter() - t_m
                probs = b["probs"].astype(np.float64)
                labels = b["labels"].astype(int)
                pred = (probs >= thresholds[name]).astype(int)
                df = pd.DataFrame({"image_id": ids, "model": name, "method": method,
                                   "label": labels, "prob_malignant": np.round(probs, 6),
                                   "pred": pred, "correct": (pred == labels),
                                   "cam_target": b["targets"].astype(int)})
                for k, v in values.items():
                    df[k] = v
                df["reason"] = reasons
                if all(it["artifacts"] is not None for it in items):
                    arts = np.stack([it["artifacts"] for it in items])
                    codes = list(range(1, len(art_names) + 1))
                    mass = lk.artifact_mass(cams, arts, codes)
                    for code, an in zip(codes, art_names):
                        df[f"mass_{an}"] = mass[code]
                if meta_by_id is not None:
                    for an in art_names:
                        col = f"artifact_{an}"
                        if col in meta_by_id.columns:
                            df[col] = meta_by_id.loc[ids, col].to_numpy()
                frames.append(df)
    att = pd.concat(frames, ignore_index=True)
    att = att.drop_duplicates(["image_id", "model", "method"], keep="last")
    att = att.sort_values(["model", "method", "image_id"], kind="stable").reset_index(drop=True)
    float_cols = att.select_dtypes("float").columns
    att[float_cols] = att[float_cols].round(6)
    write_csv(run_dir / "attention.csv", att)
    summary = summarise_attention(att, manifest, sanity or {}, n_boot=n_boot,
                                  seed=manifest["seed"])
    if extra:
        summary.update(extra)
    summary.setdefault("timing", {})["metric_seconds"] = round(metric_seconds, 3)
    write_json(run_dir / "attention_summary.json", summary)
    if figures:
        attention_figures(run_dir, att, manifest)
    return summary


SUMMARY_METRICS = ("leakage", "inside_score", "outside_score", "lesion_area", "chance_leakage",
                   "excess_leakage", "localisation_gain", "pixel_auroc", "rank_accuracy",
                   "pointing_game")


def summarise_attention(att: pd.DataFrame, manifest, sanity: dict, n_boot: int, seed: int
                        ) -> dict[str, Any]:
    from dermcam import leakage as lk

    by_class = lk.summarise(att, SUMMARY_METRICS, by=("model", "method", "label"),
                            n_boot=n_boot, seed=seed)
    by_correct = lk.summarise(att, ("leakage", "excess_leakage", "pixel_auroc"),
                              by=("model", "method", "correct"), n_boot=n_boot, seed=seed)
    overall = lk.summarise(att, SUMMARY_METRICS, by=("model", "method"), n_boot=n_boot,
                           seed=seed)
    tests = {}
    for (model, method), g in att.groupby(["model", "method"], sort=True):
        key = f"{model}/{method}"
        entry: dict[str, Any] = {}
        for metric in ("leakage", "excess_leakage", "pixel_auroc"):
            try:
                entry[f"classes_{metric}"] = lk.compare_classes(g, metric)
            except ValueError as exc:
                entry[f"classes_{metric}"] = {"error": str(exc)}
        try:
            entry["size_confound"] = lk.size_confound(g, "leakage")
        except ValueError as exc:
            entry["size_confound"] = {"error": str(exc)}
        arts = [c.removeprefix("artifact_") for c in g.columns if c.startswith("artifact_")
                and f"mass_{c.removeprefix('artifact_')}" in g.columns]
        if arts:
            try:
                entry["artifacts"] = lk.artifact_summary(g, arts).to_dict(orient="records")
            except ValueError as exc:
                entry["artifacts"] = {"error": str(exc)}
        if key in sanity:
            entry["sanity"] = sanity[key]
        tests[key] = entry
    reasons = att.loc[att["reason"] != "", "reason"].value_counts().to_dict()
    return {"schema_version": 1, "n_images": int(att["image_id"].nunique()),
            "models": sorted(att["model"].unique().tolist()),
            "methods": sorted(att["method"].unique().tolist()),
            "undefined": reasons,
            "metric_definitions": {k: {"definition": v.definition,
                                       "higher_is_better": v.higher_is_better,
                                       "chance": lk.CHANCE.get(k)} for k, v in lk.METRICS.items()},
            "by_class": by_class.to_dict(orient="records"),
            "by_correct": by_correct.to_dict(orient="records"),
            "overall": overall.to_dict(orient="records"),
            "tests": tests}


def attention_figures(run_dir: Path, att: pd.DataFrame, manifest, n_examples: int = 3) -> None:
    from dermcam import attention_plots as ap
    from dermcam import leakage as lk
    from dermcam.data import load_dataset
    from dermcam.data.cache import ImageCache

    figs = run_dir / "figures"
    size = manifest["config"]["image_size"]
    ds = load_dataset(manifest["data"]["root"])
    by_id = {s.image_id: s for s in ds.split("test")}
    cache = ImageCache(manifest["config"].get("cache_dir"))
    first_method = sorted(att["method"].unique())[0]
    for model, g in att.groupby("model"):
        gm = g[g["method"] == first_method]
        disp = manifest["models"].get(model, {}).get("display_name", model)
        ap.plot_attention_summary(gm, figs / f"attention_leakage_analysis_{model}.png",
                                  title=f"{disp} ({first_method}): attention leakage")
    ap.plot_leakage_vs_accuracy(att[att["method"] == first_method],
                                figs / "leakage_vs_accuracy.png")
    ap.plot_leakage_vs_area(att[att["method"] == first_method], figs / "leakage_vs_area.png")
    table = lk.summarise(att, ("excess_leakage", "localisation_gain", "pixel_auroc",
                               "pointing_game"), by=("model", "method"), n_boot=200, seed=0)
    ap.plot_size_aware_table(table, figs / "size_aware_scores.png")
    for (model, method), g in att.groupby(["model", "method"]):
        valid = g[g["reason"] == ""].sort_values("excess_leakage")
        picks = [("least", r) for r in valid.head(n_examples).itertuples()] + \
                [("most", r) for r in valid.tail(n_examples).itertuples()]
        heats = _heatmaps_for(run_dir, model, method, {r.image_id for _, r in picks})
        for kind, r in picks:
            heat = heats[r.image_id]
            item = cache.get(by_id[r.image_id], size)
            ap.plot_example(item["image"], heat, item["mask"].astype(bool),
                            figs / "examples" / f"{model}_{method}_{kind}_{r.image_id}.png",
                            title=f"{r.image_id} ({'malignant' if r.label else 'benign'}, "
                                  f"p={r.prob_malignant:.2f}, {model}/{method})")


def _heatmaps_for(run_dir: Path, model: str, method: str, image_ids: set[str]
                  ) -> dict[str, np.ndarray]:
    """The saved heatmaps of ``image_ids``, reading each batch file once."""
    found: dict[str, np.ndarray] = {}
    for f in sorted((run_dir / HEATMAP_DIR / model / method).glob("batch_*.npz")):
        if len(found) == len(image_ids):
            break
        b = _load_batch(f)
        for i, image_id in enumerate(b["ids"]):
            if str(image_id) in image_ids:
                found[str(image_id)] = b["heatmaps"][i].astype(np.float32)
    missing = image_ids - found.keys()
    if missing:
        raise DermcamError(f"no saved heatmap for {sorted(missing)[0]}",
                           run_dir / HEATMAP_DIR / model)
    return found
