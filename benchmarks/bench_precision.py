"""Training step time at 32-true vs bf16-mixed, per model and input size, on this machine.

One training step is what ``dermcam train`` does per batch: forward, weighted cross-entropy,
backward, Adam, on tensors in memory (channels-last where dermcam uses it). ``bf16-mixed``
is ``torch.autocast("cpu", torch.bfloat16)`` around forward and loss, as Lightning's
``--precision bf16-mixed`` does on the CPU. Each cell is the median of ``--repeats`` timings
of ``--steps`` steps after warm-up; the ratio is fp32 time / bf16 time (above 1: bf16 is
faster). Also prints what ``--precision auto`` resolves to here.

    python benchmarks/bench_precision.py --sizes 64,224 --batch 32 --steps 5 --repeats 3
    python benchmarks/bench_precision.py --compile --sizes 64 --batch 32 --steps 5 --repeats 3
    python benchmarks/bench_precision.py --sizes 64 --threads 1    # alone, then two at once
    python benchmarks/bench_precision.py --layout --sizes 64,224 --steps 10 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F


def step_time(model, size: int, batch: int, steps: int, bf16: bool, channels_last: bool
              ) -> float:
    return timed_steps(model, size, batch, steps, bf16, channels_last)[1]


def timed_steps(model, size: int, batch: int, steps: int, bf16: bool, channels_last: bool
                ) -> tuple[float, float]:
    """(seconds of the first step, mean seconds per step of the ``steps`` after it)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))
    w = torch.tensor([1.0, 4.0])
    model.train()

    def one():
        ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16
               else contextlib.nullcontext())
        with ctx:
            loss = F.cross_entropy(model(x), y, weight=w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    one()  # warm-up: oneDNN primitive creation (and compilation for a compiled model)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return first, (time.perf_counter() - t0) / steps


def main() -> None:
    from dermcam.device import resolve_precision
    from dermcam.inference import use_channels_last
    from dermcam.models import DEFAULT_MODELS, build_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--sizes", default="64,224")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's, one per core); run two "
                         "copies with --threads 1 at once to see what two concurrent "
                         "single-thread trainings get from two cores")
    ap.add_argument("--compile", action="store_true",
                    help="instead: eager vs torch.compile'd steps in the precision "
                         "--precision auto picks per model and size, with the compilation "
                         "time and the steps it takes to earn it back")
    ap.add_argument("--layout", action="store_true",
                    help="instead: contiguous vs channels-last steps in the precision "
                         "--precision auto picks per model and size")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile:
        compile_table(args)
        return
    if args.layout:
        layout_table(args)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, oneDNN bf16 "
          f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}; --precision auto -> "
          f"{resolve_precision('auto', 'cpu')}")
    print(f"{'model':<16} {'size':>4} {'fp32 s/step':>12} {'bf16 s/step':>12} {'ratio':>6}")
    for name in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            torch.manual_seed(0)
            model, _ = build_model(name, "none")
            cl = use_channels_last(name)
            if cl:
                model = model.to(memory_format=torch.channels_last)
            t = {bf16: statistics.median(step_time(model, size, args.batch, args.steps, bf16,
                                                   cl) for _ in range(args.repeats))
                 for bf16 in (False, True)}
            print(f"{name:<16} {size:>4} {t[False]:>12.3f} {t[True]:>12.3f} "
                  f"{t[False] / t[True]:>6.2f}", flush=True)


def layout_table(args) -> None:
    """Contiguous (NCHW) vs channels-last (NHWC) training steps, one row per model and size,
    interleaved per repeat; ``*`` marks the layout dermcam uses (``use_channels_last``)."""
    from dermcam.device import resolve_precision
    from dermcam.inference import depthwise_net, use_channels_last
    from dermcam.models import build_model

    print(f"{'model':<16} {'size':>4} {'precision':>10} {'NCHW s/step':>12} "
          f"{'NHWC s/step':>12} {'NCHW / NHWC':>12}")
    for name in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            bf16 = resolve_precision("auto", "cpu", depthwise_net(name), size) == "bf16-mixed"
            models = {}
            for cl in (False, True):
                torch.manual_seed(0)
                model, _ = build_model(name, "none")
                models[cl] = model.to(memory_format=torch.channels_last) if cl else model
            reps = {False: [], True: []}
            for _ in range(args.repeats):
                for cl in (False, True):
                    reps[cl].append(step_time(models[cl], size, args.batch, args.steps, bf16,
                                              cl))
            t = {cl: statistics.median(v) for cl, v in reps.items()}
            mark = {cl: "*" if use_channels_last(name) == cl else " " for cl in (False, True)}
            print(f"{name:<16} {size:>4} {'bf16-mixed' if bf16 else '32-true':>10} "
                  f"{t[False]:>11.3f}{mark[False]} {t[True]:>11.3f}{mark[True]} "
                  f"{t[False] / t[True]:>12.2f}", flush=True)


def compile_table(args) -> None:
    """Eager vs ``torch.compile`` (inductor) training steps, one row per model and size."""
    from dermcam.device import resolve_precision
    from dermcam.inference import depthwise_net, use_channels_last
    from dermcam.models import build_model

    print(f"{'model':<16} {'size':>4} {'precision':>10} {'eager s/step':>13} "
          f"{'compiled s/step':>16} {'compile s':>10} {'break-even steps':>17}")
    for name in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            bf16 = resolve_precision("auto", "cpu", depthwise_net(name), size) == "bf16-mixed"
            cl = use_channels_last(name)
            times = {}
            for compiled in (False, True):
                torch.manual_seed(0)
                model, _ = build_model(name, "none")
                if cl:
                    model = model.to(memory_format=torch.channels_last)
                if compiled:
                    model = torch.compile(model)
                first, per_step = timed_steps(model, size, args.batch, args.steps, bf16, cl)
                reps = [per_step] + [timed_steps(model, size, args.batch, args.steps, bf16,
                                                 cl)[1] for _ in range(args.repeats - 1)]
                times[compiled] = (first, statistics.median(reps))
            eager, comp = times[False][1], times[True][1]
            compile_s = times[True][0] - comp
            gain = eager - comp
            even = f"{compile_s / gain:.0f}" if gain > 0 else "never"
            print(f"{name:<16} {size:>4} {'bf16' if bf16 else 'fp32':>10} {eager:>13.3f} "
                  f"{comp:>16.3f} {compile_s:>10.1f} {even:>17}", flush=True)


if __name__ == "__main__":
    main()
