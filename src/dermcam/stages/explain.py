"""The explain stage: heatmaps for every model and test image, scored against the masks.

Heatmaps are streamed to one compressed batch file each (:mod:`dermcam.heatmap_files`),
so the stage resumes, re-scores without a model (:func:`score_run`) and stays flat in
memory; the pieces it composes live below it."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from dermcam import run as runmod
from dermcam.attention_figures import attention_figures, example_rows, write_examples
from dermcam.attention_scoring import attention_table
from dermcam.attention_summary import (
    PER_IMAGE_WHEN_CLUSTERED,
    SUBGROUP_TITLES,
    SUMMARY_METRICS,
    TEST_METRICS,
    summarise_attention,
)
from dermcam.attribution import TARGETS, check_method
from dermcam.audit_set import AuditSet, by_columns, check_by, cluster_name
from dermcam.cam_batches import batch_starts, compute_heatmaps
from dermcam.checkpoints import update_checkpoint
from dermcam.config import ExplainConfig
from dermcam.device import resolve_device, set_shard_threads
from dermcam.errors import DermcamError
from dermcam.io import write_csv, write_json
from dermcam.layer_choice import parse_layer_spec, resolve_layers
from dermcam.localisation import masked_test_set
from dermcam.sanity import check_selection

__all__ = [
    "PER_IMAGE_WHEN_CLUSTERED", "SUBGROUP_TITLES", "SUMMARY_METRICS", "TEST_METRICS",
    "example_rows", "parse_layer_spec", "run_explain", "score_run", "summarise_attention",
    "write_examples",
]


def run_explain(run_dir: runmod.Run | str | Path, config: ExplainConfig | None = None,
                audit: AuditSet | None = None, progress=None) -> dict[str, Any]:
    """Compute (or resume) heatmaps for every trained model and method, then score them;
    returns the attention summary.

    ``shard=(i, n)`` computes only batches ``k % n == i`` and does not score; ``merge`` only
    checks and scores. Another data set's masked images go into ``RUN/external/<name>/``,
    with layers chosen on the run's own validation images."""
    run = runmod.Run.of(run_dir, require="train")
    cfg = config or ExplainConfig()
    cfg = replace(cfg, methods=_check_options(cfg), shard=parse_shard(cfg.shard),
                  by=by_columns(cfg.by))
    audit = audit.at("explain", masks=True) if audit else masked_test_set(run)
    if cfg.by:
        check_by(audit.ds, cfg.by)
    if (run.stage_setting(audit.stage, "normalize", cfg.normalize) != cfg.normalize
            or run.stage_setting(audit.stage, "target", cfg.target) != cfg.target):
        raise DermcamError("saved heatmaps use another --target/--normalize; delete "
                           f"{audit.out.heatmaps} to recompute", run.dir)
    dev = resolve_device(cfg.device, cfg.shard)
    set_shard_threads(dev, cfg.shard)
    if cfg.shard is not None:  # a shard only computes its heatmap batches and records nothing
        return _explain_stage(run, audit, {}, cfg, dev, progress)
    with run.stage(audit.stage, methods=cfg.methods, target=cfg.target,
                   normalize=cfg.normalize, limit=cfg.limit, **audit.where) as record:
        return _explain_stage(run, audit, record, cfg, dev, progress)


