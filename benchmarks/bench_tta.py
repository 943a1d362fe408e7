"""Test ROC AUC of a trained run's models with and without test-time augmentation: the
logit difference averaged over the 8 views of each test image (4 rotations by 90 degrees,
each with and without a horizontal flip), against the single view ``dermcam evaluate``
scores. A measurement of what TTA would buy, not a dermcam feature: the heatmaps and
probes explain the single-view model, and the calibration and threshold are fitted on
single-view validation logits.

    python benchmarks/bench_tta.py RUN
"""

from __future__ import annotations

import argparse


def main() -> None:
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    from dermcam import run as runmod
    from dermcam.augment import preprocess
    from dermcam.data.cache import load_arrays

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a trained run folder")
    args = ap.parse_args()
    run = runmod.Run.open(args.run)
    arr = load_arrays(run.test_samples(), run.image_size, run.cache)
    x = preprocess(torch.from_numpy(arr.images))
    print(f"{run.dir}: {len(arr)} test images, {int(arr.labels.sum())} malignant")
    print(f"{'model':<16} {'single view':>12} {'8 views':>8} {'gain':>7}")
    for name in run.trained_models:
        model, _, _ = run.load_model(name)
        model.eval()
        views = []
        with torch.inference_mode():
            for k in range(4):
                for flip in (False, True):
                    v = torch.rot90(x, k, (2, 3))
                    z = model(torch.flip(v, (3,)) if flip else v).double()
                    views.append((z[:, 1] - z[:, 0]).numpy())
        single = roc_auc_score(arr.labels, views[0])
        tta = roc_auc_score(arr.labels, np.mean(views, axis=0))
        print(f"{name:<16} {single:>12.3f} {tta:>8.3f} {tta - single:>+7.3f}")


if __name__ == "__main__":
    main()
