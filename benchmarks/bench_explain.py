"""Grad-CAM throughput: dermcam's batched, early-stopped explain vs the study's loop.

The study's loop (reproduced here): one image at a time, a forward pass to get the
prediction, then a second forward + full ``loss.backward()`` through the whole network
for the CAM. dermcam: batches, one forward, backward stopped at the hooked layer.
Both use the same random-init models and the same images; the script checks the
heatmaps agree and prints images/s, the speed-up, and the time to score the saved
heatmaps (leakage metrics) as a share of explain time.

    python benchmarks/bench_explain.py --size 224 --n 32 --batch 16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def study_loop(model, layer_name, x):
    """One image at a time, two forwards, full backward (the reference study's style)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.eval()
    out = []
    layer = model.get_submodule(layer_name)
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for i in range(len(x)):
            xi = x[i:i + 1]
            with torch.no_grad():
                pred = int(model(xi).argmax(1))
            out.append(cam(input_tensor=xi, targets=[ClassifierOutputTarget(pred)])[0])
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=32, help="images per model")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--models", default="resnet18,efficientnet_b0,mobilenet_v2")
    args = ap.parse_args()

    from dermcam.attribution import CamExplainer
    from dermcam.leakage import score_batch
    from dermcam.models import build_model

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.n} images at {args.size} px, batch {args.batch}")
    print(f"{'model':16s} {'study loop':>12s} {'dermcam':>12s} {'speed-up':>9s} "
          f"{'max |diff|':>11s} {'scoring':>10s}")
    for name in args.models.split(","):
        model, info = build_model(name, weights="none")
        model.train()
        with torch.no_grad():  # non-degenerate BatchNorm statistics for random weights
            model(torch.randn(8, 3, args.size, args.size))
        model.eval()
        x = torch.randn(args.n, 3, args.size, args.size)
        study_loop(model, info.target_layer, x[:2])  # warm-up
        t = time.perf_counter()
        ref = study_loop(model, info.target_layer, x)
        t_study = time.perf_counter() - t
        heats = []
        with CamExplainer(model, info.target_layer, "gradcam") as ex:
            ex.compute(x[:2])
            t = time.perf_counter()
            for i in range(0, args.n, args.batch):
                heats.append(ex.compute(x[i:i + args.batch], target="predicted").heatmaps)
            t_ours = time.perf_counter() - t
        heats = np.concatenate(heats)
        masks = np.zeros((args.n, args.size, args.size), bool)
        masks[:, args.size // 4: 3 * args.size // 4, args.size // 4: 3 * args.size // 4] = True
        t = time.perf_counter()
        score_batch(heats.astype(np.float16).astype(np.float32), masks)
        t_score = time.perf_counter() - t
        diff = float(np.abs(heats - ref).max())
        print(f"{name:16s} {args.n / t_study:9.1f}/s {args.n / t_ours:9.1f}/s "
              f"{t_study / t_ours:8.1f}x {diff:11.2e} {100 * t_score / t_ours:8.1f} %")


if __name__ == "__main__":
    main()
