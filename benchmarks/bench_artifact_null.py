"""Is a model's heatmap mass on an artifact learned, or what any network's maps do to a
high-contrast band? A randomised-weights reference for the artifact ratio.

For each given run folder (e.g. a ``dermcam demo``'s ``run/`` and ``shortcut/run/``):
the model's artifact ratio (heatmap mass on the artifact's pixels / its area, on test
images that carry it; 1 = uniform) at the method and layer ``dermcam explain`` chose for
it, recomputed from the images, and the same ratio for ``--inits`` copies of the model
whose weights are re-initialised (:func:`dermcam.sanity.randomise_parameters`), with 95 %
bootstrap CIs (:func:`dermcam.localisation.artifact_ratios`). A trained ratio above the
randomised copies' is attention the training put there.

``--grid``: instead, the trained model's ratio at every method and layer the localisation
benchmark scored (``--methods``), for choosing a method on ground truth: on a demo's
control (rulers independent of the label) and shortcut model (rulers tied to malignancy
in training), a method fit for the artifact audit puts the control at or below 1 and the
shortcut model above it.

    python benchmarks/bench_artifact_null.py dermcam-demo/run dermcam-demo/shortcut/run \\
        --model resnet18 --artifact ruler --inits 3
    python benchmarks/bench_artifact_null.py dermcam-demo/run dermcam-demo/shortcut/run --grid
"""

from __future__ import annotations

import argparse
import copy

import numpy as np


def ratio_row(model, method: str, layer: str, target: str, images, art_maps, code: int,
              artifact: str, n_boot: int) -> dict:
    import pandas as pd
    import torch

    from dermcam.attribution import CamExplainer
    from dermcam.augment import preprocess
    from dermcam.leakage import artifact_mass
    from dermcam.localisation import artifact_ratios

    with CamExplainer(model, layer, method) as ex:
        heat = ex.compute(preprocess(torch.from_numpy(images)), target=target).heatmaps
    on = art_maps == code
    df = pd.DataFrame({f"artifact_{artifact}": 1,
                       f"mass_{artifact}": artifact_mass(heat, art_maps, {artifact: code})[artifact],
                       f"area_{artifact}": on.mean((1, 2))})
    return artifact_ratios(df, [artifact], n_boot=n_boot)[0]


def main() -> None:
    from dermcam.data.synth import ARTIFACTS
    from dermcam.run import Run
    from dermcam.sanity import randomise_parameters

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--artifact", default="ruler", choices=ARTIFACTS)
    ap.add_argument("--inits", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--grid", action="store_true",
                    help="the trained model's ratio at every method x layer instead")
    ap.add_argument("--methods", default="gradcam,gradcam++,hirescam,layercam,xgradcam",
                    help="with --grid: comma-separated CAM methods")
    args = ap.parse_args()
    code = ARTIFACTS.index(args.artifact) + 1
    for folder in args.runs:
        run = Run.of(folder)
        explain = run.stage_entry("explain")
        sel = next((c for c in explain.get("layers", []) if c["model"] == args.model), None)
        if sel is None:
            raise SystemExit(f"{folder}: explain recorded no layer for {args.model}")
        target = explain.get("target", "malignant")
        items = [run.cache.get(s, run.image_size) for s in run.test_samples(require_masks=True)]
        keep = [it for it in items if it["artifacts"] is not None and (it["artifacts"] == code).any()]
        images = np.stack([it["image"] for it in keep])
        art_maps = np.stack([it["artifacts"] for it in keep])
        model, info, _payload = run.load_model(args.model)
        if args.grid:
            print(f"{folder}: {args.model}, target {target}, {len(keep)} test images with a "
                  f"{args.artifact}; ratio [95 % CI] per method (rows) and layer (columns)")
            layers = list(info.candidate_layers)
            print(f"  {'method':<10}" + "".join(f"{la:>22}" for la in layers))
            for method in args.methods.split(","):
                cells = []
                for la in layers:
                    r = ratio_row(model, method, la, target, images, art_maps, code,
                                  args.artifact, args.n_boot)
                    cells.append(f"{r['ratio']:.2f} [{r['ratio_ci_low']:.2f}, "
                                 f"{r['ratio_ci_high']:.2f}]")
                print(f"  {method:<10}" + "".join(f"{c:>22}" for c in cells), flush=True)
            continue
        rows = [("trained", ratio_row(model, sel["method"], sel["layer"], target, images,
                                      art_maps, code, args.artifact, args.n_boot))]
        for seed in range(args.inits):
            rand = copy.deepcopy(model)
            randomise_parameters(rand, seed)
            rows.append((f"randomised (seed {seed})",
                         ratio_row(rand, sel["method"], sel["layer"], target, images, art_maps,
                                   code, args.artifact, args.n_boot)))
        print(f"{folder}: {args.model}, {sel['method']} at {sel['layer']}, target {target}, "
              f"{len(keep)} test images with a {args.artifact}")
        for label, r in rows:
            print(f"  {label:<22} ratio {r['ratio']:.2f} [{r['ratio_ci_low']:.2f}, "
                  f"{r['ratio_ci_high']:.2f}] (n = {r['n']})")


if __name__ == "__main__":
    main()
