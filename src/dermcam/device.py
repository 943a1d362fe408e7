"""Where a stage runs its model: one resolver for every command's ``--device``, and the
batch sizes and CPU threads that suit it."""

from __future__ import annotations

import os

from dermcam.errors import DermcamError

PRECISION_HELP = ("auto (bf16-mixed where the hardware computes bfloat16 natively: a CUDA "
                  "GPU with bf16, or a CPU with AVX-512 BF16 or AMX; else 32-true), "
                  "32-true, bf16-mixed, 16-mixed (GPU) or bf16-true.")


def resolve_device(spec: str | None = "auto", shard: tuple[int, int] | None = None):
    """``'auto' | 'cpu' | 'cuda' | 'cuda:i'`` -> ``torch.device``; DermcamError if unavailable.
    With ``shard=(i, n)`` on several GPUs, shard ``i`` runs on GPU ``i % count``."""
    import torch
    text = (spec or "auto").strip().lower()
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if text == "auto":
        text = "cuda" if n else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise DermcamError(f"--device must be auto, cpu, cuda or cuda:INDEX, not {spec!r}")
    if n == 0:
        raise DermcamError(f"--device {spec}: no CUDA device is available here (torch "
                           f"{torch.__version__}); use --device cpu or auto")
    if index:
        i = int(index)
        if i >= n:
            raise DermcamError(f"--device {spec}: this machine has {n} CUDA device(s), "
                               f"cuda:0 to cuda:{n - 1}")
        return torch.device("cuda", i)
    return torch.device("cuda", shard[0] % n if shard is not None else 0)


def accelerator_is_gpu(accelerator: str) -> bool:
    """Whether Lightning's ``--accelerator`` means a CUDA GPU (``auto``: when available)."""
    import torch
    return accelerator in ("gpu", "cuda") or (accelerator == "auto"
                                              and torch.cuda.is_available())


def native_bf16(on_gpu: bool) -> bool:
    """Whether this machine computes bfloat16 natively: CUDA Ampere and newer, or a CPU with
    AVX-512 BF16 / AMX (oneDNN's emulation elsewhere is slower than float32)."""
    import torch
    if on_gpu:
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # older torch without the keyword
            return bool(torch.cuda.is_bf16_supported())
    caps = getattr(torch.cpu, "get_capabilities", None)
    c = caps() if caps is not None else {}
    return bool(c.get("avx512_bf16") or c.get("amx_bf16"))


#: Below this input side oneDNN's bf16 depthwise convolutions are slower than float32 on
#: the CPU (0.6x at 64 px, benchmarks/bench_precision.py).
CPU_BF16_DEPTHWISE_MIN_SIDE = 128


def resolve_precision(spec: str, accelerator: str = "auto", depthwise: bool = False,
                      image_size: int | None = None) -> str:
    """``--precision auto`` -> the precision one model trains in here; others as given.
    ``bf16-mixed`` where bfloat16 is native, except depthwise nets below
    :data:`CPU_BF16_DEPTHWISE_MIN_SIDE` px on the CPU; else ``32-true``. A fixed rule, not a
    timing, so the same machine and seed give the same bytes."""
    if spec != "auto":
        return spec
    on_gpu = accelerator_is_gpu(accelerator)
    if not native_bf16(on_gpu) or (not on_gpu and depthwise and image_size is not None
                                   and image_size < CPU_BF16_DEPTHWISE_MIN_SIDE):
        return "32-true"
    return "bf16-mixed"


def inference_batch_size(device, requested: int | None, cpu: int = 64, gpu: int = 256) -> int:
    """``requested`` when given, else a batch that suits ``device`` (larger on a GPU)."""
    if requested is not None:
        if requested < 1:
            raise DermcamError(f"--batch-size must be >= 1, got {requested}")
        return int(requested)
    return gpu if str(device).startswith("cuda") else cpu


def cpu_cores() -> int:
    """The cores this process may use: ``OMP_NUM_THREADS`` where set, else its CPU affinity."""
    limit = os.environ.get("OMP_NUM_THREADS", "")
    if limit.isdigit() and int(limit) > 0:
        return int(limit)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity mask outside Linux
        return os.cpu_count() or 1


def shard_threads(n_shards: int, cpus: int | None = None) -> int:
    """CPU threads for one of ``n_shards`` processes sharing this process's cores."""
    cpus = cpus or cpu_cores()
    return max(1, cpus // max(1, n_shards))


def set_shard_threads(device, shard: tuple[int, int] | None) -> None:
    """On the CPU, shards split the cores instead of each taking all of them."""
    import torch
    if shard is not None and str(device) == "cpu":
        torch.set_num_threads(shard_threads(shard[1]))


def default_num_workers(on_gpu: bool, processes: int = 1, cpus: int | None = None) -> int:
    """DataLoader workers per training process: on a GPU the spare cores shared by the
    processes, at most 8; on the CPU 0, since workers would compete with the compute."""
    if not on_gpu:
        return 0
    cpus = cpus or os.cpu_count() or 1
    return max(0, min(8, cpus // max(1, processes) - 1))
