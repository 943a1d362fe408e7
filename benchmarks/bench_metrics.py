"""Scoring speed: every leakage metric on a batch of heatmaps, and the evaluation stage.

Times ``leakage.score_batch`` on N random 224 x 224 heatmaps (30 % exact zeros, as
ReLU'd Grad-CAM gives) and ``evaluation.evaluate_predictions`` for three models on an
ISIC-2016-sized test set (304 benign + 75 malignant) with 1000 bootstrap resamples.
These timings used to be asserted in the tests; they live here so that a loaded machine
cannot fail the suite.

    python benchmarks/bench_metrics.py --n 379 --repeat 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=379, help="heatmaps to score")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = ap.parse_args()

    from dermcam.evaluation import evaluate_predictions
    from dermcam.leakage import score_batch

    rng = np.random.default_rng(8)
    cams = rng.random((args.n, args.size, args.size), dtype=np.float32)
    cams[cams < 0.3] = 0.0
    masks = rng.random(cams.shape) < 0.3
    t = best_of(args.repeat, lambda: score_batch(cams, masks))
    print(f"score_batch: {args.n} heatmaps of {args.size} x {args.size}: {t:.3f} s "
          f"({args.n / t:.0f} img/s)")

    y = np.r_[np.zeros(304, int), np.ones(75, int)]
    ids = [f"ISIC_{i:07d}" for i in range(y.size)]
    frames = [pd.DataFrame({"image_id": ids, "model": name, "label": y,
                            "prob_malignant": 1 / (1 + np.exp(-(rng.normal(size=y.size)
                                                                + sep * y - 1.5)))})
              for name, sep in (("resnet18", 1.2), ("efficientnet_b0", 1.3),
                                ("mobilenet_v2", 1.0))]
    df = pd.concat(frames, ignore_index=True)
    thresholds = dict.fromkeys(df["model"].unique(), 0.3)
    t = best_of(args.repeat, lambda: evaluate_predictions(df, thresholds, n_boot=args.n_boot))
    print(f"evaluate_predictions: 3 models x 379 images, {args.n_boot} resamples: {t:.3f} s")


if __name__ == "__main__":
    main()
