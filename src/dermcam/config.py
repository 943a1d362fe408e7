"""What each stage is asked to do: one dataclass per stage, filled by its command's options.
:class:`TrainConfig` is what the manifest records (``config``). Plain data, no heavy imports."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dermcam.errors import DermcamError

__all__ = ["EvaluateConfig", "ExplainConfig", "NEGLIGIBLE_DELTA", "ProbeConfig", "TrainConfig",
           "parse_lr"]

#: A change in P(malignant) below this is negligible: the probes' equivalence margin
#: (context swap, hot spots), the demo's "reacts" rule and the pictures' red numbers.
NEGLIGIBLE_DELTA = 0.02


@dataclass
class TrainConfig:
    data: str
    out: str
    models: list[str] = field(default_factory=lambda: ["resnet18", "efficientnet_b0",
                                                      "mobilenet_v2"])
    weights: str = "imagenet"
    image_size: int = 224
    resize: str = "squash"  # or "shorter-side-crop" (dermcam.data.cache.RESIZE_RULES)
    max_epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    # per-model learning rates (``--lr 1e-3,mobilenet_v2=3e-3``); models not named use ``lr``
    lr_by_model: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 1e-4
    patience: int = 5
    schedule: str = "plateau"  # or "onecycle": warm-up then cosine annealing, per step
    monitor: str = "val_auc"  # or "val_loss"
    imbalance: str = "weighted_loss"  # "balanced_sampler" | "none"
    val_fraction: float = 0.2
    seed: int = 0
    augment: bool = True
    # brightness, contrast and saturation each scaled by a factor from [1 - j, 1 + j]
    colour_jitter: float = 0.2
    accelerator: str = "auto"
    devices: str = "1"
    strategy: str = "auto"
    # PRECISIONS or "auto": per model, dermcam.device.resolve_precision
    precision: str = "auto"
    num_workers: int | None = None  # None: from the CPU count (dermcam.device)
    num_nodes: int = 1
    # deterministic algorithms: the same bytes on the same GPU (CPU runs always repeat)
    deterministic: bool = False
    channels_last: str = "auto"  # "auto": on for depthwise nets (EfficientNet, MobileNet)
    cache_dir: str | None = None
    limit_train_batches: float | int = 1.0
    progress: bool = True
    # Lightning's best.ckpt and last.ckpt, deleted once model.pt is saved unless kept
    keep_checkpoints: bool = False
    # last.ckpt after every epoch, for --resume (the demo, never resumed, turns it off)
    resumable: bool = True
    # "platt": T and a bias b fitted on validation logits, "temperature": T only, "none"
    calibration: str = "platt"


def parse_lr(spec: str | float) -> tuple[float, dict[str, float]]:
    """``--lr`` -> ``(default, {model: lr})``: ``1e-3`` for every model, or
    ``1e-3,mobilenet_v2=3e-3``; a bad entry raises DermcamError naming it."""
    if isinstance(spec, (int, float)):
        spec = str(spec)
    default, per = 1e-3, {}
    for k, part in enumerate(p.strip() for p in str(spec).split(",")):
        model, sep, value = part.rpartition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = math.nan
        if not (rate > 0 and math.isfinite(rate)) or (sep and not model.strip()) or (
                not sep and k > 0):
            raise DermcamError(f"--lr entries must be a positive number, first, or "
                               f"model=number, got {part!r}")
        if sep:
            per[model.strip()] = rate
        else:
            default = rate
    return default, per


# ``by``: columns (metadata, ``ita``) for results by subgroup, groups under ``min_group``
# images too few to estimate; ``device``: auto, cpu, cuda or cuda:i
# (dermcam.device.resolve_device); ``n_boot``: bootstrap resamples of every CI.

@dataclass
class EvaluateConfig:
    """``dermcam evaluate`` (:func:`dermcam.stages.evaluate.run_evaluate`)."""

    n_boot: int = 1000
    seed: int | None = None  # the bootstrap's; None: the run's
    by: tuple[str, ...] = ()
    min_group: int | None = None
    exclude_duplicates: bool = False  # an external set: leave out the run's own images
    device: str = "cpu"


@dataclass
class ExplainConfig:
    """``dermcam explain`` (:func:`dermcam.stages.explain.run_explain`)."""

    methods: tuple[str, ...] = ("gradcam",)  # or ("auto",): chosen with the layer
    target: str = "malignant"  # the class each heatmap explains: or predicted, true
    normalize: str = "minmax"  # or raw
    limit: int | None = None  # the first N images only
    batch_size: int = 16
    fast: bool = True  # BatchNorm folded into the convolutions
    sanity: bool = True  # the randomised-weights sanity check
    n_boot: int = 1000
    figures: bool = True
    shard: str | tuple[int, int] | None = None  # "i/n": that part of the batches only
    merge: bool = False  # score the batches every shard wrote
    layer: str | dict | None = "auto"  # dermcam.layer_choice.parse_layer_spec
    bench_methods: tuple[str, ...] | None = None  # the localisation benchmark's (None: all)
    bench_images: int = 64
    cascade: bool = True  # cascading randomisation in the sanity check
    margin: float = 0.02  # the size-confound TOST's equivalence margin
    device: str = "cpu"
    by: tuple[str, ...] = ()
    min_group: int | None = None


@dataclass
class ProbeConfig:
    """``dermcam probe`` (:func:`dermcam.stages.probe.run_probe`); the first six fields make
    each image's variants (:class:`dermcam.perturb.PerturbConfig`)."""

    probes: tuple[str, ...] | None = None  # None: dermcam.perturb.PROBES
    artifacts: tuple[str, ...] | None = None  # painted ones; None: every painter
    placements: int = 3
    seed: int | None = None  # None: the run's
    limit: int | None = None
    batch_size: int = 32
    inpaint: str = "telea"
    dilate: float | None = None  # None: dermcam.perturb.DILATE_FRACTION
    n_boot: int = 1000
    figures: bool = True
    workers: int | None = None
    device: str = "cpu"
    by: tuple[str, ...] = ()
    min_group: int | None = None
    precision: str = "32-true"  # or bf16-mixed, auto (dermcam.device.inference_precision)
