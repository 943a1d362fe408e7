"""Batch preprocessing and per-sample augmentation on tensors: ``(N, H, W, 3) uint8`` in,
``(N, 3, H, W) float32`` out, on the training device. Unlike torchvision's v2 transforms
(one set of random parameters per call), every sample gets its own flip and rotation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dermcam.models import IMAGENET_MEAN, IMAGENET_STD


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """``(N, H, W, 3) uint8`` -> ``(N, 3, H, W)`` float in [0, 1]."""
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got shape {tuple(batch.shape)}")
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def preprocess(batch: torch.Tensor) -> torch.Tensor:
    """Model input for evaluation: ``uint8 (N, H, W, 3)`` -> normalised ``(N, 3, H, W)``."""
    return normalize(to_float(batch))


def augment(x: torch.Tensor, rotation: float = 20.0, jitter: float = 0.2,
            generator: torch.Generator | None = None,
            draws: torch.Tensor | None = None) -> torch.Tensor:
    """Random flips, rotation (±``rotation`` degrees) and colour jitter per sample of ``x
    (N, 3, H, W)`` in [0, 1]; ``draws``: the ``(N, 6)`` uniforms to use (a process's rows of
    a global batch's)."""
    n, dev = x.shape[0], x.device
    if draws is not None and tuple(draws.shape) != (n, 6):
        raise ValueError(f"draws must be ({n}, 6), got {tuple(draws.shape)}")
    r = (torch.rand(n, 6, generator=generator) if draws is None else draws).to(dev)
    angle = (r[:, 0] * 2 - 1) * math.radians(rotation)
    sx = torch.where(r[:, 1] < 0.5, -1.0, 1.0).to(dev)  # horizontal flip
    sy = torch.where(r[:, 2] < 0.5, -1.0, 1.0).to(dev)  # vertical flip
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos * sx, -sin * sy, torch.zeros_like(cos)], 1),
                         torch.stack([sin * sx, cos * sy, torch.zeros_like(cos)], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if jitter > 0:
        b, c, s = ((1 + (r[:, k] * 2 - 1) * jitter).view(n, 1, 1, 1).to(x.dtype) for k in (3, 4, 5))
        x = x * b
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * c + mean
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * s + gray
        x = x.clamp_(0, 1)
    return x
