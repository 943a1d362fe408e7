"""Heatmap overlay helpers shared by the prediction strips and the report gallery.

Pure numpy (no matplotlib, no PIL), so importing this module stays light.
"""

from __future__ import annotations

import numpy as np

__all__ = ["jet", "outline"]


def jet(x: np.ndarray) -> np.ndarray:
    """The jet colour map on ``[0, 1]`` values: ``(...)`` -> ``(..., 3)`` RGB floats in ``[0, 1]``.

    Piecewise linear: 0 is dark blue ``(0, 0, 0.5)``, 0.5 is ``(0.5, 1, 0.5)``, 1 is dark
    red ``(0.5, 0, 0)``. Inputs outside ``[0, 1]`` are not rejected; each channel is clipped.
    """
    x = np.asarray(x)
    return np.stack([np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3, 2, 1)], axis=-1)


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean ``(H, W)`` mask: the mask minus its 4-neighbour erosion.

    The image edge counts as inside (edge padding), so a mask that fills a border row does
    not outline that row. Returns a ``(H, W)`` bool array; raises ``ValueError`` for any
    other number of dimensions.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    p = np.pad(mask, 1, mode="edge")
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner
