"""Decoding images (``(H, W, 3) uint8`` RGB, EXIF orientation applied; grayscale, RGBA,
palette and 16-bit converted) and masks (``(H, W) bool``, thresholded at half intensity),
with one-line errors for bad files."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dermcam.errors import DermcamError

log = logging.getLogger(__name__)

MASK_THRESHOLD = 128


def open_checked(path: Path, draft_size: int | None = None, load: bool = True) -> Image.Image:
    """``Image.open`` and ``load`` (unless not ``load``: the header only) with one-line errors;
    ``draft_size``: decode big JPEGs at a reduced DCT scale (the largest saving when ~4000 px
    ISIC images become 224 px)."""
    if not path.exists():
        raise DermcamError("file not found", path)
    if path.is_file() and path.stat().st_size == 0:
        raise DermcamError("file is empty (0 bytes)", path)
    try:
        img = Image.open(path)  # raises DecompressionBombError above 2x the limit
        full_size = img.size
        # Between 1x and 2x PIL only warns; checked here, as catch_warnings() is not
        # thread-safe and load_arrays decodes in threads.
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and full_size[0] * full_size[1] > limit:
            img.close()
            raise DermcamError(
                f"image too large, refused as a possible decompression bomb ({full_size[0]}x"
                f"{full_size[1]} px exceeds PIL's limit of {limit} px)", path)
        if not load:
            return img
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        img._dermcam_full_size = full_size
    except Image.DecompressionBombError as exc:
        raise DermcamError(f"image too large, refused as a possible decompression bomb ({exc})",
                           path) from exc
    except UnidentifiedImageError as exc:
        raise DermcamError("not a readable image (unknown or corrupt format)", path) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DermcamError(f"corrupt or truncated image ({exc})", path) from exc
    return img


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that transpose width and height


def open_image_sized(path: str | Path, draft_size: int | None = None
                     ) -> tuple[Image.Image, tuple[int, int]]:
    """An image (RGB, EXIF orientation applied) and its full-resolution ``(W, H)`` (even when
    drafted at a reduced scale), for checking it against the mask."""
    path = Path(path)
    img = open_checked(path, draft_size)
    w, h = getattr(img, "_dermcam_full_size", None) or img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # malformed EXIF should not lose the image
        log.warning("%s: could not apply EXIF orientation (%s)", path, exc)
        orientation = 1
    if orientation in SWAPS_AXES:
        w, h = h, w
    return Image.fromarray(_to_rgb(img)), (w, h)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as ``(H, W, 3) uint8`` RGB."""
    return np.asarray(open_image_sized(path)[0])


def mask_to_bool(arr: np.ndarray) -> np.ndarray:
    """Reduce a mask array ``(H, W)`` or ``(H, W, C)`` to ``(H, W) bool``."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.dtype == np.uint8 and arr.shape[2] >= 3:
        # integer mean test (mean >= t <=> sum >= 3 t): no float64 copy of a 4000 px mask
        total = arr[..., :3].sum(axis=2, dtype=np.uint16)
        return total > 0 if total.max(initial=0) <= 3 else total >= 3 * MASK_THRESHOLD
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"mask must be (H, W) or (H, W, C), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.dtype == np.uint8:  # the common case, kept in uint8
        return arr > 0 if arr.max(initial=0) <= 1 else arr >= MASK_THRESHOLD
    arr = arr.astype(np.float64)
    if arr.max(initial=0) > 255:  # 16-bit masks
        arr = arr / 257.0
    elif arr.max(initial=0) <= 1.0:  # 0/1 masks
        arr = arr * 255.0
    return arr >= MASK_THRESHOLD


def open_mask(path: str | Path) -> Image.Image:
    """Open a mask as a PIL ``L`` image with values exactly 0 or 255."""
    img = open_checked(Path(path))
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img)
    return Image.fromarray((mask_to_bool(np.asarray(img)).astype(np.uint8) * 255), mode="L")


def read_mask(path: str | Path) -> np.ndarray:
    """Read a lesion mask as ``(H, W) bool``."""
    return np.asarray(open_mask(path)) > 0
