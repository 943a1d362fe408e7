"""Skin tone from the image (dermoscopy sets rarely carry Fitzpatrick labels): the individual
typology angle ``ITA = arctan((L* - 50) / b*) * 180 / pi`` of the skin's median L* and b*
outside the grown lesion mask, vignette and glare (docs/evaluation.md). An estimate: lighting
and white balance move it, and ITA categories are not Fitzpatrick types."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ITA_CATEGORIES", "srgb_to_lab", "skin_pixels", "ita", "ita_with_reason",
           "ita_category"]

#: D65 reference white (CIE 1931 2 degree observer), as OpenCV and most libraries use.
D65_WHITE = (0.950456, 1.0, 1.088754)
#: linear sRGB -> XYZ (IEC 61966-2-1, D65).
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
#: Pixels darker than this L* are vignette or frame, not skin (the darkest skin types
#: have L* around 30-40).
DARK_L = 15.0
#: Pixels with any 8-bit channel at or above this are saturated (glare).
SATURATED = 250
#: The lesion mask is grown by this share of the image side before the skin is taken.
MASK_MARGIN = 1 / 32
#: Fewer skin pixels than this share of the image: ITA is NaN ("too little skin").
MIN_SKIN_FRACTION = 0.02
#: (name, lower bound exclusive) from light to dark; the last bin takes the rest.
ITA_CATEGORIES: tuple[tuple[str, float], ...] = (
    ("very light", 55.0), ("light", 41.0), ("intermediate", 28.0), ("tan", 10.0),
    ("brown", -30.0), ("dark", -math.inf))


def srgb_to_lab(rgb) -> np.ndarray:
    """CIELAB of sRGB colours: ``(..., 3)`` uint8 (0-255) or float (0-1) in, ``(..., 3)``
    float64 out (L* in 0-100)."""
    a = np.asarray(rgb)
    if a.shape[-1:] != (3,):
        raise ValueError(f"expected (..., 3) RGB values, got shape {a.shape}")
    c = a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _RGB_TO_XYZ.T / np.asarray(D65_WHITE)
    eps = (6 / 29) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def skin_pixels(image: np.ndarray, mask: np.ndarray | None = None,
                lab: np.ndarray | None = None) -> np.ndarray:
    """``(H, W)`` bool: the pixels ITA is estimated from, of ``image (H, W, 3) uint8``
    outside ``mask (H, W)`` (nonzero = lesion; or None)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    lab = srgb_to_lab(image) if lab is None else lab
    keep = (lab[..., 0] >= DARK_L) & (image.max(axis=2) < SATURATED)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask must be {image.shape[:2]}, got {mask.shape}")
        mask = mask.astype(bool)
        radius = int(round(MASK_MARGIN * max(image.shape[:2])))
        if radius > 0 and mask.any():
            from scipy import ndimage
            mask = ndimage.binary_dilation(mask, iterations=radius)
        keep &= ~mask
    return keep


def ita_with_reason(image: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, str]:
    """``(ITA in degrees, "")``, or ``(nan, reason)`` where it cannot be estimated."""
    image = np.asarray(image)
    lab = srgb_to_lab(image) if image.ndim == 3 and image.shape[-1] == 3 else None
    keep = skin_pixels(image, mask, lab)
    if keep.sum() < max(1, MIN_SKIN_FRACTION * keep.size):
        return math.nan, "too little skin"
    L = float(np.median(lab[..., 0][keep]))
    b = float(np.median(lab[..., 2][keep]))
    if b <= 0:
        return math.nan, "skin not yellowish (median b* <= 0)"
    return math.degrees(math.atan((L - 50.0) / b)), ""


def ita(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """ITA in degrees of the skin in ``image`` ``(H, W, 3) uint8`` outside ``mask``
    ``(H, W)`` (None: the whole image); NaN where it cannot be estimated."""
    return ita_with_reason(image, mask)[0]


def ita_category(angle: float) -> str:
    """The ITA category of ``angle`` (degrees); ``""`` for NaN."""
    if angle is None or not math.isfinite(angle):
        return ""
    return next((name for name, lower in ITA_CATEGORIES if angle > lower), ITA_CATEGORIES[-1][0])
