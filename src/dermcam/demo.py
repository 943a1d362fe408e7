"""``dermcam demo``: the whole study on the synthetic benchmark, plus the planted-shortcut
experiment that shows what the audit is for.

``--out`` holds ``data/`` and ``run/`` (the study), ``shortcut/data`` and ``shortcut/run``
(rulers tied to malignancy in the training split only; one model audited at the control's
CAM layer) and the comparison in ``run/shortcut_experiment.json`` and
``run/figures/shortcut_example.png``."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermcam import run as runmod
from dermcam import views
from dermcam.attribution import CamExplainer, check_method
from dermcam.augment import preprocess
from dermcam.config import NEGLIGIBLE_DELTA, ExplainConfig, ProbeConfig, TrainConfig
from dermcam.data.artifact_labels import PREFIX
from dermcam.data.synth import ARTIFACTS, SynthConfig, generate
from dermcam.errors import DermcamError
from dermcam.io import link_identical, read_json, write_bytes, write_json
from dermcam.localisation import paired_artifact_ratio
from dermcam.models import DEFAULT_MODELS, imagenet_available
from dermcam.perturb import DILATE_FRACTION, dilate_mask
from dermcam.pictures import render_shortcut_example
from dermcam.stages.evaluate import run_evaluate
from dermcam.stages.explain import run_explain
from dermcam.stages.probe import (
    PerturbConfig,
    artifact_flags,
    find,
    perturb,
    read_summary,
    run_probe,
    score_images,
    skip_reason,
)
from dermcam.stages.report import run_report
from dermcam.stages.train import train
from dermcam.stats import bootstrap_indices

log = logging.getLogger(__name__)

#: Methods the demo's localisation benchmark scores (EigenCAM, by far the slowest, left out).
DEMO_BENCH_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "xgradcam")
#: The demo's CAM method (layer chosen per model). HiResCAM credits a location only where
#: the output is sensitive to it there; Grad-CAM-style channel weights put 1.4-2.1x the
#: rulers' area share on them even for the control, HiResCAM 0.28-0.56x (benchmarks/README.md).
DEMO_METHOD = "hirescam"
SHORTCUT_EXPERIMENT = runmod.SHORTCUT_EXPERIMENT
SHORTCUT_ARTIFACT = "ruler"
#: Seeded placements per image and inserted artifact in the demo's probes.
DEMO_PLACEMENTS = 2
#: Adam's learning rate from scratch at 64 px; MobileNet-V2 learns too slowly at 1e-3 in 10
#: epochs, while 3e-3 costs the other two (benchmarks/README.md has the sweep).
DEMO_LR = 1e-3
DEMO_LR_BY_MODEL = {"mobilenet_v2": 3e-3}


def run_demo(out: Path, preset: str = "clean", n_train: int = 900, n_test: int = 379,
             image_size: int = 64, epochs: int = 10, source_size: int = 128,
             models=DEFAULT_MODELS, seed: int = 0, overwrite: bool = True, say=print,
             progress_bar=None, quiet: bool = False, show=None, shortcut: bool = True,
             shortcut_model: str = "resnet18", method: str = DEMO_METHOD,
             precision: str = "auto") -> Path:
    """The demo into ``out``; returns the study's run folder."""
    if method != "auto":
        check_method(method)  # before minutes of data and training, not after
    out = Path(out)
    t0 = time.perf_counter()
    data, run = out / "data", out / "run"
    _fresh_demo_folder(out, data, overwrite)
    models = list(models)
    ui = _DemoSteps(7 if shortcut else 6, say, progress_bar, show)
    ui.step(1, f"synthetic benchmark ({preset}): {n_train} train + {n_test} test images")
    synth = {"n_train": n_train, "n_test": n_test, "seed": seed, "image_size": source_size}
    cfg = SynthConfig.from_preset(preset, **synth)
    with ui.bar("synth") as cb:
        generate(data, cfg, progress=cb)
    recipe = {"weights": _demo_weights(ui, models), "image_size": image_size, "epochs": epochs,
              "seed": seed, "progress": not quiet, "precision": precision}
    summary = _study(ui, data, run, models, method, recipe)
    if shortcut:
        _shortcut_study(ui, out, run, models, shortcut_model, summary, synth, recipe)
    ui.step(ui.steps, "report")
    run_report(run)
    say(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return run


@dataclass
class _DemoSteps:
    """How the demo reports its numbered steps: ``say`` a line, ``progress_bar(desc)`` a
    stage's progress context, ``show(run, stage, tables)`` a stage's results."""

    steps: int
    say: Callable[[str], Any]
    progress_bar: Callable[[str], Any] | None
    show: Callable[[Path, str, Any], Any] | None

    def step(self, k: int, text: str) -> None:
        self.say(f"[{k}/{self.steps}] {text}")

    def bar(self, desc: str):
        return self.progress_bar(desc) if self.progress_bar else contextlib.nullcontext()

    def show_stage(self, run: Path, stage: str, tables: Callable[[], Any]) -> None:
        if self.show:
            self.show(run, stage, tables())


def _fresh_demo_folder(out: Path, data: Path, overwrite: bool) -> None:
    """Make ``out`` an empty demo folder (an earlier demo removed with ``overwrite``)."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DermcamError("demo folder is not empty; pass --overwrite", out)
        if not (out / "demo.json").exists() and not (data / "synth.json").exists():
            raise DermcamError("folder is not a dermcam demo; choose another --out", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text('{"kind": "dermcam-demo"}\n')


def _demo_weights(ui: _DemoSteps, models: list[str]) -> str:
    """``"imagenet"`` where every model's weights are cached, else ``"none"``, said either way."""
    if all(imagenet_available(m) for m in models):
        ui.step(2, "training with ImageNet weights from torchvision's cache")
        return "imagenet"
    ui.step(2, "ImageNet weights are not in torchvision's cache, so the demo trains "
            "from scratch (--weights none); 'dermcam train --weights imagenet' uses them "
            "when cached")
    return "none"


def _study(ui: _DemoSteps, data: Path, run: Path, models: list[str], method: str,
           recipe: dict[str, Any]) -> dict[str, Any]:
    """Steps 2 to 5 on ``data`` into ``run``: train, evaluate, explain, probe; returns
    explain's summary."""
    with ui.bar("decode + cache images") as cb:
        manifest = train(demo_train_config(data, run, models, **recipe), overwrite=True,
                         progress=cb)
    ui.show_stage(run, "train",
                  lambda: [views.training_table(runmod.Run(run, manifest).model_records)])
    ui.step(3, "evaluation on the test split (bootstrap CIs, paired tests)")
    with ui.bar("evaluate") as cb:
        result = run_evaluate(run, progress=cb)
    ui.show_stage(run, "evaluate", lambda: views.metrics_tables(result))
    ui.step(4, "attention on every test image, every model; the CAM method and layer "
            "chosen per model on masked validation images")
    with ui.bar("CAM batches") as cb:
        summary = run_explain(run, ExplainConfig(methods=[method], batch_size=32,
                                                 bench_methods=list(DEMO_BENCH_METHODS),
                                                 cascade=False), progress=cb)
    ui.show_stage(run, "explain", lambda: views.attention_sections(summary))
    ui.step(5, "behavioural probes: lesion removed, background removed, artifacts "
            "inserted and removed, every test image and model")
    with ui.bar("probe batches") as cb:
        entries = run_probe(run, ProbeConfig(placements=DEMO_PLACEMENTS), progress=cb)
    ui.show_stage(run, "probe", lambda: views.probe_sections({"entries": entries}))
    return summary


def _shortcut_study(ui: _DemoSteps, out: Path, run: Path, models: list[str],
                    shortcut_model: str, summary: dict[str, Any], synth: dict[str, Any],
                    recipe: dict[str, Any]) -> None:
    """Step 6: ``shortcut_model`` trained on the 'shortcut' preset of the same seed, audited
    at its control's method and layer; writes ``run``'s shortcut_experiment.json."""
    if shortcut_model not in models:
        raise DermcamError(f"the shortcut experiment's control is {shortcut_model}, which "
                           "is not among --models")
    ui.step(6, f"planted shortcut: {shortcut_model} trained where rulers mark "
            "malignancy in training only, audited beside its control")
    data, sdata, srun = out / "data", out / "shortcut" / "data", out / "shortcut" / "run"
    with ui.bar("synth (shortcut)") as cb:
        # the same seed's images: those whose rulers did not change are hard-linked from data/
        generate(sdata, SynthConfig.from_preset("shortcut", **synth), progress=cb,
                 reference=data)
    # what generate could not lend (masks of re-rendered images, CSVs) is linked here
    n_linked, n_bytes = link_identical(data, sdata)
    log.info("shortcut data: %d files hard-linked to data/ (%.1f MB saved)", n_linked,
             n_bytes / 1e6)
    with ui.bar("decode + cache images") as cb:
        train(demo_train_config(sdata, srun, [shortcut_model], **recipe), overwrite=True,
              progress=cb)
    with ui.bar("evaluate") as cb:
        run_evaluate(srun, progress=cb)
    cmethod, clayer = _chosen(summary, shortcut_model)
    with ui.bar("CAM batches") as cb:
        run_explain(srun, ExplainConfig(methods=[cmethod], batch_size=32,
                                        layer={shortcut_model: clayer}, sanity=False,
                                        figures=False), progress=cb)
    with ui.bar("probe batches") as cb:
        run_probe(srun, ProbeConfig(probes=("artifact_inserted", "artifact_removed"),
                                    artifacts=(SHORTCUT_ARTIFACT,), placements=DEMO_PLACEMENTS,
                                    figures=False), progress=cb)
    experiment = shortcut_experiment(run, srun, shortcut_model, cmethod)
    experiment["example"] = write_shortcut_example(run, srun, shortcut_model, cmethod,
                                                   clayer, SHORTCUT_ARTIFACT)
    write_json(run / SHORTCUT_EXPERIMENT, experiment)
    ui.show_stage(run, "shortcut", lambda: [views.shortcut_table(experiment)])


def demo_train_config(data: str | Path, out: str | Path, models, *, weights: str = "none",
                      image_size: int = 64, epochs: int = 10, seed: int = 0,
                      progress: bool = False, precision: str = "auto", **overrides: Any):
    """The demo's training recipe as a :class:`TrainConfig` (also used by the benchmarks
    and the twin test); ``resumable=False``: a demo is re-run, never resumed."""
    names = list(models)
    return TrainConfig(data=str(data), out=str(out), models=names, weights=weights,
                       image_size=image_size, max_epochs=epochs, batch_size=32, lr=DEMO_LR,
                       patience=4, schedule="plateau",
                       lr_by_model={m: r for m, r in DEMO_LR_BY_MODEL.items() if m in names},
                       seed=seed, progress=progress, precision=precision,
                       **{"resumable": False, **overrides})


def _chosen(summary: dict[str, Any], model: str) -> tuple[str, str]:
    """The control's CAM method and layer, so the shortcut model is audited like it."""
    for sel in summary.get("layer_choice") or []:
        if sel["model"] == model:
            return sel["method"], sel["layer"]
    raise DermcamError(f"explain recorded no layer for {model}")


def _artifact_row(summary: dict[str, Any], model: str, method: str, artifact: str) -> dict:
    for r in summary.get("artifacts") or []:
        if (r["model"], r["method"], r["artifact"]) == (model, method, artifact):
            return r
    raise DermcamError(f"attention_summary.json has no {artifact} entry for {model}/{method}")


def shortcut_experiment(control_run: Path, shortcut_run: Path, model: str, method: str,
                        artifact: str = SHORTCUT_ARTIFACT) -> dict[str, Any]:
    """The shortcut model beside its control: artifact attention ratio and test AUC, with CIs.

    ``flagged``: the ratio's 95 % CI lies above 1. The test artifacts are independent of the
    label, so the shortcut model's lower AUC is what the shortcut costs."""
    out: dict[str, Any] = {"artifact": artifact, "model": model, "method": method,
                           "description": (
                               f"{model} trained on the 'shortcut' preset (rulers in 80 % of "
                               "malignant and 5 % of benign training images; 20 % of both at "
                               "test time) beside the same architecture trained on the "
                               "default data of the same seed (the control). Ratio = heatmap "
                               f"mass on the {artifact} / its area, on test images that carry "
                               "one (1 = uniform attention)."),
                           "runs": {}}
    for role, run in (("control", Path(control_run)), ("shortcut", Path(shortcut_run))):
        files = runmod.Outputs(run)
        art = _artifact_row(read_json(files.attention_summary), model, method, artifact)
        auc = read_json(files.metrics)["models"][model]["threshold_free"]["roc_auc"]
        out["runs"][role] = {
            "run": str(run), "layer": art["layer"], "n": art["n"],
            "mass_share": art["mass_share"], "area_share": art["area_share"],
            "ratio": art["ratio"], "ratio_ci_low": art["ratio_ci_low"],
            "ratio_ci_high": art["ratio_ci_high"], "flagged": bool(art["attends"]),
            "test_auc": auc["value"], "test_auc_ci_low": auc["lo"],
            "test_auc_ci_high": auc["hi"], "probe": _probe_evidence(run, model, artifact)}
    c, s = out["runs"]["control"], out["runs"]["shortcut"]
    out["caught"] = bool(s["flagged"] and not c["flagged"])
    # the same test images: masses compare image by image (a control can exceed uniform too)
    rows = [_rows(runmod.Outputs(run).attention,
                  {"model": model, "method": method, "layer": c["layer"]},
                  keep_default_na=False, na_values=[""]) for run in (shortcut_run, control_run)]
    rel = out["relative_to_control"] = paired_artifact_ratio(*rows, artifact)
    out["caught_vs_control"] = bool(rel["more_than_control"])
    if c["probe"] and s["probe"]:
        out["caught_by_probe"] = bool(s["probe"]["reacts"] and not c["probe"]["reacts"])
        # the same seeded placements on the same images: the reactions pair up
        pvc = out["probe_vs_control"] = _probe_vs_control(Path(control_run),
                                                          Path(shortcut_run), model, artifact)
        out["caught_by_probe_vs_control"] = bool(pvc["n"] >= 2
                                                 and pvc["ci_low"] > pvc["margin"])
    return out


def _rows(path: Path, where: dict[str, str], **read: Any) -> pd.DataFrame:
    """The rows of a run's CSV whose columns equal ``where``'s values."""
    d = pd.read_csv(path, dtype={"image_id": str}, **read)
    return d[(d[list(where)] == pd.Series(where)).all(axis=1)]


def _probe_vs_control(control_run: Path, shortcut_run: Path, model: str, artifact: str,
                      n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Shortcut minus control change in P(malignant) when the artifact is inserted, paired
    by image and placement, averaged per image, with a bootstrap CI; ``margin``: the
    negligible change the CI must clear."""
    keys = ["image_id", "placement"]
    parts = [_rows(runmod.Outputs(run).probe_csv, {"model": model, "probe": "artifact_inserted",
                                                   "artifact": artifact})[keys + ["delta"]]
             for run in (shortcut_run, control_run)]
    both = parts[0].merge(parts[1], on=keys, suffixes=("", "_control"))
    per_image = (both["delta"] - both["delta_control"]).groupby(both["image_id"]).mean()
    diff = per_image.to_numpy(np.float64)
    out = {"n": int(diff.size), "diff": float("nan"), "ci_low": float("nan"),
           "ci_high": float("nan"), "margin": NEGLIGIBLE_DELTA}
    if diff.size >= 2:
        boot = diff[bootstrap_indices(diff, n_boot, seed, stratified=False)].mean(axis=1)
        lo, hi = np.quantile(boot, [0.025, 0.975])
        out.update(diff=float(diff.mean()), ci_low=float(lo), ci_high=float(hi))
    return out


def _probe_evidence(run: Path, model: str, artifact: str) -> dict[str, Any] | None:
    """Artifact insertion and removal from a run's probe summary (None without probes);
    ``reacts``: insertion CI above 0 and mean change at least the negligible margin."""
    entries = read_summary(run) or []
    if (ins := find(entries, model, "artifact_inserted", artifact)) is None:
        return None
    ev = {"insert_delta": ins["delta_mean"], "insert_ci_low": ins["delta_ci_low"],
          "insert_ci_high": ins["delta_ci_high"], "insert_n": ins["n"],
          "insert_flip_to_malignant": ins["flip_to_malignant"],
          "insert_flip_to_benign": ins["flip_to_benign"],
          "reacts": bool(ins["delta_ci_low"] > 0 and ins["delta_mean"] >= NEGLIGIBLE_DELTA)}
    if (rem := find(entries, model, "artifact_removed", artifact)) is not None:
        ev.update({"remove_malignant_delta": rem["delta_malignant"],
                   "remove_malignant_ci_low": rem["delta_malignant_ci_low"],
                   "remove_malignant_ci_high": rem["delta_malignant_ci_high"],
                   "remove_n_malignant": rem["n_malignant"]})
    return ev


# ------------------------------------------------------------------ the shortcut picture

@dataclass
class ShortcutCase:
    """An artifact pasted onto one benign test image, scored and explained by two models."""

    image_id: str
    artifact: str
    placement: int
    method: str
    layer: str
    image: np.ndarray
    pasted: np.ndarray
    mask: np.ndarray
    region: np.ndarray
    changed: np.ndarray
    roles: dict[str, dict[str, Any]]
    rule: str

    def info(self) -> dict[str, Any]:
        """What shortcut_experiment.json keeps (``example``)."""
        return {"image_id": self.image_id, "artifact": self.artifact,
                "placement": self.placement, "method": self.method, "layer": self.layer,
                "rule": self.rule,
                **{role: {k: float(r[k]) for k in ("p_before", "p_after", "threshold")}
                   for role, r in self.roles.items()}}


def _probe_config(run: runmod.Run, artifact: str):
    """The probes' placement settings ``run`` recorded, for placement 0 of ``artifact``."""
    rec = run.stage_setting("probe", "config") or {}
    rec = rec if isinstance(rec, dict) else {}
    return PerturbConfig(probes=("artifact_inserted",), artifacts=(artifact,), placements=1,
                       seed=int(rec.get("seed", run.seed)),
                       dilate=float(rec.get("dilate", DILATE_FRACTION)))


def _without(artifact: str, ds, samples, items) -> tuple[list[bool], bool]:
    """``(free, known)``: per sample whether it carries no ``artifact`` (by its map, else its
    flag); ``known`` False where neither says (then it counts as free)."""
    code = ARTIFACTS.index(artifact) + 1 if artifact in ARTIFACTS else None
    flags = artifact_flags(ds, samples)
    col = PREFIX + artifact
    by_id = (dict(zip(flags["image_id"], flags[col])) if flags is not None
             and col in flags.columns else {})
    free, known = [], True
    for s, it in zip(samples, items):
        arts = it.get("artifacts")
        if arts is not None and code is not None:
            free.append(not (np.asarray(arts) == code).any())
        elif s.image_id in by_id and np.isfinite(by_id[s.image_id]):
            free.append(by_id[s.image_id] == 0)
        else:
            free.append(True)
            known = False
    return free, known


def shortcut_case(control_run: str | Path, shortcut_run: str | Path, model: str, method: str,
                  layer: str, artifact: str = SHORTCUT_ARTIFACT) -> ShortcutCase:
    """Paste ``artifact`` onto one benign test image and score it with both runs' ``model``.

    The image: of the benign masked test images without the artifact (those both models call
    benign, where any), the lower median change in the shortcut model's P(malignant). Pasted
    as the probe's ``artifact_inserted`` at placement 0; scored and explained as the probe and
    explain stages do, on the CPU."""
    import torch
    runs = {"control": runmod.Run.open(control_run, require="train"),
            "shortcut": runmod.Run.open(shortcut_run, require="train")}
    size = runs["control"].image_size
    if runs["shortcut"].image_size != size:
        raise DermcamError(f"the two runs use different image sizes ({size} and "
                           f"{runs['shortcut'].image_size} px)", runs["shortcut"].dir)
    loaded = {}
    for role, run in runs.items():
        if model not in run.trained_models:
            raise DermcamError(f"{model} was not trained in this run", run.dir)
        net, _info, payload = run.load_model(model)
        loaded[role] = (net.cpu(), float(payload["threshold"]))
    ctrl = runs["control"]
    cfg = _probe_config(ctrl, artifact)
    ds = ctrl.dataset
    samples = [s for s in ctrl.test_samples(require_masks=True) if s.label == 0]
    items = [ctrl.cache.get(s, size) for s in samples]
    keep = [k for k, it in enumerate(items) if skip_reason(it["mask"]) is None]
    samples, items = [samples[k] for k in keep], [items[k] for k in keep]
    free, known = _without(artifact, ds, samples, items)
    samples = [s for s, f in zip(samples, free) if f]
    items = [it for it, f in zip(items, free) if f]
    if not samples:
        raise DermcamError(f"no benign test image with a lesion mask and without a "
                           f"{artifact} to paste one onto", ds.root)
    intact = np.stack([it["image"] for it in items])
    pasted = np.stack([perturb(it["image"], it["mask"], it.get("artifacts"), s.image_id,
                               cfg)[0].image for s, it in zip(samples, items)])
    p0 = {role: score_images(net, intact) for role, (net, _) in loaded.items()}
    p_pasted = score_images(loaded["shortcut"][0], pasted)
    benign = np.all([p0[r] < loaded[r][1] for r in loaded], axis=0)
    pool = np.flatnonzero(benign) if benign.any() else np.arange(len(samples))
    delta = p_pasted - p0["shortcut"]
    order = sorted(pool, key=lambda k: (delta[k], samples[k].image_id))
    k = int(order[(len(order) - 1) // 2])
    rule = (f"benign test images with a lesion mask and no {artifact}"
            + ("" if known else f" (where the data say whether one carries a {artifact})")
            + (", called benign by both models" if benign.any() else "")
            + f": the one with the median change in the shortcut model's P(malignant) when "
              f"the {artifact} is pasted (probe placement 0; {len(pool)} images)")
    image, mask = items[k]["image"], np.asarray(items[k]["mask"]).astype(bool)
    roles = {}
    x = preprocess(torch.from_numpy(pasted[k:k + 1]))
    for role, run in runs.items():
        net, threshold = loaded[role]
        # the picked image scored again, alone with its pasted copy, by each model alike
        # (rounding depends on the batch: ~1e-6 relative to the selection's numbers)
        before, after = score_images(net, np.stack([intact[k], pasted[k]]))
        with CamExplainer(net, layer, method) as ex:
            cb = ex.compute(x, target=run.stage_setting("explain", "target", "malignant"),
                            size=size, threshold=threshold,
                            normalize=run.stage_setting("explain", "normalize", "minmax"))
        roles[role] = {"model": model, "display": run.display_names.get(model, model),
                       "p_before": float(before), "p_after": float(after),
                       "threshold": threshold, "cam": cb.heatmaps[0]}
    return ShortcutCase(samples[k].image_id, artifact, 0, method, layer, image, pasted[k],
                        mask, dilate_mask(mask, cfg.dilate), (pasted[k] != image).any(-1),
                        roles, rule)


def write_shortcut_example(control_run: str | Path, shortcut_run: str | Path, model: str,
                           method: str, layer: str, artifact: str = SHORTCUT_ARTIFACT
                           ) -> dict[str, Any]:
    """:func:`shortcut_case` drawn into the control run's ``figures/shortcut_example.png``;
    returns :meth:`ShortcutCase.info` with ``figure``, the PNG's path relative to the run."""
    case = shortcut_case(control_run, shortcut_run, model, method, layer, artifact)
    out = write_bytes(runmod.Outputs(control_run).figures / runmod.SHORTCUT_EXAMPLE_PNG,
                      render_shortcut_example(case))
    return {**case.info(), "figure": out.relative_to(Path(control_run)).as_posix()}
