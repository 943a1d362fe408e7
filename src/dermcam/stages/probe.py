"""The probe stage: does the model *use* what lies outside the lesion? (docs/probes.md)

A heatmap says where gradients flow, not what a model relies on, so the probes change the
image and watch P(malignant). This is the stage over a run folder (resumable batches,
``probe.csv``, ``probe_summary.json``, figures, manifest); the pieces below it
(perturb, probe_scoring, probe_real, probe_stats, probe_figures) are re-exported here.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermcam import run as runmod
from dermcam.audit_set import AuditSet, by_columns, check_by, image_columns
from dermcam.config import NEGLIGIBLE_DELTA, ProbeConfig
from dermcam.data.artifact_labels import PREFIX
from dermcam.data.metadata import metadata_table
from dermcam.errors import DermcamError
from dermcam.heatmap_files import heatmap_batches, heatmap_dir, read_heatmap_batch
from dermcam.io import read_json, write_csv, write_json
from dermcam.perturb import (
    DILATE_FRACTION,
    OPTIONAL_PROBES,
    PROBES,
    Clock,
    PerturbConfig,
    artifact_names,
    perturb,
    skip_reason,
)
from dermcam.probe_figures import PROBE_TITLES, write_figures
from dermcam.probe_real import context_swap, hot_spots
from dermcam.probe_scoring import inference_precision, load_models, score_images
from dermcam.probe_stats import (
    SUBGROUP_TITLES,
    artifact_presence,
    find,
    normalise_rows,
    probe_subgroups,
    summarise,
)

#: The stage's own names, and those of the modules below it that callers import from here.
__all__ = [
    "CAVEAT", "CSV_COLUMNS", "NEGLIGIBLE_DELTA", "PROBES", "PROBE_CSV",
    "PROBE_DIR", "PROBE_SUMMARY", "PROBE_TITLES", "SUBGROUP_TITLES", "SUMMARY_SCHEMA",
    "PerturbConfig", "ProbeConfig", "artifact_flags", "artifact_presence", "chosen_heatmaps",
    "context_swap", "find", "hot_spots", "inference_precision", "perturb", "probe_subgroups",
    "read_rows", "read_summary", "read_summary_object", "run_probe", "score_images",
    "skip_reason", "summarise",
]

log = logging.getLogger(__name__)

PROBE_DIR = runmod.PROBE_DIR  # file names: dermcam.run, the one place they are spelled
PROBE_CSV = runmod.PROBE_CSV
PROBE_SUMMARY = runmod.PROBE_SUMMARY
#: probe_summary.json's layout: 2 = ``{"entries", "subgroups", "artifact_presence"}`` (1 was
#: the bare list of entries, still read).
SUMMARY_SCHEMA = 2
CAVEAT = ("Inpainting leaves traces a model may react to; a changed prediction shows "
          "reliance, an unchanged one does not prove its absence.")
CSV_COLUMNS = ["image_id", "label", "model", "probe", "artifact", "placement", "prob_intact",
               "prob_perturbed", "delta", "threshold", "decision_intact", "decision_perturbed",
               "changed_share", "lesion_area"]


def artifact_flags(ds, samples) -> pd.DataFrame | None:
    """``image_id`` and the 0/1 ``artifact_<name>`` metadata of ``samples``, or None."""
    meta = metadata_table(ds)
    cols = [c for c in (meta.columns if meta is not None else []) if c.startswith(PREFIX)]
    if not cols:
        return None
    ids = [s.image_id for s in samples]
    out = meta.reindex(ids)[cols].apply(pd.to_numeric, errors="coerce").astype("float64")
    out = out.loc[:, out.notna().any()]
    return None if out.empty else out.rename_axis("image_id").reset_index()


def _batch_rows(models, chunk, items, cfg: PerturbConfig, batch_size: int, pool, clock,
                timing: dict[str, float], device) -> pd.DataFrame:
    """Perturb one batch of images (once) and score every variant with every model."""
    t0 = time.perf_counter()
    jobs = [(s.image_id, it["image"], it["mask"], it.get("artifacts")) for s, it in
            zip(chunk, items)]
    variants = list(pool.map(lambda j: perturb(j[1], j[2], j[3], j[0], cfg, clock), jobs))
    timing["perturb_seconds"] += time.perf_counter() - t0
    intact = np.stack([j[1] for j in jobs])
    flat = [v for vs in variants for v in vs]
    stack = np.stack([v.image for v in flat]) if flat else intact[:0]
    owner = np.repeat(np.arange(len(jobs)), [len(vs) for vs in variants])
    areas = np.array([float(np.asarray(j[2]).astype(bool).mean()) for j in jobs])
    labels = np.array([s.label for s in chunk], np.int64)
    frames = []
    for name, model, thr in models:
        t1 = time.perf_counter()
        p0 = score_images(model, intact, batch_size, device)
        p1 = score_images(model, stack, batch_size, device) if len(stack) else np.zeros(0)
        timing["predict_seconds"] += time.perf_counter() - t1
        timing["images_scored"] += len(intact) + len(stack)
        frames.append(pd.DataFrame({
            "image_id": [jobs[k][0] for k in owner], "label": labels[owner], "model": name,
            "probe": [v.probe for v in flat], "artifact": [v.artifact for v in flat],
            "placement": [v.placement for v in flat], "prob_intact": p0[owner],
            "prob_perturbed": p1, "delta": p1 - p0[owner], "threshold": thr,
            "decision_intact": (p0[owner] >= thr).astype(int),
            "decision_perturbed": (p1 >= thr).astype(int),
            "changed_share": [v.changed_share for v in flat], "lesion_area": areas[owner]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CSV_COLUMNS)


def read_rows(path: str | Path) -> pd.DataFrame:
    """A ``probe.csv`` (or one batch of it) as a DataFrame; ``artifact`` is "" where none."""
    try:
        df = pd.read_csv(path, dtype={"image_id": str, "model": str, "probe": str,
                                      "artifact": str}, keep_default_na=False, na_values=[""])
    except Exception as exc:
        raise DermcamError(f"unreadable probe file ({type(exc).__name__}); delete it and "
                           "re-run 'dermcam probe'", path) from exc
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise DermcamError(f"probe file lacks columns {', '.join(missing)}; delete it and "
                           "re-run 'dermcam probe'", path)
    return normalise_rows(df)


def _resumed(path: Path, chunk, names, cache, size: int, skipped: list) -> pd.DataFrame | None:
    """The rows an earlier run wrote for ``chunk`` at ``path``, or None."""
    if not path.exists():
        return None
    rows = read_rows(path)
    ids = {s.image_id for s in chunk}
    if not (len(rows) and set(rows["image_id"]) <= ids and set(rows["model"]) == set(names)):
        return None
    done = set(rows["image_id"])
    for s in chunk:  # images this batch skipped when it was computed
        if s.image_id not in done:
            skipped.append({"image_id": s.image_id,
                            "reason": skip_reason(cache.get(s, size)["mask"])})
    return rows


def _probe_batches(out: runmod.Outputs, samples, names, models, cfg, cache, size: int,
                   skipped: list, batch_size: int, progress, workers, device):
    """``(probe rows, inpainting clock, timing)``: every batch perturbed once and scored by
    every model, or read back from ``probe/``; images that cannot be probed go to ``skipped``."""
    clock = Clock()
    timing = {"perturb_seconds": 0.0, "predict_seconds": 0.0, "images_scored": 0}
    starts = list(range(0, len(samples), batch_size))
    frames = []
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for k, start in enumerate(starts):
            path = out.probe_batches / f"batch_{start:06d}.csv"
            chunk = samples[start:start + batch_size]
            rows = _resumed(path, chunk, names, cache, size, skipped)
            if rows is None:
                keep = []
                for s, it in zip(chunk, [cache.get(s, size) for s in chunk]):
                    why = skip_reason(it["mask"])
                    if why:
                        skipped.append({"image_id": s.image_id, "reason": why})
                    else:
                        keep.append((s, it))
                rows = _batch_rows(models, [s for s, _ in keep], [it for _, it in keep], cfg,
                                   batch_size * 2, pool, clock, timing, device) if keep else \
                    pd.DataFrame(columns=CSV_COLUMNS)
                write_csv(path, rows[CSV_COLUMNS])
            frames.append(rows)
            if progress:
                progress(k + 1, len(starts))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CSV_COLUMNS)
    df = df[CSV_COLUMNS].sort_values(["model", "image_id", "probe", "artifact", "placement"],
                                     kind="stable").reset_index(drop=True)
    return df, clock, timing


def run_probe(run_dir: runmod.Run | str | Path, config: ProbeConfig | None = None,
              audit: AuditSet | None = None, progress=None) -> list[dict[str, Any]]:
    """Run the probes on every trained model and masked image of ``audit`` (default the
    run's test split; another data set's go to ``RUN/external/<name>/`` at the run's
    thresholds) and write the outputs (settings: :class:`~dermcam.config.ProbeConfig`).
    Resumes per batch when the same configuration ran before. Returns the summary's entries.
    """
    run = runmod.Run.of(run_dir, require="train")
    opts = config or ProbeConfig()
    seed = run.seed if opts.seed is None else int(opts.seed)
    cfg = PerturbConfig(probes=tuple(opts.probes or PROBES),
                        artifacts=tuple(opts.artifacts) if opts.artifacts else artifact_names(),
                        placements=int(opts.placements), seed=seed,
                        dilate=float(DILATE_FRACTION if opts.dilate is None else opts.dilate),
                        inpaint=opts.inpaint)
    names = run.trained_models
    if not names:
        raise DermcamError("no trained model in this run; finish 'dermcam train' first", run.dir)
    t0 = time.perf_counter()
    audit = (audit.at("probe", masks=True, limit=opts.limit, what="the probes", warm=True)
             if audit else AuditSet.open(run).at("probe", limit=opts.limit, warm=True))
    by, limit, batch_size = by_columns(opts.by), opts.limit, opts.batch_size
    _check_inputs(run, audit, cfg, by)
    prev = run.stage_entry(audit.stage)
    precisions = {m: inference_precision(opts.precision, m, opts.device, run.image_size)
                  for m in names}
    if prev.get("config_key") != cfg.key() or prev.get("limit") != limit or \
            prev.get("batch_size") != batch_size or \
            prev.get("precision", dict.fromkeys(names, "32-true")) != precisions:
        shutil.rmtree(audit.out.probe_batches, ignore_errors=True)
    # a failure (Ctrl-C too) is recorded; the batches on disk resume next time
    with run.stage(audit.stage, config=asdict(cfg), config_key=cfg.key(), limit=limit,
                   batch_size=batch_size, precision=precisions, **audit.where) as record:
        return _probe_stage(run, audit, names, cfg, opts, by, precisions, t0, record, progress)


def _check_inputs(run: runmod.Run, audit: AuditSet, cfg: PerturbConfig, by) -> None:
    """Refuse an unknown ``--by`` column, a context swap without labels, hot spots without maps."""
    ds = audit.ds
    if by:
        check_by(ds, by)
    if "context_swap" in cfg.probes and artifact_flags(ds, audit.samples) is None:
        raise DermcamError("the context swap needs per-image artifact labels: pass "
                           "--artifact-labels FILE (e.g. isic_bias.csv) or use a data set "
                           "with artifact_<name> columns", ds.root)
    if "hot_spots" in cfg.probes and \
            run.stage_entry(audit.key("explain")).get("status") != runmod.STATUS_COMPLETE:
        raise DermcamError("the heatmap-guided probe (hot_spots) needs the models' heatmaps: "
                           "run 'dermcam explain' on these images first", run.dir)


def _probe_stage(run: runmod.Run, audit: AuditSet, names, cfg: PerturbConfig,
                 opts: ProbeConfig, by, precisions: dict[str, str], t0: float,
                 record: dict[str, Any], progress) -> list[dict[str, Any]]:
    """Batches, summary and figures of ``audit``; ``record`` gets what the manifest keeps."""
    out, cache, size, device = audit.out, audit.cache, audit.size, opts.device
    samples = [s for s in audit.samples if s.mask_path is not None]
    skipped = [{"image_id": s.image_id, "reason": "no lesion mask"} for s in audit.samples
               if s.mask_path is None]
    models = load_models(run, names, device, precisions)
    df, clock, timing = _probe_batches(out, samples, names, models, cfg, cache, size,
                                       skipped, opts.batch_size, progress, opts.workers, device)
    if not set(cfg.probes) - set(OPTIONAL_PROBES):  # only the real-pixel probes
        probed = [s for s in samples if skip_reason(cache.get(s, size)["mask"]) is None]
    else:
        probed = [s for s in samples if s.image_id in set(df["image_id"])]
    if not probed:
        raise DermcamError("no test image could be probed (the probes need lesion masks): "
                           f"{len(skipped)} skipped", audit.ds.root)
    write_csv(out.probe_csv, df)
    summary = _summary(run, audit, df, cfg, probed, models, names, record, opts, by)
    write_json(out.probe_summary, summary)
    if opts.figures and not df.empty:
        write_figures(out.figures, df, summary["entries"], samples, cache, size, cfg,
                      run.display_names)
    _timing(timing, clock, len(probed), t0)
    record.update(n_images=len(probed), rows_per_model=int(len(df) / max(1, len(names))),
                  skipped=skipped, inpaint=f"OpenCV {cfg.inpaint}", timing=timing,
                  by=list(by_columns(by)),
                  artifact_presence=sorted({r["artifact"] for r in
                                            summary.get("artifact_presence", [])}))
    if skipped:
        log.warning("%d test image(s) skipped by the probes, e.g. %s: %s", len(skipped),
                    skipped[0]["image_id"], skipped[0]["reason"])
    return summary["entries"]


def _summary(run: runmod.Run, audit: AuditSet, df: pd.DataFrame, cfg: PerturbConfig, probed,
             models, names, record: dict[str, Any], opts: ProbeConfig, by) -> dict[str, Any]:
    """``probe_summary.json``: the entries (real-pixel probes last), subgroups with ``by``,
    artifact presence where images carry artifact flags, and what an external set is."""
    ds, cache, size, n_boot, seed = audit.ds, audit.cache, audit.size, opts.n_boot, cfg.seed
    explained = run.stage_entry(audit.key("explain"))
    attention = _attention_for_tracking(audit.out, explained)
    entries = [] if df.empty else summarise(df, cfg, n_boot=n_boot, seed=seed, attention=attention)
    summary: dict[str, Any] = {"schema_version": SUMMARY_SCHEMA, "entries": entries}
    if by:
        summary["subgroups"] = probe_subgroups(
            df, image_columns(ds, probed, cache, size, by), by, n_boot=n_boot, seed=seed,
            min_group=opts.min_group)
    flags = artifact_flags(ds, probed)
    if flags is not None:
        summary["artifact_presence"] = artifact_presence(df, flags, n_boot=n_boot, seed=seed)
    real = [p for p in OPTIONAL_PROBES if p in cfg.probes]
    if real:
        items = [cache.get(s, size) for s in probed]
        images = np.stack([it["image"] for it in items])
        masks = np.stack([np.asarray(it["mask"], bool) for it in items])
        labels = np.array([s.label for s in probed])
        common = dict(n_boot=n_boot, seed=seed, feather=cfg.dilate, method=cfg.inpaint,
                      batch_size=opts.batch_size * 2, device=opts.device)
    for p in real:
        t1 = time.perf_counter()
        if p == "context_swap" and flags is not None:
            entries += context_swap(models, images, masks, labels, flags, **common)
        elif p == "hot_spots":
            maps = chosen_heatmaps(audit.out.root, explained, names, probed)
            entries += hot_spots(models, images, masks, labels, maps, flags, **common)
        record[f"{p}_seconds"] = round(time.perf_counter() - t1, 2)
    if audit.external:
        summary["external"] = {
            **audit.about(), "thresholds": "each model's threshold chosen on the "
                                           "training data's validation split",
            "trained_on": run.data.get("name")}
    return summary


def _timing(timing: dict[str, Any], clock: Clock, n_images: int, t0: float) -> None:
    """``timing`` rounded for the manifest, with the throughput and the wall time."""
    timing.update({
        "inpaint_seconds": round(clock.seconds, 3),
        "perturb_seconds": round(timing["perturb_seconds"], 3),
        "predict_seconds": round(timing["predict_seconds"], 3),
        "scored_images_per_second": round(timing["images_scored"] / timing["predict_seconds"], 1)
        if timing["predict_seconds"] > 0 else None,
        "probed_images_per_second": round(n_images / (time.perf_counter() - t0), 2),
        "wall_seconds": round(time.perf_counter() - t0, 2)})


def chosen_heatmaps(root: Path, st: dict[str, Any], names, samples) -> dict[str, list]:
    """``{model: [heatmap or None per sample]}`` at each model's chosen method and layer."""
    out: dict[str, list] = {m: [None] * len(samples) for m in names}
    where = {s.image_id: k for k, s in enumerate(samples)}
    for sel in st.get("layers") or []:
        if sel["model"] not in out:
            continue
        folder = heatmap_dir(root, sel["model"], sel["method"], sel["layer"])
        for f in heatmap_batches(folder):
            b = read_heatmap_batch(f)
            for i, h in zip(b["ids"], b["heatmaps"], strict=True):
                if str(i) in where:
                    out[sel["model"]][where[str(i)]] = h.astype(np.float32)
    return out


