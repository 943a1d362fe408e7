"""Cost growth: time and peak memory of train + explain as the data set grows.

For each size N, writes a synthetic benchmark with N training and N/2 test images,
runs ``dermcam train`` (one epoch, one model) and ``dermcam explain`` as separate
processes, and prints wall time and peak resident memory (ru_maxrss) of each.
Linear time and flat explain memory are the goals (images are streamed from the
decode cache; heatmaps go to disk batch by batch).

    python benchmarks/bench_scale.py --sizes 500,1000,2000 --image-size 224
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str]) -> tuple[float, float]:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return dt, usage.ru_maxrss / 1024  # MiB (Linux reports KiB)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500,1000,2000")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--model", default="resnet18")
    args = ap.parse_args()
    dermcam = [sys.executable, "-m", "dermcam", "-q"]
    print(f"{args.model}, {args.image_size} px, 1 epoch; explain = gradcam on every test image")
    print(f"{'N train':>8s} {'N test':>7s} {'train s':>8s} {'train MiB':>10s} "
          f"{'explain s':>10s} {'explain MiB':>12s} {'explain img/s':>14s} "
          f"{'metrics share':>14s}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(v) for v in args.sizes.split(",")):
            data, out = Path(tmp) / f"d{n}", Path(tmp) / f"r{n}"
            run([*dermcam, "synth", "--out", str(data), "--n-train", str(n), "--n-test", str(n // 2),
                 "--size", "256"])
            env_cache = ["--weights", "none", "--image-size", str(args.image_size), "--epochs",
                         "1", "--models", args.model]
            t_tr, m_tr = run([*dermcam, "train", str(data), "--out", str(out), *env_cache])
            t_ex, m_ex = run([*dermcam, "explain", str(out), "--no-sanity", "--n-boot", "200"])
            import json

            timing = json.loads((out / "manifest.json").read_text())["stages"]["explain"][
                "timing"]
            share = 100 * timing["metric_seconds"] / timing["explain_seconds"]
            print(f"{n:8d} {n // 2:7d} {t_tr:8.1f} {m_tr:10.0f} {t_ex:10.1f} {m_ex:12.0f} "
                  f"{(n // 2) / t_ex:14.1f} {share:13.1f}%", flush=True)


if __name__ == "__main__":
    main()
