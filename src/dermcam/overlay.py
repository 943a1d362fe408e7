"""Heatmap overlay helpers of the prediction strips and the report gallery (pure numpy)."""

from __future__ import annotations

import numpy as np

__all__ = ["jet", "leak_overlay", "outline", "unit_cam"]


def jet(x: np.ndarray) -> np.ndarray:
    """The jet colour map: ``(...)`` in ``[0, 1]`` -> ``(..., 3)`` RGB in ``[0, 1]``, clipped."""
    x = np.asarray(x)
    return np.stack([np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3, 2, 1)], axis=-1)


def unit_cam(cam: np.ndarray) -> np.ndarray:
    """``cam`` as float64 with non-finite and negative values 0, scaled to a maximum of 1."""
    c = np.nan_to_num(np.asarray(cam, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    c = c.clip(min=0)
    peak = c.max()
    return c / peak if peak > 0 else c


def leak_overlay(img: np.ndarray, mask: np.ndarray, cn: np.ndarray) -> np.ndarray:
    """Over the darkened grey ``img`` (float RGB), red where the unit heatmap ``cn`` falls off
    the lesion ``mask``, green on it, its opacity following the heatmap."""
    alpha = (0.85 * cn)[..., None]
    colour = np.where(mask[..., None], np.array([0.0, 0.8, 0.0]), np.array([0.9, 0.0, 0.0]))
    grey = img.mean(axis=2, keepdims=True) * 0.6
    return grey * (1 - alpha) + colour * alpha


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels ``(H, W) bool`` of an ``(H, W)`` mask: the mask minus its 4-neighbour
    erosion, the image edge counting as inside (a mask filling a border row is not outlined
    there)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    p = np.pad(mask, 1, mode="edge")
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner
