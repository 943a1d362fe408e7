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


def main() -> None:
    from dermcam.data.synth import ARTIFACTS
    from dermcam.localisation import artifact_ratio_at, artifact_test_images
    from dermcam.run import Run
    from dermcam.sanity import randomise_parameters

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--artifact", default="ruler", choices=ARTIFACTS)
    ap.add_argument("--inits", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--target", default=None,
                    help="class the maps explain (default: the one explain recorded)")
    ap.add_argument("--grid", action="store_true",
                    help="the trained model's ratio at every method x layer instead")
    ap.add_argument("--methods", default="gradcam,gradcam++,hirescam,layercam,xgradcam",
                    help="with --grid: comma-separated CAM methods")
    args = ap.parse_args()
    for folder in args.runs:
        run = Run.of(folder)
        explain = run.stage_entry("explain")
        sel = next((c for c in explain.get("layers", []) if c["model"] == args.model), None)
        if sel is None:
            raise SystemExit(f"{folder}: explain recorded no layer for {args.model}")
        target = args.target or explain.get("target", "malignant")
        images, art_maps, code = artifact_test_images(run, args.artifact)
        model, info, payload = run.load_model(args.model)
        cut = float(payload["threshold"])  # the decision, for --target predicted
        if args.grid:
            print(f"{folder}: {args.model}, target {target}, {len(images)} test images with a "
                  f"{args.artifact}; ratio [95 % CI] per method (rows) and layer (columns)")
            layers = list(info.candidate_layers)
            print(f"  {'method':<10}" + "".join(f"{la:>22}" for la in layers))
            for method in args.methods.split(","):
                cells = []
                for la in layers:
                    r = artifact_ratio_at(model, method, la, images, art_maps, code,
                                          args.artifact, target, args.n_boot,
                                          threshold=cut)
                    cells.append(f"{r['ratio']:.2f} [{r['ratio_ci_low']:.2f}, "
                                 f"{r['ratio_ci_high']:.2f}]")
                print(f"  {method:<10}" + "".join(f"{c:>22}" for c in cells), flush=True)
            continue
        rows = [("trained", artifact_ratio_at(model, sel["method"], sel["layer"], images,
                                              art_maps, code, args.artifact, target,
                                              args.n_boot, threshold=cut))]
        for seed in range(args.inits):
            rand = copy.deepcopy(model)
            randomise_parameters(rand, seed)
            rows.append((f"randomised (seed {seed})",
                         artifact_ratio_at(rand, sel["method"], sel["layer"], images,
                                           art_maps, code, args.artifact, target,
                                           args.n_boot, threshold=cut)))
        print(f"{folder}: {args.model}, {sel['method']} at {sel['layer']}, target {target}, "
              f"{len(images)} test images with a {args.artifact}")
        for label, r in rows:
            print(f"  {label:<22} ratio {r['ratio']:.2f} [{r['ratio_ci_low']:.2f}, "
                  f"{r['ratio_ci_high']:.2f}] (n = {r['n']})")


if __name__ == "__main__":
    main()
