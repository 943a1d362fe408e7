"""Behavioural probes: proof on planted ground truth, and throughput.

Two parts (either or both):

``--twins``: the same architecture trained on the synthetic benchmark's ``clean`` and
``shortcut`` presets (same seed: identical skin and lesions, only the ruler pixels
differ; rulers in 80 % of malignant and 5 % of benign *training* images, 20 % of both at
test time). Prints, per model: the mean change in malignant probability when a ruler is
inserted (paired 95 % CI) and its flip rates, the change when the ruler is removed from
ruler-bearing malignant test images, and the ROC AUC with the lesion inpainted away.

``--speed``: every probe on ``--n-test`` test images x the three study models at
``--size`` px (a run trained for one epoch on a small split: weights do not change the
cost), through ``dermcam.stages.probe.run_probe`` (perturbations made once per image, shared
by the models, scored in batches), against a one-image-at-a-time loop that perturbs
each image again for each model and scores each variant alone, timed on
``--naive-images`` images and compared per image. Also prints the share of the probe
stage spent inpainting.

    python benchmarks/bench_probe.py --twins --size 64 --epochs 8
    python benchmarks/bench_probe.py --twins --recipe demo --placements 2 --seed 2
    python benchmarks/bench_probe.py --twins --recipe demo --train-precision 32-true --seed 0
    python benchmarks/bench_probe.py --speed --size 224 --n-test 379 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

from dermcam.config import EvaluateConfig, ProbeConfig


def _quiet():
    for name in ("lightning", "lightning.pytorch", "lightning.fabric",
                 "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)


def twin(root: Path, preset: str, args) -> dict:
    from dermcam.config import TrainConfig
    from dermcam.data.synth import SynthConfig, generate
    from dermcam.stages.evaluate import run_evaluate
    from dermcam.stages.probe import find, run_probe
    from dermcam.stages.train import train

    data, run = root / preset / "data", root / preset / "run"
    generate(data, SynthConfig.from_preset(preset, n_train=args.n_train, n_test=args.n_test,
                                           image_size=args.source_size, seed=args.seed))
    if args.recipe == "demo":  # dermcam demo's training: plateau, 10 epochs
        from dermcam.demo import demo_train_config

        cfg = demo_train_config(data, run, [args.model], image_size=args.size, seed=args.seed,
                                precision=args.train_precision,
                                cache_dir=str(root / "cache"))
    else:  # one-cycle, lr 2e-3, for --epochs
        cfg = TrainConfig(data=str(data), out=str(run), models=[args.model], weights="none",
                          image_size=args.size, batch_size=32, seed=args.seed, progress=False,
                          cache_dir=str(root / "cache"), max_epochs=args.epochs, lr=2e-3,
                          patience=args.epochs, schedule="onecycle",
                          precision=args.train_precision)
    train(cfg)
    run_evaluate(run, EvaluateConfig(n_boot=200))
    entries = run_probe(run, ProbeConfig(
        probes=("lesion_removed", "artifact_inserted", "artifact_removed"),
        artifacts=("ruler",), placements=args.placements, n_boot=1000, figures=False))
    ins = find(entries, args.model, "artifact_inserted", "ruler")
    rem = find(entries, args.model, "artifact_removed", "ruler")
    les = find(entries, args.model, "lesion_removed")
    return {"insert_delta": [ins["delta_mean"], ins["delta_ci_low"], ins["delta_ci_high"]],
            "insert_flip_to_malignant": ins["flip_to_malignant"], "insert_n": ins["n"],
            "remove_delta_malignant": [rem["delta_malignant"], rem["delta_malignant_ci_low"],
                                       rem["delta_malignant_ci_high"]],
            "remove_n_malignant": rem["n_malignant"],
            "lesion_removed_auc": [les["auc"], les["auc_ci_low"], les["auc_ci_high"]],
            "auc_intact": les["auc_intact"]}


def speed(root: Path, args) -> dict:
    import torch

    from dermcam.audit_set import load_test_split
    from dermcam.checkpoints import load_checkpoint
    from dermcam.config import TrainConfig
    from dermcam.data.synth import SynthConfig, generate
    from dermcam.io import read_json
    from dermcam.run import Run
    from dermcam.stages.probe import PerturbConfig, perturb, run_probe
    from dermcam.stages.train import train

    data, run = root / "speed" / "data", root / "speed" / "run"
    generate(data, SynthConfig.from_preset("clean", n_train=48, n_test=args.n_test,
                                           image_size=max(args.size, 128), seed=args.seed))
    models = ["resnet18", "efficientnet_b0", "mobilenet_v2"]
    train(TrainConfig(data=str(data), out=str(run), models=models, weights="none",
                      image_size=args.size, max_epochs=1, batch_size=16, seed=args.seed,
                      progress=False, cache_dir=str(root / "cache")))
    walls, stage = [], {}
    for _ in range(args.repeats):
        for f in ("probe.csv", "probe_summary.json"):
            (run / f).unlink(missing_ok=True)
        import shutil

        shutil.rmtree(run / "probe", ignore_errors=True)
        t = time.perf_counter()
        run_probe(run, ProbeConfig(placements=args.placements, n_boot=200, figures=False,
                                   precision=args.precision))
        walls.append(time.perf_counter() - t)
        stage = read_json(run / "manifest.json")["stages"]["probe"]
    n_variants = stage["rows_per_model"]
    n_images = stage["n_images"]
    # naive: per image, per model, perturb again and score each variant alone
    _, samples, split = load_test_split(Run.open(run))
    cfg = PerturbConfig(placements=args.placements, seed=args.seed)
    from dermcam.inference import Bf16Inference
    from dermcam.stages.probe import inference_precision

    nets = [load_checkpoint(run / "models" / m / "model.pt")[0] for m in models]
    # the naive loop scores in the same precision as the stage
    nets = [Bf16Inference(n) if inference_precision(args.precision, m, "cpu", args.size)
            == "bf16-mixed" else n for m, n in zip(models, nets)]
    from dermcam.inference import predict_proba

    sub = samples[:args.naive_images]
    t = time.perf_counter()
    n_naive = 0
    for s in sub:
        it = split.cache.get(s, split.size)
        for net in nets:
            for v in perturb(it["image"], it["mask"], it.get("artifacts"), s.image_id, cfg):
                predict_proba(net, v.image[None], batch_size=1)
                n_naive += 1
            predict_proba(net, it["image"][None], batch_size=1)
    naive_s = time.perf_counter() - t
    per_image_naive = naive_s / len(sub)
    wall = statistics.median(walls)
    return {"images": n_images, "models": 3, "precision": stage["precision"],
            "variants_per_image": n_variants / n_images,
            "size": args.size, "torch_threads": torch.get_num_threads(),
            "wall_s_runs": [round(w, 1) for w in walls], "wall_s_median": round(wall, 1),
            "dermcam_images_per_s": round(n_images / wall, 2),
            "naive_images_per_s": round(1 / per_image_naive, 3),
            "naive_images_timed": len(sub), "naive_model_calls": n_naive,
            "speedup": round(per_image_naive / (wall / n_images), 2),
            "naive_extrapolated_s": round(per_image_naive * n_images, 1),
            "inpaint_share": round(stage["timing"]["inpaint_seconds"] / walls[-1], 3),
            "perturb_share": round(stage["timing"]["perturb_seconds"] / walls[-1], 3),
            "predict_share": round(stage["timing"]["predict_seconds"] / walls[-1], 3),
            "scored_images_per_s": stage["timing"]["scored_images_per_second"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--twins", action="store_true")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--source-size", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=900)
    ap.add_argument("--n-test", type=int, default=379)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--recipe", choices=("bench", "demo"), default="bench",
                    help="--twins: training recipe; 'bench' = one-cycle lr 2e-3 for --epochs "
                         "in float32, 'demo' = dermcam demo's "
                         "(plateau, lr 1e-3, 10 epochs)")
    ap.add_argument("--train-precision", default=None,
                    help="--twins: training precision; default 'auto' (bf16 where it pays) "
                         "for --recipe demo, as dermcam demo, and '32-true' for --recipe "
                         "bench; tests/end_to_end/test_shortcut.py trains the demo recipe in 32-true")
    ap.add_argument("--placements", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-images", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="32-true",
                    help="--speed: the probe's inference precision (32-true, bf16-mixed, auto)")
    args = ap.parse_args()
    if args.train_precision is None:
        args.train_precision = "auto" if args.recipe == "demo" else "32-true"
    _quiet()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.twins:
            out["twins"] = {p: twin(root, p, args) for p in ("clean", "shortcut")}
        if args.speed:
            out["speed"] = speed(root, args)
    print(json.dumps(out, indent=1, default=lambda v: round(float(v), 4)))


if __name__ == "__main__":
    main()
