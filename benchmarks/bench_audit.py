"""Speed of the full audit of an outside model: ``dermcam audit`` on a ResNet18 state dict.

Makes the synthetic benchmark once (``--n-train`` training images, whose validation
part chooses threshold, calibration and CAM layer; ``--n-test`` masked test images),
saves a torchvision ResNet18 with a 2-class head as a plain state dict (random weights:
they do not change the cost), then runs ``dermcam.audit`` (evaluate, the localisation
benchmark, the sanity check, attention, every probe with ``--placements``, the report)
``--repeats`` times into fresh run folders, and prints the median wall time and each
stage's, with every run. The decode cache is warmed first, so the runs time the audit,
not JPEG decoding. On a GPU machine pass ``--device cuda``::

    python benchmarks/bench_audit.py --out /tmp/bench-audit
    python benchmarks/bench_audit.py --out /tmp/bench-audit --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

STAGES = ("train", "evaluate", "explain", "probe", "report")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-train", type=int, default=900)
    ap.add_argument("--n-test", type=int, default=379)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--placements", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()

    import torch
    from torchvision.models import resnet18

    import dermcam
    from dermcam.data.synth import SynthConfig, generate

    data, cache = args.out / "data", args.out / "cache"
    if not (data / "synth.json").exists():
        generate(data, SynthConfig.from_preset("clean", n_train=args.n_train,
                                               n_test=args.n_test, seed=0,
                                               image_size=args.image_size))
    weights = args.out / "resnet18.pt"
    torch.manual_seed(0)
    torch.save(resnet18(num_classes=2).state_dict(), weights)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device "
          f"{args.device}, precision {args.precision}; {args.n_test} test images at "
          f"{args.image_size} px, {args.placements} placements", flush=True)
    walls, stages = [], {s: [] for s in STAGES}
    for i in range(args.repeats + 1):  # the first run warms the decode cache, untimed
        out = args.out / f"run{i}"
        t0 = time.perf_counter()
        run = dermcam.audit(weights, data, out, arch="resnet18", image_size=args.image_size,
                            placements=args.placements, device=args.device,
                            precision=args.precision, overwrite=True, cache_dir=str(cache))
        wall = time.perf_counter() - t0
        manifest = json.loads((run.dir / "manifest.json").read_text())
        times = {s: manifest["stages"].get(s, {}).get("wall_time_s") for s in STAGES}
        if i == 0:
            print(f"warm-up (decode cache filled): {wall:.1f} s", flush=True)
            continue
        walls.append(wall)
        for s in STAGES:
            stages[s].append(times[s] or 0.0)
        print(f"run {i}: {wall:.1f} s  " + "  ".join(
            f"{s} {times[s] or 0:.1f}" for s in STAGES), flush=True)
    print(f"median of {len(walls)}: {statistics.median(walls):.1f} s  " + "  ".join(
        f"{s} {statistics.median(v):.1f}" for s, v in stages.items()))


if __name__ == "__main__":
    main()
