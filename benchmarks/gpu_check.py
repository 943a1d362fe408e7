"""One-command GPU check (#15 item 9): every stage on one device, images/s, CUDA vs CPU heatmaps.

Generates the synthetic benchmark, trains the three study models on ``--device`` for two
epochs at 224 px from scratch (``--weights none``: the check must run without internet,
so ImageNet weights are never downloaded; the figures are throughput, not accuracy), then
runs evaluate, explain, probe and predict on the same device through dermcam's Python API
(the functions the ``dermcam`` commands call). Prints images/s per stage and writes
``OUT/gpu_check.json``. Then computes Grad-CAM heatmaps for a few test images with each
trained checkpoint on the device and on the CPU (``dermcam.attribution.CamExplainer``, the
explainer ``dermcam explain`` and ``dermcam predict`` use) and reports the largest
absolute difference of the min-max-normalised maps against ``--tolerance``. With
``--device cpu`` that comparison is CPU against CPU (two copies of the checkpoint) and
says so.

    python benchmarks/gpu_check.py                       # auto: the first GPU, else the CPU
    python benchmarks/gpu_check.py --device cuda:1 --out /tmp/gpu-check
    python benchmarks/gpu_check.py --device cpu --small  # about a minute on 2 CPU cores

Exit status: 0 when every stage ran and the heatmaps agree within the tolerance, 1 when
they do not, 2 on an error (one line: ``gpu_check: error: ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from dermcam.config import EvaluateConfig, ExplainConfig, ProbeConfig

STAGES = ("train", "evaluate", "explain", "probe", "predict")
DEFAULT_MODELS = "resnet18,efficientnet_b0,mobilenet_v2"
MARKER = ".dermcam-gpu-check"
JSON_NAME = "gpu_check.json"
#: The full check and the --small one (about a minute on 2 CPU cores).
FULL = {"models": DEFAULT_MODELS, "n_train": 900, "n_test": 379, "source_size": 256,
        "image_size": 224, "epochs": 2, "batch_size": 32, "cam_images": 8, "placements": 1}
SMALL = {"models": "resnet18", "n_train": 48, "n_test": 16, "source_size": 64,
         "image_size": 64, "epochs": 1, "batch_size": 16, "cam_images": 4, "placements": 1}
WEIGHTS_NOTE = ("weights: none (trained from scratch for the check; ImageNet weights are not "
                "downloaded, so it runs offline: the figures are throughput, not accuracy)")


class CheckError(Exception):
    """A problem the check reports in one line (exit status 2)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto",
                    help="auto (the first CUDA device when available, else the CPU), cpu, "
                         "cuda or cuda:INDEX")
    ap.add_argument("--out", default="gpu-check",
                    help="folder for the data, the run, predictions and gpu_check.json "
                         "(replaced when it holds an earlier check; default: ./gpu-check)")
    ap.add_argument("--small", action="store_true",
                    help="tiny config: resnet18, 48 + 16 images at 64 px, 1 epoch")
    for key, kind in (("models", str), ("n_train", int), ("n_test", int),
                      ("source_size", int), ("image_size", int), ("epochs", int),
                      ("batch_size", int), ("cam_images", int), ("placements", int)):
        ap.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                        help=f"default {FULL[key]} ({SMALL[key]} with --small)")
    ap.add_argument("--precision", default="32-true",
                    help="training precision (dermcam train --precision)")
    ap.add_argument("--n-boot", type=int, default=200,
                    help="bootstrap resamples in evaluate/explain/probe (CPU work)")
    ap.add_argument("--tolerance", type=float, default=1e-3,
                    help="largest allowed |device - CPU| of the min-max-normalised heatmaps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    base = SMALL if args.small else FULL
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    return args


QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric",
                 "lightning.pytorch.utilities.rank_zero", "dermcam")


