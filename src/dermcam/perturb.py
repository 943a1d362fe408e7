"""Pure image perturbations the probes are made of: each changes only the pixels it names.

Images ``(H, W, 3) uint8``, masks ``(H, W)`` bool; OpenCV imported at first use.
:func:`perturb` makes every variant of one image, each placement from its own seeded rng.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from dermcam.data.synth import ARTIFACTS, paint_artifact
from dermcam.errors import DermcamError

INPAINT_METHODS = ("telea", "ns")
#: Inpainting neighbourhood radius in pixels.
INPAINT_RADIUS = 3.0
#: The dilated lesion's margin, as a fraction of the image side (at least one pixel).
DILATE_FRACTION = 0.03


def check_image(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask must be {image.shape[:2]}, got shape {mask.shape}")


def dilate_mask(mask: np.ndarray, fraction: float = DILATE_FRACTION) -> np.ndarray:
    """``(H, W)`` mask -> ``(H, W) bool`` dilated by ``max(1, round(fraction * side))`` pixels
    with an elliptical element (a round margin); ``fraction=0``: the mask itself."""
    import cv2

    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    if fraction <= 0:
        return m
    r = max(1, int(round(fraction * max(m.shape))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(m.astype(np.uint8), kernel).astype(bool)


def inpaint(image: np.ndarray, region: np.ndarray, method: str = "telea",
            radius: float | None = None) -> np.ndarray:
    """Fill ``region`` of ``image`` from its surroundings; pixels outside stay bit-identical.
    ``method``: ``telea`` (Telea 2004) or ``ns`` (Navier-Stokes); ``radius`` defaults to
    :data:`INPAINT_RADIUS` (larger radii cost quadratically more and blur more)."""
    import cv2

    image, region = np.asarray(image), np.asarray(region, bool)
    check_image(image, region)
    if method not in INPAINT_METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; choose from "
                         f"{', '.join(INPAINT_METHODS)}")
    if not region.any():
        return image.copy()
    flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
    radius = radius or INPAINT_RADIUS
    filled = cv2.inpaint(np.ascontiguousarray(image), region.astype(np.uint8), radius, flag)
    out = image.copy()
    out[region] = filled[region]
    return out


def skin_colour(image: np.ndarray, exclude: np.ndarray,
                artifacts: np.ndarray | None = None) -> np.ndarray:
    """The median colour ``(3,) uint8`` of an image's own skin: outside ``exclude``, minus
    artifact pixels, dark ones (vignette corners) and near-saturated ones, falling back to
    all pixels outside ``exclude``, then the whole image, when too few remain."""
    image, exclude = np.asarray(image), np.asarray(exclude, bool)
    check_image(image, exclude)
    lum = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    outside = ~exclude
    if artifacts is not None:
        outside &= np.asarray(artifacts) == 0
    if outside.sum() < 16:
        outside = ~exclude
    if outside.sum() < 16:
        outside = np.ones_like(exclude)
    ref = float(np.median(lum[outside]))
    keep = outside & (lum >= 0.5 * ref) & (image.max(-1) < 250)
    if keep.sum() < 16:
        keep = outside
    return np.median(image[keep], axis=0).round().astype(np.uint8)


def remove_lesion(image: np.ndarray, region: np.ndarray, method: str = "telea") -> np.ndarray:
    """The lesion ``region`` (dilated mask, ``(H, W) bool``) inpainted from the skin around it."""
    return inpaint(image, region, method)


def remove_background(image: np.ndarray, region: np.ndarray,
                      artifacts: np.ndarray | None = None) -> np.ndarray:
    """Everything outside ``region`` (the dilated lesion) set to the image's skin colour."""
    image, region = np.asarray(image), np.asarray(region, bool)
    out = image.copy()
    out[~region] = skin_colour(image, region, artifacts)
    return out


