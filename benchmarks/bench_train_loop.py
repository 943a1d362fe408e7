"""What the training loop spends outside the optimizer step: the real ``dermcam train``
path (the demo's recipe, :func:`dermcam.demo.demo_train_config`) with the training split
streamed from the decode cache against held in memory, and with or without Lightning's
last.ckpt after every epoch.

Variants, run interleaved (one of each per repeat, so the host's drift hits all alike):

* ``stream+last`` -- the loop before 2026-12-06: every item read from its cache file each
  epoch, and a full checkpoint (weights and Adam's buffers) written after every epoch;
* ``memory+last`` -- the split held in memory (``CachedSplit.hold_in_memory``, what
  ``dermcam train`` does when the images fit in ``IN_MEMORY_BYTES``), last.ckpt kept (the
  default for ``dermcam train``, so ``--resume`` works);
* ``memory`` -- held in memory and no last.ckpt (``resumable=False``: the demo).

Prints each model's median wall time of ``train`` per variant and the speed-up of the
two in-memory variants over the baseline (``x``), and checks that the three variants' trained weights are identical (the data
path changes how images are read, not which).

    python benchmarks/bench_train_loop.py --data DATA --epochs 3 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path


def _train_once(data: Path, out: Path, model: str, epochs: int, seed: int, cache: Path,
                memory: bool, last: bool) -> tuple[float, str]:
    import hashlib

    import torch

    from dermcam.demo import demo_train_config
    from dermcam.stages import train as tr

    cfg = demo_train_config(data, out, [model], epochs=epochs, seed=seed,
                            cache_dir=str(cache), resumable=last)
    budget = tr.IN_MEMORY_BYTES
    tr.IN_MEMORY_BYTES = budget if memory else -1
    try:
        t = time.perf_counter()
        tr.train(cfg, overwrite=True)
        seconds = time.perf_counter() - t
    finally:
        tr.IN_MEMORY_BYTES = budget
    state = torch.load(out / "models" / model / "model.pt", map_location="cpu",
                       weights_only=True)["state_dict"]
    digest = hashlib.sha1(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()
    return seconds, digest


def main() -> None:
    from dermcam.data.synth import SynthConfig, generate

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None,
                    help="a synthetic data set (default: generate the demo's, seed 0)")
    ap.add_argument("--models", default="resnet18,efficientnet_b0,mobilenet_v2")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    variants = (("stream+last", False, True), ("memory+last", True, True),
                ("memory", True, False))
    with tempfile.TemporaryDirectory(prefix="dermcam-bench-") as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            data = tmp / "data"
            generate(data, SynthConfig.from_preset("clean", seed=args.seed, image_size=128))
        cache = tmp / "cache"
        print(f"{args.epochs} epochs, the demo's recipe at 64 px, median of {args.repeats} "
              "interleaved repeats")
        print(f"{'model':<16}" + "".join(f"{v[0]:>14}" for v in variants)
              + f"{'x memory+last':>15}{'x memory':>10}{'same weights':>14}")
        for model in args.models.split(","):
            times = {v[0]: [] for v in variants}
            digests = set()
            _train_once(data, tmp / "warm", model, 1, args.seed, cache, True, False)
            for _ in range(args.repeats):
                for name, memory, last in variants:
                    s, d = _train_once(data, tmp / name, model, args.epochs, args.seed,
                                       cache, memory, last)
                    times[name].append(s)
                    digests.add(d)
            med = {k: statistics.median(v) for k, v in times.items()}
            base = med["stream+last"]
            print(f"{model:<16}" + "".join(f"{med[v[0]]:>13.1f}s" for v in variants)
                  + f"{base / med['memory+last']:>14.2f}x{base / med['memory']:>9.2f}x"
                  + f"{'yes' if len(digests) == 1 else 'NO':>14}")


if __name__ == "__main__":
    main()
