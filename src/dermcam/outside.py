"""Audit a classifier trained anywhere: its file (or module) in, an ordinary dermcam run out.

Read safely (never a pickle), fitted to dermcam's contract, threshold and calibration
chosen on validation, then evaluate, explain, probe and report (docs/audit.md).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dermcam import run as runmod
from dermcam.audit_set import AuditSet
from dermcam.checkpoints import save_checkpoint
from dermcam.config import EvaluateConfig, ExplainConfig, ProbeConfig, TrainConfig
from dermcam.data import load_dataset
from dermcam.data.cache import ImageCache
from dermcam.data.cached_split import CachedSplit
from dermcam.data.splits import split_samples
from dermcam.decision import choose_threshold
from dermcam.device import resolve_device
from dermcam.errors import DermcamError, first_line
from dermcam.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    attach_io,
    build_model,
    display_name,
    head_name,
    head_outputs,
)
from dermcam.stages.evaluate import run_evaluate
from dermcam.stages.explain import run_explain
from dermcam.stages.probe import PROBES, run_probe
from dermcam.stages.report import run_report
from dermcam.weight_files import fit_weights, read_weights, sha256_of

log = logging.getLogger(__name__)

__all__ = ["Reading", "audit", "import_model", "load_outside", "read_module"]

#: Placements per painted artifact in an audit's probes.
AUDIT_PLACEMENTS = 2


@dataclass
class Reading:
    """How an outside model's file and outputs are read, recorded in the run.

    ``malignant``: the malignant output classes (one logit: none; two: ``(1,)`` by default;
    K > 2 must be named, their softmax probabilities summed). ``mean``/``std``: None for
    ImageNet's or a timm model's own; ``threshold``: None chooses Youden's on validation.
    """

    arch: str
    image_size: int = 224
    malignant: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str = "squash"
    threshold: float | None = None
    calibration: str = "platt"
    seed: int = 0
    val_fraction: float = 0.2
    cache_dir: str | None = None


def _norm(reading: Reading, model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The model's input mean and std: given, else a timm model's own, else ImageNet's."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = reading.mean or tuple(cfg.get("mean") or IMAGENET_MEAN)
    std = reading.std or tuple(cfg.get("std") or IMAGENET_STD)  # checked by attach_io
    return tuple(float(x) for x in mean), tuple(float(x) for x in std)


def _count_outputs(model, size: int, where) -> int:
    """K, from the model's output on one blank image."""
    import torch

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, size, size))
    except Exception as exc:
        raise DermcamError(f"the model failed on a {size} px image ({first_line(exc)}); is "
                           "--image-size the size it was trained at?", where) from exc
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DermcamError(f"the model returns {got}; dermcam reads (N, K) logits", where)
    return int(out.shape[1])


def _malignant(k: int, given: tuple[int, ...] | None, where) -> tuple[int, ...]:
    if k <= 2:
        return given or (1,)
    if not given:
        raise DermcamError(f"the model has {k} outputs (classes 0-{k - 1}); say which are "
                           "malignant with --malignant-classes, e.g. 0,1,4 (their softmax "
                           "probabilities are summed)", where)
    return given


def _read_as(k: int, malignant: tuple[int, ...]) -> str:
    """How P(malignant) is read from the K outputs, and what the heatmaps explain."""
    if k == 1:
        sign = "" if malignant == (1,) else "-"
        return (f"one logit z: P(malignant) = sigmoid({sign}z); heatmaps explain {sign}z")
    if k == 2:
        m = malignant[0]
        return (f"two logits, class {m} malignant: P(malignant) = softmax(z)[{m}]; heatmaps "
                f"explain z{m}")
    cls = ", ".join(map(str, malignant))
    return (f"{k} logits, classes {cls} malignant: P(malignant) = the sum of their softmax "
            "probabilities; heatmaps explain log P(malignant)")


def _fitted(reading: Reading, state: dict, where, form: str, source: dict, script=None):
    """``arch`` with a head as wide as the file's, ``state`` and dermcam's input/output
    contract: ``(model, info, io, source)``, ``source`` completed."""
    try:
        model, info = build_model(reading.arch, "none", image_size=reading.image_size)
    except DermcamError as exc:
        raise DermcamError(str(exc), "--arch") from None
    try:
        k = head_outputs(model, state)
    except DermcamError:
        fit_weights(model, state, reading.arch, where)  # another architecture: which keys
        raise
    if k != 2:
        model, info = build_model(reading.arch, "none", num_classes=k,
                                  image_size=reading.image_size)
    fit_weights(model, state, reading.arch, where)
    if script is not None:
        _check_same_outputs(script, model, reading.image_size, where, reading.arch)
    k = _count_outputs(model, reading.image_size, where)
    malignant = _malignant(k, reading.malignant, where)
    mean, std = _norm(reading, model)
    attach_io(model, k, malignant, mean, std)
    io = {"outputs": k, "malignant": list(malignant), "mean": list(mean), "std": list(std)}
    read_as = _read_as(k, malignant)
    log.info("%s (%s): %s", where, form, read_as)
    return model, info, io, {**source, "form": form, "arch": reading.arch, "read_as": read_as}


def load_outside(weights: str | Path, reading: Reading):
    """An outside model file -> ``(model, info, io, source)``: the fitted model, its head and
    normalisation, what the run records of the file; problems are one-line errors."""
    path = Path(weights)
    if not path.is_file():
        raise DermcamError("weights file not found" if not path.exists() else
                           "not a file (expected a state dict or a TorchScript file)", path)
    state, form, script = read_weights(path)
    return _fitted(reading, state, path, form,
                   {"file": str(path.resolve()), "sha256": sha256_of(path)}, script)


def read_module(module, reading: Reading | None = None, **options):
    """A ``torch.nn.Module`` -> ``(model, info, io, source)`` as :func:`load_outside`, its
    weights copied into a fresh ``arch`` so later stages can rebuild it from the checkpoint."""
    if reading is None:
        reading = Reading(arch=options.pop("arch", None) or infer_arch(module), **options)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    return _fitted(reading, state, f"model {type(module).__name__}", "module in memory",
                   {"file": None})


def infer_arch(module) -> str:
    """A module's architecture: timm's own record, else the torchvision model of its class
    whose parameter shapes (head aside) match, built on the meta device (no memory)."""
    import torch
    from torchvision import models as tvm

    cfg = getattr(module, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("architecture"):
        return f"timm:{cfg['architecture']}"
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    for name in tvm.list_models(module=tvm):  # only builders of the module's class run
        builder = tvm.get_model_builder(name)
        if inspect.signature(builder).return_annotation is not type(module):
            continue
        with torch.device("meta"):
            cand = builder(weights=None)
        have = {k: tuple(v.shape) for k, v in cand.state_dict().items()}
        head = head_name(cand) + "."
        if have.keys() == want.keys() and all(
                have[k] == want[k] for k in have if not k.startswith(head)):
            return name
    raise DermcamError(f"could not tell which torchvision or timm architecture this "
                       f"{type(module).__name__} is; pass arch='resnet18' (or 'timm:NAME')")


def _check_same_outputs(script, model, size: int, path, arch: str) -> None:
    """Refuse a TorchScript file whose logits differ from ``arch`` with its weights (Grad-CAM
    needs the Python module, so the file's weights run in ``arch``)."""
    import torch

    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    model.eval()
    script.eval()
    with torch.no_grad():
        a = model(x)
        try:
            b = script(x)
        except Exception as exc:
            raise DermcamError(f"the TorchScript model failed on a {size} px input "
                               f"({type(exc).__name__})", path) from exc
    if not isinstance(b, torch.Tensor) or b.shape != a.shape:
        got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
        raise DermcamError(f"the TorchScript model returns {got}, {arch} with its weights "
                           f"{tuple(a.shape)}: not the plain {arch}", path)
    if not torch.allclose(a, b, rtol=1e-3, atol=1e-4):
        diff = float((a - b).abs().max())
        raise DermcamError(f"the TorchScript model's logits differ from {arch} with its "
                           f"weights (max |difference| {diff:.3g}): its forward is not the "
                           f"plain {arch} (preprocessing or a changed head inside?); save the "
                           "plain model's state_dict instead", path)


def import_model(model, info, io: dict, source: dict, data: str | Path, out: str | Path,
                 reading: Reading, overwrite: bool = False, progress=None) -> runmod.Run:
    """Make the run folder ``out`` for an outside model and return the run."""
    t0 = time.perf_counter()
    ds = load_dataset(data)
    train_samples, test_samples = ds.split("train"), ds.split("test")
    if not test_samples:
        raise DermcamError("the data set has no test split to audit", data)
    name = reading.arch.replace("timm:", "timm-")
    cfg = TrainConfig(data=str(data), out=str(out), models=[name], weights=source["form"],
                      image_size=reading.image_size, max_epochs=0, seed=reading.seed,
                      val_fraction=reading.val_fraction, cache_dir=reading.cache_dir,
                      calibration=reading.calibration, resize=reading.resize)
    if train_samples:
        _, va_idx = split_samples(train_samples, cfg.val_fraction, cfg.seed, path=data)
    elif reading.threshold is None:
        raise DermcamError("the data set has no training split to choose a threshold on; "
                           "give one with --threshold (e.g. 0.5)", data)
    runmod.prepare_run_dir(Path(out), overwrite)
    run = runmod.Run.start(out, cfg, ds, train_samples, imported=True)
    if train_samples:
        val = CachedSplit([train_samples[i] for i in va_idx], cfg.image_size,
                          ImageCache(cfg.cache_dir, resize=cfg.resize))
        val.hold_in_memory(progress=progress)
        d = choose_threshold(model, val.dataset(np.arange(len(val))), val.labels,
                             cfg.calibration, reading.threshold)
        decision = {"threshold": d.threshold, "val_auc": d.val_auc, "temperature": d.temperature,
                    "calibration_bias": d.bias, "calibration": d.calibration}
        n_val = len(va_idx)
    else:
        decision = {"threshold": float(reading.threshold), "val_auc": None, "temperature": 1.0,
                    "calibration_bias": 0.0, "calibration": {"method": "none"}}
        n_val = 0
    rule = "given (--threshold)" if reading.threshold is not None else "Youden J on validation"
    shown = f"{display_name(reading.arch)} ({Path(source['file']).name})" \
        if source.get("file") else display_name(reading.arch)
    info.display_name = shown
    card = {"architecture": shown, "weights_source": source.get("file") or source["form"],
            "trained_on": "outside dermcam", "image_size": cfg.image_size, "n_val": n_val,
            "val_auc": decision["val_auc"], "threshold": decision["threshold"],
            "threshold_rule": rule, "temperature": decision["temperature"],
            "calibration_bias": decision["calibration_bias"],
            "calibration": decision["calibration"]["method"], "outputs": source["read_as"]}
    save_checkpoint(run.model_file(name), model, info, {
        "image_size": cfg.image_size, "resize": cfg.resize, "num_outputs": io["outputs"],
        "io": io,
        "source": source, "model_card": card, **{k: decision[k] for k in (
            "threshold", "temperature", "calibration_bias", "calibration")}})
    run.record_model(name, {
        "display_name": shown, "weights_source": card["weights_source"],
        "target_layer": info.target_layer, "source": source, "threshold_rule": rule,
        "input": {**io, "image_size": cfg.image_size, "resize": cfg.resize},
        **decision, "checkpoint": f"{runmod.MODELS_DIR}/{name}/{runmod.MODEL_FILE}"})
    run.set_stage("train", runmod.STATUS_COMPLETE, run_status="trained", imported=True,
                  wall_time_s=round(time.perf_counter() - t0, 2), n_val=int(n_val))
    return run


def audit(model, data: str | Path, out: str | Path, *, arch: str | None = None,
          image_size: int = 224, malignant: Sequence[int] | None = None,
          mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
          resize: str = "squash", threshold: float | None = None,
          calibration: str = "platt", by: Sequence[str] = (),
          artifact_labels: str | Path | None = None, placements: int = AUDIT_PLACEMENTS,
          limit: int | None = None, seed: int = 0, device: str = "auto",
          precision: str = "auto", overwrite: bool = False, cache_dir: str | None = None,
          say=None, progress_bar=None) -> runmod.Run:
    """The full audit of a model trained anywhere, into the run folder ``out``.

    ``model``: a weights file or a ``torch.nn.Module``; ``arch``: its architecture (found by
    itself for a module). ``data``: its test split is audited, its validation part chooses the
    threshold, calibration and CAM layer. Returns the run.
    """
    say = say or (lambda *a: None)
    bar = progress_bar or (lambda desc: contextlib.nullcontext())
    reading = Reading(arch=arch or "", image_size=int(image_size),
                      malignant=tuple(int(i) for i in malignant) if malignant else None,
                      mean=tuple(mean) if mean else None, std=tuple(std) if std else None,
                      resize=resize, threshold=threshold, calibration=calibration,
                      seed=seed, cache_dir=cache_dir)
    if isinstance(model, (str, Path)):
        if not arch:
            raise DermcamError("give --arch, the architecture the weights belong to (e.g. "
                               "resnet18, or timm:convnext_tiny; 'dermcam models' lists "
                               "torchvision's)", model)
        fitted, info, io, source = load_outside(model, reading)
    else:
        if not arch:
            reading.arch = infer_arch(model)
        fitted, info, io, source = read_module(model, reading)
    dev = str(resolve_device(device))
    say(f"[1/5] {source['read_as']}; threshold and calibration on validation images")
    with bar("decode + cache images") as cb:
        run = import_model(fitted, info, io, source, data, out, reading, overwrite, cb)
    if artifact_labels is not None:  # kept for the later stages
        say(runmod.record_in_run(run.dir, artifact_labels))
    say("[2/5] evaluation on the test split (bootstrap CIs)")
    with bar("evaluate") as cb:
        run_evaluate(run.dir, EvaluateConfig(by=tuple(by), device=dev),
                     AuditSet.open(run, artifacts=artifact_labels), progress=cb)
    say("[3/5] attention: the localisation benchmark chooses the CAM method and layer on "
        "validation images; sanity check; every test image")
    with bar("CAM batches") as cb:
        run_explain(run.dir, ExplainConfig(methods=["auto"], limit=limit, device=dev,
                                           by=tuple(by)), progress=cb)
    say("[4/5] behavioural probes")
    probes = [*PROBES, *["context_swap"] * (artifact_labels is not None), "hot_spots"]
    with bar("probe batches") as cb:
        run_probe(run.dir, ProbeConfig(probes=probes, placements=placements, limit=limit,
                                       device=dev, by=tuple(by), precision=precision),
                  progress=cb)
    say("[5/5] report")
    run_report(run.dir)
    return runmod.Run.open(run.dir)