def _attention_for_tracking(out: runmod.Outputs, st: dict | None) -> pd.DataFrame | None:
    """attention.csv rows at each model's chosen method and layer (None without explain)."""
    if not out.attention.exists() or (st or {}).get("status") != runmod.STATUS_COMPLETE:
        return None
    att = pd.read_csv(out.attention, dtype={"image_id": str, "model": str, "method": str, "layer": str},
                      keep_default_na=False, na_values=[""])
    keep = []
    for sel in st.get("layers") or []:
        m = (att["model"] == sel["model"]) & (att["method"] == sel["method"])
        if "layer" in att.columns:
            m &= att["layer"] == sel["layer"]
        if m.any() and sel["model"] not in {k["model"].iloc[0] for k in keep}:
            keep.append(att[m].assign(cam=f"{sel['method']}@{sel['layer']}"))
    return pd.concat(keep, ignore_index=True) if keep else None


def read_summary_object(folder: str | Path) -> dict[str, Any] | None:
    """The whole ``probe_summary.json`` in ``folder`` (None when there is none); a pre-schema-2
    bare list of entries is read as its entries."""
    path = Path(folder) / PROBE_SUMMARY
    if not path.exists():
        return None
    obj = read_json(path)
    if isinstance(obj, list):
        return {"schema_version": 1, "entries": obj}
    if not isinstance(obj, dict) or not isinstance(obj.get("entries"), list):
        raise DermcamError("probe_summary.json holds no list of entries", path)
    return obj


def read_summary(run_dir: str | Path) -> list[dict[str, Any]] | None:
    """The entries of ``probe_summary.json`` in ``run_dir`` (None when there is none)."""
    obj = read_summary_object(run_dir)
    return None if obj is None else obj["entries"]
