"""Speed of the real-pixel probes: the context swap (every labelled artifact) and the
heatmap-guided removal and transplant, for one ResNet18 at 128 px on N real test images.

From a folder of real images with masks and Bissoto et al.'s artifact labels (e.g.
``../shared/isic2017-dev``) it builds a generic-layout data set with ``--n-test`` test
images, trains ResNet18 from scratch for one epoch (the weights do not change the cost),
computes its heatmaps with ``dermcam explain``, then times the two probes in-process
``--repeats`` times and prints the median and every run, per probe, with the images,
artifacts and forward passes behind them::

    python benchmarks/bench_real_probes.py --data ../shared/isic2017-dev \\
        --labels ../shared/isic2017-dev/isic_bias_dev.csv --out /tmp/real-probes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from bench_real_shortcut import dermcam, read_labels, write_layout  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--labels", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--n-train", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3, help="0: only train and explain")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--precision", default="32-true", help="32-true, bf16-mixed or auto")
    args = ap.parse_args()

    import torch

    from dermcam import run as runmod
    from dermcam.audit_set import load_test_split
    from dermcam.probe_real import SWAP_DONORS
    from dermcam.probe_scoring import load_models
    from dermcam.stages.probe import (
        artifact_flags,
        chosen_heatmaps,
        context_swap,
        hot_spots,
        inference_precision,
    )

    df = read_labels(args.data, args.labels)
    rng = np.random.default_rng(0)
    ids = rng.permutation(df["image_id"].to_numpy())[:args.n_test + args.n_train]
    rows = df[df["image_id"].isin(set(ids))][["image_id", "label"]].copy()
    rows["split"] = np.where(rows["image_id"].isin(set(ids[:args.n_test])), "test", "train")
    data, run_dir = args.out / "data", args.out / "run"
    write_layout(rows, args.data, data)
    if not (run_dir / "attention.csv").exists():
        dermcam("train", data, "--out", run_dir, "--models", "resnet18", "--weights", "none",
                "--image-size", args.image_size, "--epochs", 1, "--overwrite")
        dermcam("explain", run_dir, "--methods", "hirescam", "--bench-methods", "hirescam",
                "--no-sanity")
    if args.repeats == 0:  # set the run up only (e.g. while other work runs)
        return
    run = runmod.Run.open(run_dir)
    ds, samples, split = load_test_split(run, artifacts=args.labels)
    items = [split.cache.get(s, split.size) for s in samples]
    images = np.stack([it["image"] for it in items])
    masks = np.stack([np.asarray(it["mask"], bool) for it in items])
    labels = np.array([s.label for s in samples])
    flags = artifact_flags(ds, samples)
    names = run.trained_models
    prec = {m: inference_precision(args.precision, m, "cpu", run.image_size) for m in names}
    models = load_models(run, names, "cpu", prec)
    maps = chosen_heatmaps(run.dir, run.stage_entry("explain"), names, samples)
    common = dict(n_boot=1000, seed=0, batch_size=64, device="cpu")
    print(f"{len(images)} test images at {run.image_size} px, ResNet18 ({prec['resnet18']}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    times: dict[str, list[float]] = {"context_swap": [], "hot_spots": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        swaps = context_swap(models, images, masks, labels, flags, **common)
        times["context_swap"].append(time.perf_counter() - t)
        t = time.perf_counter()
        hot = hot_spots(models, images, masks, labels, maps, flags, **common)
        times["hot_spots"].append(time.perf_counter() - t)
    arts = ", ".join(e["artifact"] for e in swaps)
    print(f"context swap: {len(swaps)} artifacts ({arts}), {3 * SWAP_DONORS} composites per image "
          "and artifact")
    print(f"hot spots: {hot[0]['n']} of {len(images)} images with a marked off-lesion region "
          "(2 inpaintings + 6 transplants each)")
    total = [a + b for a, b in zip(times["context_swap"], times["hot_spots"], strict=True)]
    for what, ts in (*times.items(), ("both", total)):
        print(f"{what:13s} median {statistics.median(ts):6.1f} s  runs "
              + " ".join(f"{t:.1f}" for t in ts))
    pd.DataFrame(times).to_csv(args.out / "times.csv", index=False)


if __name__ == "__main__":
    main()