def insert_artifact(image: np.ndarray, region: np.ndarray, name: str,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Artifact ``name`` painted outside ``region``: ``(image, changed (H, W) bool)``."""
    return paint_artifact(image, region, name, rng)


def remove_artifact(image: np.ndarray, artifact_pixels: np.ndarray, keep: np.ndarray,
                    method: str = "telea") -> np.ndarray:
    """Inpaint ``artifact_pixels`` (grown by one pixel for anti-aliased edges), never ``keep``."""
    import cv2

    px = np.asarray(artifact_pixels, bool)
    grown = cv2.dilate(px.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return inpaint(image, grown & ~np.asarray(keep, bool), method)


def lesion_geometry(mask: np.ndarray) -> tuple[float, float, float]:
    """``(area share, centre row, centre column)`` of a mask as fractions; NaN when empty."""
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    if not m.any():
        return math.nan, math.nan, math.nan
    rows, cols = np.nonzero(m)
    return float(m.mean()), float(rows.mean() / m.shape[0]), float(cols.mean() / m.shape[1])


#: :func:`match_donors`: CIELAB units of skin colour that weigh as much as a factor e in
#: lesion area (or a whole side of centre shift).
COLOUR_SCALE = 20.0


def skin_ring(image: np.ndarray, mask: np.ndarray, feather: float = DILATE_FRACTION) -> np.ndarray:
    """``(3,)`` mean CIELAB colour (OpenCV's 8-bit scale) of the skin ring between the mask
    dilated by ``feather`` and by 6 x ``feather`` (the whole image where the ring is empty):
    where a moved lesion meets its new surroundings, so donors are matched on it."""
    import cv2

    image, m = np.asarray(image), np.asarray(mask, bool)
    check_image(image, m)
    ring = dilate_mask(m, 6 * feather) & ~dilate_mask(m, feather)
    lab = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB).astype(np.float64)
    return lab[ring].mean(axis=0) if ring.any() else lab.reshape(-1, 3).mean(axis=0)


def match_donors(geometry: np.ndarray, i: int, pool: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` indices of ``pool`` (never ``i``) closest to image ``i``: distance
    ``|log(area_i / area_j)| + |centre_i - centre_j|`` (+ ``|colour_i - colour_j| /
    COLOUR_SCALE`` where ``geometry`` rows carry the :func:`skin_ring` colour); ties by index."""
    geometry = np.asarray(geometry, np.float64)
    pool = np.asarray([j for j in pool if j != i], np.int64)
    if pool.size == 0:
        return pool
    a, c = geometry[:, 0], geometry[:, 1:3]
    d = np.abs(np.log(a[pool] / a[i])) + np.hypot(*(c[pool] - c[i]).T)
    if geometry.shape[1] > 3:
        d = d + np.linalg.norm(geometry[pool, 3:] - geometry[i, 3:], axis=1) / COLOUR_SCALE
    return pool[np.lexsort((pool, d))][:k]


def swap_context(image: np.ndarray, mask: np.ndarray, canvas: np.ndarray,
                 feather: float = DILATE_FRACTION) -> np.ndarray:
    """``image``'s lesion (exactly) on ``canvas``'s surroundings (:func:`swap_canvas`),
    blended over a Gaussian ramp ``feather`` x the side wide so the seam is no sharp cue."""
    import cv2

    image, canvas, m = np.asarray(image), np.asarray(canvas), np.asarray(mask, bool)
    check_image(image, m)
    if canvas.shape != image.shape:
        raise ValueError(f"canvas must be {image.shape}, got {canvas.shape}")
    r = max(1, int(round(feather * max(m.shape))))
    band = dilate_mask(m, feather).astype(np.float32)
    alpha = np.maximum(cv2.GaussianBlur(band, (2 * r + 1, 2 * r + 1), r / 2), m)
    alpha[~dilate_mask(m, 2 * feather)] = 0  # the ramp's far tail: under 1 %
    alpha = alpha[..., None]
    out = np.rint(alpha * image + (1 - alpha) * canvas).clip(0, 255).astype(np.uint8)
    out[m] = image[m]
    return out


def swap_canvas(donor: np.ndarray, donor_mask: np.ndarray, feather: float = DILATE_FRACTION,
                method: str = "telea") -> np.ndarray:
    """A donor's surroundings with its own (dilated) lesion inpainted away."""
    return inpaint(donor, dilate_mask(donor_mask, feather), method)


#: :func:`hot_regions`: the heatmap's top share, the most of the image kept, and the
#: smallest component (speckle below it is left out).
HOT_TOP, HOT_BUDGET, HOT_MIN = 0.10, 0.08, 0.002


def hot_regions(heatmap: np.ndarray, mask: np.ndarray, feather: float = DILATE_FRACTION,
                top: float = HOT_TOP, budget: float = HOT_BUDGET,
                min_share: float = HOT_MIN) -> np.ndarray:
    """The off-lesion regions holding the most heatmap mass: ``(H, W) bool``. The 8-connected
    components of the top ``top`` share outside the lesion dilated by ``2 * feather`` (at
    least ``min_share`` each), taken by mass while their union stays within ``budget``."""
    import cv2

    m = np.asarray(mask, bool)
    h = np.asarray(heatmap, np.float32)
    if h.shape != m.shape:
        h = cv2.resize(h, m.shape[::-1], interpolation=cv2.INTER_LINEAR)
    if not np.isfinite(h).all() or h.max() <= h.min():
        return np.zeros_like(m)
    cand = (h >= np.quantile(h, 1.0 - top)) & (h > h.min()) & ~dilate_mask(m, 2 * feather)
    n, comp = cv2.connectedComponents(cand.astype(np.uint8), connectivity=8)
    sizes = np.bincount(comp.ravel(), minlength=n)
    mass = np.bincount(comp.ravel(), weights=h.ravel(), minlength=n)
    out = np.zeros_like(m)
    area, cap, floor = 0, budget * m.size, min_share * m.size
    for c in sorted(range(1, n), key=lambda c: (-mass[c], c)):
        if sizes[c] >= floor and area + sizes[c] <= cap:
            out |= comp == c
            area += sizes[c]
    return out


def _components(region: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(rows, cols)`` of each 8-connected component of ``region``, in OpenCV's order."""
    import cv2

    n, comp = cv2.connectedComponents(np.asarray(region, bool).astype(np.uint8), connectivity=8)
    return [np.nonzero(comp == c) for c in range(1, n)]


def random_shifts(region: np.ndarray, allowed: np.ndarray, rng: np.random.Generator,
                  tries: int = 200) -> list[tuple[int, int]] | None:
    """One random shift ``(rows, cols)`` per component of ``region`` putting it wholly inside
    ``allowed``, off ``region`` and the components already placed; None when one does not fit
    in ``tries``."""
    region, allowed = np.asarray(region, bool), np.asarray(allowed, bool)
    free = allowed & ~region
    height, width = region.shape
    out = []
    for rows, cols in _components(region):
        r0, c0 = int(rows.min()), int(cols.min())
        h, w = int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1
        for _ in range(tries):
            dr = int(rng.integers(0, height - h + 1)) - r0
            dc = int(rng.integers(0, width - w + 1)) - c0
            if free[rows + dr, cols + dc].all():
                free[rows + dr, cols + dc] = False
                out.append((dr, dc))
                break
        else:
            return None
    return out


def shift(region: np.ndarray, shifts: list[tuple[int, int]]) -> np.ndarray:
    """``region`` with its components moved by ``shifts`` (:func:`random_shifts`)."""
    out = np.zeros_like(np.asarray(region, bool))
    for (rows, cols), (dr, dc) in zip(_components(region), shifts, strict=True):
        out[rows + dr, cols + dc] = True
    return out


def transplant(source: np.ndarray, target: np.ndarray, region: np.ndarray,
               read: list[tuple[int, int]] | None = None) -> np.ndarray:
    """``target`` with ``source``'s pixels pasted exactly onto ``region`` (shifted by ``read``)."""
    source, target, region = np.asarray(source), np.asarray(target), np.asarray(region, bool)
    check_image(source, region)
    if target.shape != source.shape:
        raise ValueError(f"target must be {source.shape}, got {target.shape}")
    out = target.copy()
    if read is None:
        out[region] = source[region]
        return out
    for (rows, cols), (dr, dc) in zip(_components(region), read, strict=True):
        out[rows, cols] = source[rows + dr, cols + dc]
    return out


#: Probe names, in the order they run and are reported.
PROBES: tuple[str, ...] = ("lesion_removed", "background_removed", "artifact_inserted",
                           "artifact_removed")

#: Probes that run only when asked for: the context swap needs per-image artifact labels.
OPTIONAL_PROBES: tuple[str, ...] = ("context_swap", "hot_spots")


def probe_order(probe: str) -> int:
    """Where ``probe`` sorts among the reported probes (after :data:`PROBES`, the rest)."""
    return PROBES.index(probe) if probe in PROBES else 99


def artifact_names() -> tuple[str, ...]:
    """The synthetic generator's artifact painters, in its order."""
    return tuple(ARTIFACTS)


@dataclass
class Variant:
    """One perturbed copy of an image: ``image (S, S, 3) uint8`` and what was done to it."""

    probe: str
    artifact: str
    placement: int
    image: np.ndarray
    changed_share: float


@dataclass
class PerturbConfig:
    """What :func:`perturb` makes for each image (recorded in the manifest)."""

    probes: tuple[str, ...] = PROBES
    artifacts: tuple[str, ...] = field(default_factory=artifact_names)
    placements: int = 3
    seed: int = 0
    dilate: float = DILATE_FRACTION
    inpaint: str = "telea"

    def __post_init__(self) -> None:
        self.probes = tuple(self.probes)
        self.artifacts = tuple(self.artifacts)
        bad = [p for p in self.probes if p not in PROBES + OPTIONAL_PROBES]
        if bad or not self.probes:
            raise DermcamError(f"unknown probe {', '.join(bad) or '(none given)'}; choose from "
                               f"{', '.join(PROBES + OPTIONAL_PROBES)}")
        known = artifact_names()
        bad = [a for a in self.artifacts if a not in known]
        if bad:
            raise DermcamError(f"unknown artifact {', '.join(bad)}; choose from "
                               f"{', '.join(known)}")
        if self.placements < 1:
            raise DermcamError(f"--placements must be at least 1, got {self.placements}")
        if self.inpaint not in INPAINT_METHODS:
            raise DermcamError(f"unknown --inpaint {self.inpaint!r}; choose from "
                               f"{', '.join(INPAINT_METHODS)}")

    def key(self) -> str:
        return hashlib.sha1(repr(sorted(asdict(self).items())).encode()).hexdigest()[:12]


def _rng(seed: int, image_id: str, artifact: str, placement: int) -> np.random.Generator:
    """A placement's generator: same seed, image, artifact and placement -> same pixels."""
    words = [seed, zlib.crc32(image_id.encode()), zlib.crc32(artifact.encode()), placement]
    return np.random.default_rng(np.random.SeedSequence(words))


def skip_reason(mask: np.ndarray | None) -> str | None:
    """Why an image cannot be probed, or None."""
    if mask is None:
        return "no lesion mask"
    m = np.asarray(mask).astype(bool)
    if not m.any():
        return "empty lesion mask"
    if m.all():
        return "lesion mask covers the whole image"
    return None


class Clock:
    """Thread-safe accumulator of seconds spent in inpainting."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def add(self, s: float) -> None:
        with self._lock:
            self.seconds += s


def perturb(image: np.ndarray, mask: np.ndarray, artifacts: np.ndarray | None, image_id: str,
            cfg: PerturbConfig, clock: Clock | None = None) -> list[Variant]:
    """Every perturbation ``cfg`` asks for of one image, in a fixed order; ``artifacts (S, S)``
    codes (``index + 1`` into the generator's list, 0 none) or None."""
    image, mask = np.asarray(image), np.asarray(mask).astype(bool)
    check_image(image, mask)
    region = dilate_mask(mask, cfg.dilate)
    n_px = float(mask.size)
    out: list[Variant] = []

    def add(probe, artifact, placement, new):
        share = float((new != image).any(-1).sum() / n_px)
        out.append(Variant(probe, artifact, placement, new, share))

    def timed_inpaint(fn, *args):
        t = time.perf_counter()
        res = fn(*args)
        if clock is not None:
            clock.add(time.perf_counter() - t)
        return res

    known = artifact_names()
    for probe in cfg.probes:
        if probe == "lesion_removed":
            add(probe, "", 0, timed_inpaint(remove_lesion, image, region, cfg.inpaint))
        elif probe == "background_removed":
            add(probe, "", 0, remove_background(image, region, artifacts))
        elif probe == "artifact_inserted":
            for name in cfg.artifacts:
                for p in range(cfg.placements):
                    new, _ = insert_artifact(image, region, name, _rng(cfg.seed, image_id, name, p))
                    add(probe, name, p, new)
        elif probe == "artifact_removed" and artifacts is not None:
            for name in cfg.artifacts:
                px = np.asarray(artifacts) == known.index(name) + 1
                if px.any():
                    add(probe, name, 0,
                        timed_inpaint(remove_artifact, image, px, mask, cfg.inpaint))
    return out