def _check_options(cfg: ExplainConfig) -> list[str]:
    """The methods checked (``["auto"]`` kept); a bad ``--margin`` or ``--target`` refused."""
    methods = ["auto"] if list(cfg.methods) == ["auto"] else [check_method(m)
                                                             for m in cfg.methods]
    if not cfg.margin > 0:
        raise DermcamError(f"--margin must be > 0, got {cfg.margin}")
    if cfg.target not in TARGETS:
        raise DermcamError(f"unknown --target {cfg.target!r}; choose from {', '.join(TARGETS)}")
    return methods


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``(i, n)`` from ``"i/n"`` or a pair, refused in one line unless ``0 <= i < n``."""
    if shard is None:
        return None
    try:
        i, n = (int(v) for v in (shard.split("/") if isinstance(shard, str) else shard))
    except ValueError:
        raise DermcamError(f"--shard must look like 0/4, got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise DermcamError(f"--shard must be i/n with 0 <= i < n, got {i}/{n}")
    return i, n


def _explain_stage(run: runmod.Run, audit: AuditSet, record: dict[str, Any], cfg: ExplainConfig,
                   dev, progress) -> dict[str, Any]:
    """The stage's work once its inputs are checked: layer choice, heatmaps, sanity
    check, scores and summary; ``record`` receives what the manifest keeps."""
    out, shard = audit.out, cfg.shard
    samples = audit.samples[:cfg.limit] if cfg.limit else audit.samples
    t0 = time.perf_counter()
    names = run.trained_models
    selection, bench_rows = resolve_layers(
        run, names, cfg.methods, cfg.layer, cfg.bench_methods, cfg.bench_images,
        normalize=cfg.normalize, target=cfg.target, n_boot=cfg.n_boot)
    bench_seconds = time.perf_counter() - t0
    starts = batch_starts(run, out, selection, len(samples), cfg.batch_size, shard, cfg.merge)
    t_cam, n_computed = compute_heatmaps(run, out, names, selection, samples, starts,
                                         cfg.batch_size, dev, cfg.fast, cfg.target,
                                         cfg.normalize, progress)
    timing = {"cam_seconds": round(t_cam, 3), "images_computed": n_computed, "device": str(dev),
              "images_per_second": round(n_computed / t_cam, 2) if t_cam > 0 else None,
              "benchmark_seconds": round(bench_seconds, 3)}
    if shard is not None:
        return {"shard": list(shard), "batches": len(starts), "timing": timing,
                "folder": str(out.root)}
    if not audit.external:  # the run's own choice, for 'dermcam predict'
        for sel in selection:
            update_checkpoint(run.model_file(sel["model"]),
                              {"cam": {k: sel[k] for k in ("method", "layer", "reason")}})
    t_s = time.perf_counter()
    sanity_res = check_selection(run, selection, samples, cfg.normalize, n_boot=cfg.n_boot,
                                 cascade=cfg.cascade, out=out) if cfg.sanity else {}
    timing["sanity_seconds"] = round(time.perf_counter() - t_s, 3)
    t_score = time.perf_counter()
    extra = {"timing": timing, "layer_choice": selection, "localisation": bench_rows}
    if audit.external:  # which set was audited, and how
        extra["external"] = {
            **audit.about(), "images": f"{audit.which}, those with a lesion mask",
            "thresholds": "each model's threshold chosen on the training data's validation "
                          "split", "layers": "chosen on the run's own validation images",
            "trained_on": run.data.get("name")}
    summary = _score(run, audit, selection, sanity_res, cfg.n_boot, cfg.figures, extra,
                     cfg.margin, cfg.by, cfg.min_group)
    if cfg.figures and not audit.external:
        if bench_rows:
            from dermcam.attention_plots import plot_localisation_grid
            plot_localisation_grid(bench_rows, out.figures / "localisation_grid.png",
                                   chosen=selection, displays=run.display_names)
        write_examples(run, out, selection, audit.samples)
    timing["score_seconds"] = round(time.perf_counter() - t_score, 3)
    timing["metric_seconds"] = summary["timing"]["metric_seconds"]
    timing["explain_seconds"] = round(time.perf_counter() - t0, 3)
    record.update(methods=sorted({sel["method"] for sel in selection}), target=cfg.target,
                  normalize=cfg.normalize, limit=cfg.limit, n_images=len(samples),
                  layers=selection, timing=timing, by=list(cfg.by))
    return summary


def score_run(run_dir: runmod.Run | str | Path, selection: list[dict] | None = None,
              sanity: dict | None = None, n_boot: int = 1000, figures: bool = True,
              extra: dict | None = None, margin: float = 0.02, by=(),
              min_group: int | None = None) -> dict[str, Any]:
    """Score saved heatmap batches against their masks; write attention.csv, summary, figures."""
    run = runmod.Run.of(run_dir, require="train")
    selection = selection or [dict(s) for s in run.stage_setting("explain", "layers") or []]
    if not selection:
        raise DermcamError("no explain selection recorded; run 'dermcam explain' first", run.dir)
    return _score(run, masked_test_set(run), selection, sanity, n_boot, figures, extra, margin,
                  by, min_group)


def _score(run: runmod.Run, audit: AuditSet, selection, sanity, n_boot: int, figures: bool,
           extra: dict | None, margin: float, by=(), min_group: int | None = None
           ) -> dict[str, Any]:
    """:func:`score_run` on ``audit``, whose heatmaps lie (and outputs go) under ``audit.out``."""
    out = audit.out
    att, metric_seconds = attention_table(run, audit, selection, by)
    write_csv(out.attention, att)
    summary = summarise_attention(att, run.stage_setting(audit.stage, "target"), sanity or {},
                                  n_boot=n_boot, seed=run.seed, margin=margin,
                                  cluster_name=cluster_name(audit.ds), by=by, min_group=min_group)
    if extra:
        summary.update(extra)
    summary.setdefault("timing", {})["metric_seconds"] = round(metric_seconds, 3)
    write_json(out.attention_summary, summary)
    if figures:
        attention_figures(run, out, att, audit.samples)
    return summary


