"""Proof that the leakage audit catches a planted shortcut.

Trains the same architecture on the synthetic benchmark's ``clean`` and ``shortcut``
presets (same seed: identical skin and lesions, only the ruler pixels differ; rulers in
80 % of malignant and 5 % of benign *training* images, 20 % of both at test time), then
runs the attention analysis and prints, on test images that carry a ruler: the share of
heatmap mass on ruler pixels, that share relative to the ruler's area (1 = uniform), and
excess leakage; plus test AUC on images with and without a ruler.

    python benchmarks/bench_shortcut.py --model resnet18 --size 96 --epochs 8
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from dermcam.config import EvaluateConfig, ExplainConfig


def run_preset(root: Path, preset: str, args) -> dict:
    from sklearn.metrics import roc_auc_score

    from dermcam.config import TrainConfig
    from dermcam.data.synth import SynthConfig, generate
    from dermcam.stages.evaluate import run_evaluate
    from dermcam.stages.explain import run_explain
    from dermcam.stages.train import train

    data = root / preset / "data"
    run = root / preset / "run"
    generate(data, SynthConfig.from_preset(preset, n_train=args.n_train, n_test=args.n_test,
                                           image_size=args.source_size, seed=args.seed))
    train(TrainConfig(data=str(data), out=str(run), models=[args.model], weights="none",
                      image_size=args.size, max_epochs=args.epochs, batch_size=32, lr=2e-3,
                      patience=args.epochs, schedule="onecycle", seed=args.seed,
                      progress=False, cache_dir=str(root / "cache"),
                      precision="32-true"))  # as tests/end_to_end/test_shortcut.py, on any CPU
    run_evaluate(run, EvaluateConfig(n_boot=200))
    # the test's recipe (tests/end_to_end/test_shortcut.py): gradcam++ at layer3
    run_explain(run, ExplainConfig(methods=["gradcam++"], n_boot=200, sanity=False, figures=False,
                                   target="predicted", layer="layer3"))
    att = pd.read_csv(run / "attention.csv", keep_default_na=False, na_values=[""])
    meta = pd.read_csv(data / "metadata.csv").set_index("image_id")
    att["ruler_area"] = np.nan
    from dermcam.data import load_dataset
    from dermcam.data.cache import ImageCache

    ds = load_dataset(data)
    cache = ImageCache(root / "cache")
    by_id = {s.image_id: s for s in ds.split("test")}
    areas = {i: float((cache.get(by_id[i], args.size)["artifacts"] == 1).mean())
             for i in att["image_id"]}
    att["ruler_area"] = att["image_id"].map(areas)
    with_r = att[att["artifact_ruler"] == 1]
    without = att[att["artifact_ruler"] == 0]
    pred = pd.read_csv(run / "predictions.csv").set_index("image_id")
    ruler = meta.loc[pred.index, "artifact_ruler"].to_numpy() == 1
    y, p = pred["label"].to_numpy(), pred["prob_malignant"].to_numpy()
    return {
        "preset": preset,
        "test_auc": roc_auc_score(y, p),
        "auc_ruler": roc_auc_score(y[ruler], p[ruler]) if len(set(y[ruler])) == 2 else np.nan,
        "auc_no_ruler": roc_auc_score(y[~ruler], p[~ruler]),
        "ruler_mass": with_r["mass_ruler"].mean(),
        "ruler_enrichment": (with_r["mass_ruler"] / with_r["ruler_area"]).mean(),
        "excess_leakage_ruler": with_r["excess_leakage"].mean(),
        "excess_leakage_no_ruler": without["excess_leakage"].mean(),
        "n_ruler": len(with_r),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--source-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--n-train", type=int, default=900)
    ap.add_argument("--n-test", type=int, default=379)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_preset(Path(tmp), p, args) for p in ("clean", "shortcut")]
    df = pd.DataFrame(rows).set_index("preset")
    pd.set_option("display.width", 160)
    print(f"{args.model} at {args.size} px, {args.epochs} epochs, {args.n_train} train / "
          f"{args.n_test} test images, seed {args.seed} ({time.perf_counter() - t0:.0f} s)")
    print(df.round(3).T.to_string())
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=float))


if __name__ == "__main__":
    main()
