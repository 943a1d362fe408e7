"""Generating the demo's shortcut data: rendered in full vs lent by the default data.

The demo makes the default (``clean``) data set and then the ``shortcut`` set of the same
seed, whose images differ only where the rulers' draws differ. ``generate(...,
reference=clean)`` hard-links every image whose planted artifacts agree instead of
rendering it. This script times both ways, interleaved, checks the two outputs are the
same bytes, and prints medians and the ratio::

    python benchmarks/bench_synth.py --repeats 3
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=900)
    ap.add_argument("--n-test", type=int, default=379)
    ap.add_argument("--size", type=int, default=128, help="source image side (the demo's)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from dermcam.data.synth import SynthConfig, generate

    kw = dict(n_train=args.n_train, n_test=args.n_test, seed=args.seed, image_size=args.size)
    root = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        t = time.perf_counter()
        clean = generate(root / "clean", SynthConfig.from_preset("clean", **kw))
        print(f"default data: {time.perf_counter() - t:.1f} s")
        times: dict[str, list[float]] = {"rendered": [], "reference": []}
        for _ in range(args.repeats):
            for how in times:
                out = root / how
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                generate(out, SynthConfig.from_preset("shortcut", **kw),
                         reference=clean if how == "reference" else None)
                times[how].append(time.perf_counter() - t)
        a, b = root / "rendered", root / "reference"
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        same = files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
            filecmp.cmp(a / f, b / f, shallow=False) for f in files)
        linked = sum((b / f).stat().st_nlink > 1 for f in files)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"shortcut data, {len(files)} files; runs (s): "
              + "; ".join(f"{k} {', '.join(f'{x:.2f}' for x in v)}" for k, v in times.items()))
        print(f"median: rendered {med['rendered']:.2f} s, from the reference "
              f"{med['reference']:.2f} s ({med['rendered'] / med['reference']:.1f}x); "
              f"{linked} files linked; outputs identical: {same}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
