"""Where a stage runs its model: one resolver for every command's ``--device``.

``auto`` is the first CUDA device when one is available, else the CPU; ``cpu``,
``cuda`` and ``cuda:i`` name a device. An unavailable device is refused in one line.
Batch sizes and CPU threads that suit the device live here too, so that evaluate,
explain, probe and predict choose them the same way.
"""

from __future__ import annotations

import os

from dermcam.errors import DermcamError

PRECISION_HELP = ("auto (bf16-mixed where the hardware computes bfloat16 natively: a CUDA "
                  "GPU with bf16, or a CPU with AVX-512 BF16 or AMX; else 32-true), "
                  "32-true, bf16-mixed, 16-mixed (GPU) or bf16-true.")


def cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(spec: str | None = "auto", shard: tuple[int, int] | None = None):
    """``'auto' | 'cpu' | 'cuda' | 'cuda:i'`` -> ``torch.device``; DermcamError if unavailable.

    With ``shard=(i, n)`` and ``auto`` or ``cuda`` on a machine with several GPUs, shard
    ``i`` runs on GPU ``i % count`` (each shard its own GPU while there are enough).
    """
    import torch

    text = (spec or "auto").strip().lower()
    n = cuda_count()
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
    if shard is not None:
        return torch.device("cuda", shard[0] % n)
    return torch.device("cuda", 0)


def accelerator_is_gpu(accelerator: str) -> bool:
    """Whether Lightning's ``--accelerator`` puts training on a CUDA GPU (``auto``: when
    CUDA is available)."""
    import torch

    return accelerator in ("gpu", "cuda") or (accelerator == "auto"
                                              and torch.cuda.is_available())


def native_bf16(on_gpu: bool) -> bool:
    """Whether this machine computes bfloat16 natively (so bf16 autocast is a speed-up).

    CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (Ampere and newer).
    CPU: the AVX-512 BF16 or AMX-BF16 instructions (``torch.cpu.get_capabilities()``);
    oneDNN also runs bf16 on plain AVX-512 or AVX2 by emulation, which is slower than
    float32, so those do not count.
    """
    import torch

    if on_gpu:
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # older torch without the keyword
            return bool(torch.cuda.is_bf16_supported())
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is None:
        return False
    c = caps()
    return bool(c.get("avx512_bf16") or c.get("amx_bf16"))


#: Below this input side, oneDNN's bf16 depthwise convolutions are slower than float32
#: on the CPU (benchmarks/bench_precision.py: EfficientNet-B0 0.61x, MobileNet-V2 0.63x
#: the float32 speed at 64 px; 1.15x and 1.46x faster at 224 px; ResNet18 1.47x and 1.90x).
CPU_BF16_DEPTHWISE_MIN_SIDE = 128


def resolve_precision(spec: str, accelerator: str = "auto", depthwise: bool = False,
                      image_size: int | None = None) -> str:
    """``--precision auto`` -> the precision one model trains in here; others as given.

    ``auto`` is ``bf16-mixed`` where bfloat16 is native (:func:`native_bf16`), else
    ``32-true``; on the CPU a depthwise-separable network (``depthwise``: EfficientNet,
    MobileNet) below :data:`CPU_BF16_DEPTHWISE_MIN_SIDE` px stays ``32-true``, where
    bf16 was measured slower. A fixed rule, not a timing, so that the same machine and
    seed give the same bytes. ``accelerator`` is Lightning's: ``auto`` means the GPU when
    CUDA is available.
    """
    if spec != "auto":
        return spec
    on_gpu = accelerator_is_gpu(accelerator)
    if not native_bf16(on_gpu):
        return "32-true"
    if (not on_gpu and depthwise and image_size is not None
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
    """The cores this process may compute on: ``OMP_NUM_THREADS`` where it is set (a batch
    scheduler's or the user's limit, which torch follows too), else the CPUs it may run on."""
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
    """DataLoader workers per training process.

    On a GPU: the cores left after the main process, shared by the processes, at most 8
    (items are uint8 arrays read from the decode cache; a few workers keep a GPU fed).
    On the CPU: 0, since the cores are busy computing and workers would compete with them.
    """
    if not on_gpu:
        return 0
    cpus = cpus or os.cpu_count() or 1
    return max(0, min(8, cpus // max(1, processes) - 1))