def _quiet() -> None:
    """Keep the output to the check's own lines (Lightning's banners and hints go).
    Called inside ``warnings.catch_warnings()``; :func:`main` restores the log levels."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CheckError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise CheckError(f"--out {out} is not empty and holds no earlier GPU check; "
                             "choose another folder")
        for child in ("data", "run", "predict", "cache", JSON_NAME):
            p = out / child
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("dermcam benchmarks/gpu_check.py\n")


def _train_placement(dev) -> tuple[str, str]:
    """``dermcam train --accelerator/--devices`` for one resolved torch device."""
    if dev.type == "cpu":
        return "cpu", "1"
    index = dev.index or 0
    # Lightning reads "i," as the list [i] (GPU number i), a plain "1" as one GPU (cuda:0)
    return "gpu", "1" if index == 0 else f"{index},"


def _device_info(dev) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": str(dev), "torch": torch.__version__,
                            "python": platform.python_version(),
                            "cpu_threads": torch.get_num_threads()}
    if dev.type == "cuda":
        info.update(name=torch.cuda.get_device_name(dev), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32),
                    matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32))
    else:
        info["name"] = _cpu_name()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("nan")


def run_stages(args, dev, out: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Synthetic data, then train, evaluate, explain, probe and predict on ``dev``, timed."""
    # Imports the stages would otherwise make inside their timers (Lightning, Grad-CAM,
    # OpenCV): the figures are for the device's work, not for loading libraries.
    import cv2  # noqa: F401
    import lightning.pytorch  # noqa: F401
    import pytorch_grad_cam  # noqa: F401

    from dermcam.config import TrainConfig
    from dermcam.data.synth import SynthConfig, generate
    from dermcam.io import read_json
    from dermcam.predict import predict
    from dermcam.stages.evaluate import run_evaluate
    from dermcam.stages.explain import run_explain
    from dermcam.stages.probe import run_probe
    from dermcam.stages.train import train

    data, run = out / "data", out / "run"
    t = time.perf_counter()
    try:
        cfg = SynthConfig.from_preset("clean", n_train=args.n_train, n_test=args.n_test,
                                      image_size=args.source_size, seed=args.seed)
    except ValueError as exc:
        raise CheckError(str(exc)) from None
    generate(data, cfg)
    synth = {"seconds": time.perf_counter() - t, "images": args.n_train + args.n_test,
             "preset": "clean", "source_size": args.source_size}
    n_models = len(args.models)
    stages: dict[str, dict[str, Any]] = {}

    accelerator, devices = _train_placement(dev)
    t = time.perf_counter()
    manifest = train(TrainConfig(
        data=str(data), out=str(run), models=list(args.models), weights="none",
        image_size=args.image_size, max_epochs=args.epochs, batch_size=args.batch_size,
        patience=args.epochs + 1, seed=args.seed, accelerator=accelerator, devices=devices,
        precision=args.precision, progress=False, cache_dir=str(out / "cache")),
        overwrite=True)
    _sync(dev)
    seconds = time.perf_counter() - t
    n_fit = int(manifest["stages"]["train"]["n_train"])
    n_val = int(manifest["stages"]["train"]["n_val"])
    epochs = sum(int(m.get("epochs_run") or args.epochs) for m in manifest["models"].values())
    images = n_fit * epochs
    stages["train"] = {
        "images": images, "seconds": seconds, "images_per_s": _rate(images, seconds),
        "counted": (f"{n_fit} training images x epochs, summed over models ({epochs} "
                    f"model-epochs); validation ({n_val} images per epoch), decode cache "
                    "and checkpointing inside the time"),
        "accelerator": accelerator, "devices": devices, "precision": args.precision,
        "per_model_seconds": {k: m.get("wall_time_s") for k, m in manifest["models"].items()}}

    n_test = args.n_test
    t = time.perf_counter()
    run_evaluate(run, EvaluateConfig(n_boot=args.n_boot, device=str(dev)))
    seconds = time.perf_counter() - t
    images = n_test * n_models
    stages["evaluate"] = {"images": images, "seconds": seconds,
                          "images_per_s": _rate(images, seconds),
                          "counted": f"{n_test} test images x {n_models} model(s); "
                                     f"{args.n_boot} bootstrap resamples inside the time"}

    t = time.perf_counter()
    run_explain(run, ExplainConfig(methods=["gradcam"], layer="last", sanity=False, figures=False,
                                   n_boot=args.n_boot, batch_size=args.batch_size, device=str(dev)))
    seconds = time.perf_counter() - t
    timing = read_json(run / "manifest.json")["stages"]["explain"].get("timing") or {}
    n_cam = int(timing.get("images_computed") or 0)
    stages["explain"] = {
        "images": n_cam, "seconds": seconds, "images_per_s": _rate(n_cam, seconds),
        "cam_only_images_per_s": timing.get("images_per_second"),
        "counted": ("Grad-CAM heatmaps (masked test images x models) at the last "
                    "convolutional block (--layer last, --no-sanity: the localisation "
                    "benchmark and the sanity check run on the CPU); scoring inside the "
                    "time, no figures")}

    t = time.perf_counter()
    entries = run_probe(run, ProbeConfig(placements=args.placements, n_boot=args.n_boot,
                                         figures=False, device=str(dev)))
    seconds = time.perf_counter() - t
    import pandas as pd

    table = pd.read_csv(run / "probe.csv", usecols=["image_id", "model"], dtype=str)
    images = int(len(table.drop_duplicates()))
    stages["probe"] = {
        "images": images, "seconds": seconds, "images_per_s": _rate(images, seconds),
        "variants": int(len(table)), "variants_per_s": _rate(len(table), seconds),
        "counted": (f"masked test images x {n_models} model(s), every probe (lesion and "
                    f"background removed, 5 artifacts inserted with {args.placements} "
                    "placement(s), artifacts removed where present): each image makes "
                    "several variants (inpainting on the CPU)"),
        "n_entries": len(entries)}

    from dermcam.device import inference_batch_size

    test_dir = next(p for p in data.iterdir() if p.is_dir() and p.name.endswith("Test_Data"))
    batch = inference_batch_size(dev, None, cpu=16, gpu=64)  # as 'dermcam predict'
    t = time.perf_counter()
    n_pred = 0
    for name in args.models:
        res = predict(run / "models" / name / "model.pt", [test_dir], out / "predict" / name,
                      masks=test_dir, batch_size=batch, device=str(dev))
        n_pred += len(res.table)
    seconds = time.perf_counter() - t
    stages["predict"] = {"images": n_pred, "seconds": seconds,
                         "images_per_s": _rate(n_pred, seconds),
                         "counted": (f"test images x {n_models} checkpoint(s), batch {batch}:"
                                     " decode, probability, Grad-CAM overlay PNG and "
                                     "leakage scores")}
    return stages, synth


