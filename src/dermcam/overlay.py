"""Heatmap overlay helpers of the prediction strips and the report gallery (pure numpy)."""

from __future__ import annotations

import numpy as np

__all__ = ["jet", "outline"]


def jet(x: np.ndarray) -> np.ndarray:
    """The jet colour map, piecewise linear: ``(...)`` in ``[0, 1]`` -> ``(..., 3)`` RGB in
    ``[0, 1]`` (each channel clipped)."""
    x = np.asarray(x)
    return np.stack([np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3, 2, 1)], axis=-1)


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
