"""Inference throughput of the study's models: float32, float32 with BatchNorm folded into
the convolutions (what ``dermcam probe`` runs by default:
:func:`dermcam.inference.folded_for_inference`), bf16 autocast, and bf16 folded (what
``dermcam probe --precision bf16-mixed`` runs: :class:`dermcam.inference.Bf16Inference`).

Random-init models (weights do not change the cost) with BatchNorm statistics drawn as a
trained model's would be, random input, channels-last in every variant,
``torch.inference_mode``; median of ``--repeats`` timed batches after one warm-up batch.
Also prints the largest difference between the folded and unfolded models' float32
logits, which should be rounding only.

    python benchmarks/bench_inference.py --size 224 --batch 64 --repeats 5
    python benchmarks/bench_inference.py --size 64 --batch 64 --repeats 7   # the demo's size
"""

from __future__ import annotations

import argparse
import statistics
import time


def _median_seconds(fn, x, repeats: int) -> float:
    fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _trained_like_statistics(net):
    """BatchNorm statistics and affine parameters drawn away from their initial values
    (mean 0, variance 1, identity), as a trained model's are, so that folding them is not
    trivially exact."""
    import torch

    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, lo, hi in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0),
                              (m.weight.data, 0.5, 1.5), (m.bias.data, -0.2, 0.2)):
                t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=gen))
    return net


def main() -> None:
    import torch

    from dermcam.inference import Bf16Inference, fold_batchnorm, folded_for_inference
    from dermcam.models import DEFAULT_MODELS, build_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size).contiguous(
        memory_format=torch.channels_last)
    print(f"{args.size} px, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"{'model':<16} {'fp32 img/s':>11} {'fp32+fold img/s':>16} {'bf16 img/s':>11} "
          f"{'bf16+fold img/s':>16} {'fp32 fold speed-up':>19} {'bf16 fold speed-up':>19} "
          f"{'fp32 |fold diff|':>17}")
    for name in args.models.split(","):
        net, _info = build_model(name, weights="none")
        net = _trained_like_statistics(net).eval().to(memory_format=torch.channels_last)
        folded = fold_batchnorm(net).to(memory_format=torch.channels_last)
        n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())

        def bf16(a, model=net):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(a)

        with torch.inference_mode():
            t32 = _median_seconds(net, x, args.repeats)
            t32fold = _median_seconds(folded_for_inference(net, channels_last=True), x,
                                      args.repeats)
            t16 = _median_seconds(bf16, x, args.repeats)
            tfold = _median_seconds(Bf16Inference(net), x, args.repeats)
            diff = (net(x) - folded(x)).abs().max().item()
        print(f"{name:<16} {args.batch / t32:>11.1f} {args.batch / t32fold:>16.1f} "
              f"{args.batch / t16:>11.1f} {args.batch / tfold:>16.1f} "
              f"{t32 / t32fold:>18.2f}x {t16 / tfold:>18.2f}x {diff:>17.2e}"
              f"{'' if n_bn == 0 else f'  ({n_bn} BatchNorm left)'}")


if __name__ == "__main__":
    main()