def compare_heatmaps(run: Path, models: list[str], dev, n_images: int,
                     tolerance: float) -> dict[str, Any]:
    """Grad-CAM of the same checkpoint on ``dev`` and on the CPU, for the first masked
    test images; the device run explains the CPU's classes, so a decision that flips at
    the threshold cannot change which map is compared (flips are counted separately)."""
    import numpy as np
    import torch

    from dermcam.attribution import CamExplainer
    from dermcam.augment import preprocess
    from dermcam.checkpoints import load_checkpoint
    from dermcam.data import load_dataset
    from dermcam.data.cache import decode_sample
    from dermcam.io import read_json

    manifest = read_json(run / "manifest.json")
    size = int(manifest["config"]["image_size"])
    ds = load_dataset(manifest["data"]["root"])
    samples = [s for s in ds.split("test") if s.mask_path is not None][:n_images]
    if not samples:
        raise CheckError("no masked test images to compare heatmaps on")
    x = preprocess(torch.from_numpy(np.stack([decode_sample(s, size)["image"]
                                              for s in samples])))
    on_cpu = dev.type == "cpu"
    result: dict[str, Any] = {
        "reference": "cpu", "device": str(dev), "images": len(samples),
        "normalize": "minmax", "tolerance": tolerance,
        "note": ("CPU vs CPU (--device cpu): two copies of each checkpoint, trivially equal"
                 if on_cpu else
                 f"{dev} vs CPU with the backends' defaults, as dermcam explain runs "
                 "(cuDNN may use TF32 for convolutions); max_abs_diff_tf32_off repeats the "
                 "device side with TF32 disabled"),
        "models": {}}
    worst = 0.0
    for name in models:
        path = run / "models" / name / "model.pt"
        ref_model, info, payload = load_checkpoint(path)
        cam = payload.get("cam") or {}
        method, layer = cam.get("method", "gradcam"), cam.get("layer", info.target_layer)
        thr = float(payload["threshold"])
        with CamExplainer(ref_model, layer, method) as ex:
            ref = ex.compute(x, target="predicted", threshold=thr, size=size)
        dev_model = load_checkpoint(path)[0].to(dev)

        def on_device(model=dev_model, layer=layer, method=method, targets=ref.targets):
            with CamExplainer(model, layer, method) as ex:
                return ex.compute(x, target=targets, size=size)

        got = on_device()
        diff = np.abs(got.heatmaps.astype(np.float64) - ref.heatmaps.astype(np.float64))
        row = {"method": method, "layer": layer,
               "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
               "prob_max_abs_diff": float(np.abs(got.probs.astype(np.float64)
                                                 - ref.probs.astype(np.float64)).max()),
               "decisions_differ": int(((got.probs >= thr) != (ref.probs >= thr)).sum())}
        if dev.type == "cuda":
            saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            try:
                strict = on_device()
            finally:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
            row["max_abs_diff_tf32_off"] = float(np.abs(strict.heatmaps.astype(np.float64)
                                                        - ref.heatmaps).max())
        row["passed"] = bool(row["max_abs_diff"] <= tolerance)
        result["models"][name] = row
        worst = max(worst, row["max_abs_diff"])
        del dev_model
    result["max_abs_diff"] = worst
    result["passed"] = bool(worst <= tolerance)
    return result


