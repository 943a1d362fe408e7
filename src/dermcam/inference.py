"""Running a model (or a checkpoint's) over images: malignant probabilities and logit
differences, the bfloat16 wrapper and the memory-format choice."""

from __future__ import annotations

import logging

import numpy as np
import torch

from dermcam.augment import preprocess
from dermcam.calibration import ATTR, BIAS_ATTR, apply_temperature, bias_of, temperature_of
from dermcam.models import IO_ATTR, attach_io

log = logging.getLogger(__name__)


def predict_logit_diff(model, dataset, batch_size: int = 64,
                       device: str | torch.device = "cpu") -> np.ndarray:
    """Logit difference ``z_malignant - z_benign`` (no temperature) per item, ``(N,)``."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    return _logit_diffs(model, (images for images, _ in loader), device)


class Bf16Inference(torch.nn.Module):
    """``model`` under bfloat16 autocast on channels-last input, float32 logits out, on a
    BatchNorm-folded copy with the calibration carried over. Probabilities move by ~1e-2
    against float32: compare runs of one precision only."""

    def __init__(self, model: torch.nn.Module, device_type: str = "cpu"):
        super().__init__()
        self.model = fold_batchnorm(model).to(memory_format=torch.channels_last)
        self.device_type = device_type
        _carry_calibration(model, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(x.contiguous(memory_format=torch.channels_last)).float()


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm after a convolution folded into it
    (``torch.fx``'s ``fuse``; up to 1.7x faster in bf16, ``benchmarks/bench_inference.py``).
    A model fx cannot trace is returned as it is; ``attach_io`` hooks are re-attached."""
    from torch.fx.experimental.optimization import fuse
    from torch.fx.proxy import TraceError
    was_training = model.training
    model.eval()
    try:
        folded = fuse(model)
        if getattr(model, IO_ATTR, None):  # an outside model: its head and input hooks too
            attach_io(folded, **getattr(model, IO_ATTR))
        return folded
    except (TraceError, TypeError, RuntimeError, NotImplementedError) as exc:
        log.info("BatchNorm not folded for %s (torch.fx cannot trace it: %s)",
                 type(model).__name__, exc)
        return model
    finally:
        model.train(was_training)


def _carry_calibration(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    for attr in (ATTR, BIAS_ATTR):
        if hasattr(src, attr):
            setattr(dst, attr, float(getattr(src, attr)))


def folded_for_inference(model: torch.nn.Module, channels_last: bool = False
                         ) -> torch.nn.Module:
    """:func:`fold_batchnorm`'s copy in float32, calibration carried over, channels-last
    where asked, for scoring many images (logits within 3e-6 of the unfolded model's)."""
    folded = fold_batchnorm(model)
    if folded is model:
        return model
    if channels_last:
        folded = folded.to(memory_format=torch.channels_last)
    _carry_calibration(model, folded)
    return folded


def predict_proba(model, images: np.ndarray, batch_size: int = 64,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """Malignant probability for ``(N, S, S, 3) uint8`` images -> ``(N,)``; restores the mode."""
    batches = (torch.from_numpy(images[i:i + batch_size])
               for i in range(0, len(images), batch_size))
    return apply_temperature(_logit_diffs(model, batches, device), temperature_of(model),
                             bias_of(model))


def _logit_diffs(model, batches, device) -> np.ndarray:
    """``z1 - z0`` (float64) over ``uint8 (B, S, S, 3)`` batches; restores the mode."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for images in batches:
                x = preprocess(images.to(device))
                z = model(x).double()
                out.append((z[:, 1] - z[:, 0]).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float64)


def use_channels_last(name: str, setting: str = "auto") -> bool:
    """Whether model ``name`` runs channels-last: ``setting`` on/off, or ``auto``
    (:func:`depthwise_net`)."""
    if setting in ("on", "true", True):
        return True
    if setting in ("off", "false", False):
        return False
    return depthwise_net(name)


def depthwise_net(name: str) -> bool:
    """EfficientNet and MobileNet: depthwise convolutions, which oneDNN runs faster
    channels-last and, below 128 px, slower in bf16."""
    return name.startswith(("efficientnet", "mobilenet"))