def _fmt(v: float) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.1f}"


def report(res: dict[str, Any]) -> list[str]:
    cfg, dev = res["config"], res["device"]
    lines = [f"dermcam GPU check on {dev['device']} ({dev.get('name') or '?'}), "
             f"torch {dev['torch']}"
             + (f", CUDA {dev['cuda']}" if dev.get("cuda") else ""),
             WEIGHTS_NOTE,
             f"data: synthetic benchmark, {cfg['n_train']} train + {cfg['n_test']} test images "
             f"({cfg['source_size']} px files), models {', '.join(cfg['models'])} at "
             f"{cfg['image_size']} px, {cfg['epochs']} epoch(s), batch {cfg['batch_size']}",
             "",
             f"{'stage':<9} {'images':>7} {'seconds':>8} {'images/s':>9}  note"]
    for stage in STAGES:
        s = res["stages"][stage]
        note = ""
        if stage == "explain" and s.get("cam_only_images_per_s"):
            note = f"CAM compute alone {s['cam_only_images_per_s']:.1f} images/s"
        if stage == "train":
            note = f"images x epochs; --accelerator {s['accelerator']} --devices {s['devices']}"
        lines.append(f"{stage:<9} {s['images']:>7d} {s['seconds']:>8.1f} "
                     f"{_fmt(s['images_per_s']):>9}  {note}".rstrip())
    h = res["heatmaps"]
    lines.append("")
    lines.append(f"heatmaps, {h['note']}:")
    for name, row in h["models"].items():
        extra = (f", TF32 off {row['max_abs_diff_tf32_off']:.2e}"
                 if "max_abs_diff_tf32_off" in row else "")
        lines.append(f"  {name:<16} {row['method']} at {row['layer']}: max |diff| "
                     f"{row['max_abs_diff']:.2e}{extra} on {h['images']} images, "
                     f"P(malignant) max |diff| {row['prob_max_abs_diff']:.1e}, "
                     f"{row['decisions_differ']} decision(s) differ: "
                     f"{'PASS' if row['passed'] else 'FAIL'}")
    lines.append(f"heatmaps equal within {h['tolerance']:g} (min-max-normalised maps): "
                 f"{'yes' if h['passed'] else 'NO'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    try:
        with warnings.catch_warnings():
            return _main(args)
    except KeyboardInterrupt:
        print("gpu_check: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, whatever failed (DermcamError, CheckError, torch)
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"gpu_check: error: {text}", file=sys.stderr)
        return 2
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _main(args) -> int:
    for key in ("n_train", "n_test", "source_size", "image_size", "epochs", "batch_size",
                "cam_images", "placements"):
        if getattr(args, key) < 1:
            raise CheckError(f"--{key.replace('_', '-')} must be >= 1")
    if not args.models:
        raise CheckError("--models names no model")
    _quiet()
    from dermcam.device import resolve_device

    dev = resolve_device(args.device)  # one-line DermcamError for an unavailable device
    out = Path(args.out)
    _prepare_out(out)
    if dev.type == "cuda":
        import torch

        torch.zeros(1, device=dev)  # CUDA context created before any stage is timed
    device = _device_info(dev)
    print(f"running on {dev} ({device.get('name') or '?'}): synthetic data, "
          f"{', '.join(STAGES)}, then the heatmap comparison ...", flush=True)
    t0 = time.perf_counter()
    stages, synth = run_stages(args, dev, out)
    heatmaps = compare_heatmaps(out / "run", args.models, dev, args.cam_images,
                                args.tolerance)
    res = {"kind": "dermcam-gpu-check", "issue": "#15 item 9", "small": bool(args.small),
           "weights": "none", "weights_note": WEIGHTS_NOTE, "device": device,
           "config": {k: getattr(args, k) for k in (*FULL, "precision", "n_boot", "seed")},
           "synth": synth, "stages": stages, "heatmaps": heatmaps,
           "wall_seconds": time.perf_counter() - t0}
    for line in report(res):
        print(line)
    path = out / JSON_NAME
    path.write_text(json.dumps(res, indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")
    return 0 if heatmaps["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
