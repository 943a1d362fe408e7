"""The painters of the synthetic dermoscopy benchmark: vectorised numpy/PIL, no files.

Each takes a :class:`numpy.random.Generator` and paints the skin, lighting, lesion (its
mask is the ground truth the image is drawn from) or an artifact. The order of every
random draw is part of the determinism contract of :mod:`dermcam.data.synth`."""

from __future__ import annotations

import math
from collections import namedtuple
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["ARTIFACTS", "PAINTERS", "composite", "lesion_geometry", "lesion_params", "lighting",
           "paint_artifact", "paint_lesion", "paint_skin"]

Rng = np.random.Generator
Paint = tuple[np.ndarray, np.ndarray]  # an artifact painter's alpha (S, S) and colour

ARTIFACTS: tuple[str, ...] = ("ruler", "ink", "patch", "vignette", "hair")
"""Artifact names; the code written in the artifact map is ``index + 1`` (0 = none)."""


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(xx, yy)``, each ``(S, S)`` float32, read-only."""
    c = np.arange(size, dtype=np.float32) + 0.5
    xx, yy = np.meshgrid(c, c)
    xx.flags.writeable = yy.flags.writeable = False
    return xx, yy


@lru_cache(maxsize=256)
def _cubic_matrix(size: int, n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(size, n + 4)`` Catmull-Rom weights interpolating ``n + 4`` coarse samples at
    ``size`` points, their transpose (read-only), and the RMS gain of the upsampling."""
    x = 1.0 + (np.arange(size) + 0.5) * (n + 1) / size  # in [1, n + 2): taps stay in range
    i0 = np.floor(x).astype(int)
    t = x - i0
    w = np.stack([((-0.5 * t + 1.0) * t - 0.5) * t,
                  (1.5 * t - 2.5) * t * t + 1.0,
                  ((-1.5 * t + 2.0) * t + 0.5) * t,
                  (0.5 * t - 0.5) * t * t], axis=1)
    m = np.zeros((size, n + 4), np.float32)
    for k in range(4):
        np.add.at(m, (np.arange(size), np.clip(i0 - 1 + k, 0, n + 3)), w[:, k])
    gain = float(np.sqrt(np.mean(np.sum(m.astype(np.float64) ** 2, axis=1))))
    mt = np.ascontiguousarray(m.T)
    m.flags.writeable = mt.flags.writeable = False
    return m, mt, gain


def _noise(rng: Rng, size: int, cells: float, win: tuple[slice, slice] | None = None) -> np.ndarray:
    """Smooth ``(S, S)`` float32 noise, mean 0, variance about 1, with about ``cells``
    features across (bicubic upsampling of a coarse grid); or only its ``win`` window."""
    n = max(2, int(round(cells)))
    m, mt, gain = _cubic_matrix(size, n)
    g = rng.standard_normal((n + 4, n + 4), dtype=np.float32)
    if win is not None:
        m, mt = m[win[0]], mt[:, win[1]]
    # einsum, not matmul: no BLAS, whose blocking would change the bytes between builds
    a = np.einsum("ik,kj->ij", np.einsum("ik,kj->ij", m, g), mt)
    a *= np.float32(1.0 / (gain * gain))
    return a


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class _Canvas:
    """A supersampled (``ss`` times) ``L`` drawing, read back as an ``(S, S)`` alpha."""

    def __init__(self, size: int):
        self.size, self.ss = size, 4 if size <= 128 else 2
        self.im = Image.new("L", (size * self.ss, size * self.ss), 0)
        self.draw = ImageDraw.Draw(self.im)

    def alpha(self) -> np.ndarray:
        """Box-downsampled to ``(S, S)`` float32 in [0, 1]."""
        small = self.im.resize((self.size, self.size), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.float32) / 255.0


# Light (fair) and darker skin endpoints, for a yellow-brown and a pink hue.
_SKIN_LIGHT = (np.array([236, 212, 188], np.float32), np.array([240, 203, 200], np.float32))
_SKIN_DARK = (np.array([168, 118, 86], np.float32), np.array([160, 108, 94], np.float32))


def paint_skin(rng: Rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Skin ``(S, S, 3)`` float32 and its texture modulation ``(S, S)``."""
    tone = float(rng.beta(1.5, 4.0))           # 0 fair .. 1 darker; ISIC is mostly fair skin
    hue = float(rng.uniform())                 # 0 yellow-brown .. 1 pink
    light = _SKIN_LIGHT[0] * (1 - hue) + _SKIN_LIGHT[1] * hue
    dark = _SKIN_DARK[0] * (1 - hue) + _SKIN_DARK[1] * hue
    base = (light * (1 - tone) + dark * tone) * np.float32(rng.uniform(0.93, 1.03))
    blotch = (_noise(rng, size, rng.uniform(3, 5)) * rng.uniform(0.015, 0.035)
              + _noise(rng, size, rng.uniform(9, 14)) * rng.uniform(0.006, 0.015))
    texture = 1.0 + blotch
    skin = base[None, None, :] * texture[..., None]
    red = np.maximum(_noise(rng, size, rng.uniform(3, 6)), 0.0) * rng.uniform(0.0, 0.035)
    skin[..., 1] *= 1.0 - red
    skin[..., 2] *= 1.0 - 0.6 * red
    return skin, texture


def lighting(rng: Rng, size: int) -> np.ndarray:
    """Dermoscope illumination ``(S, S)``: bright centre, gentle fall-off and tilt."""
    xx, yy = _grid(size)
    cx, cy = (float(v) for v in size * (0.5 + rng.uniform(-0.08, 0.08, 2)))
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / np.float32((0.7 * size) ** 2)
    ang = rng.uniform(0, 2 * np.pi)
    tilt = ((xx - size / 2) * math.cos(ang) + (yy - size / 2) * math.sin(ang)) / size
    return (1.0 - rng.uniform(0.03, 0.12) * r2 + rng.uniform(0.0, 0.06) * tilt).astype(np.float32)


# Lesion colours as seen on fair skin (sRGB). Pigments are applied as absorbance
# (transmittance relative to _REF_SKIN), so they darken any skin tone consistently;
# white (regression) is blended over.
_REF_SKIN = np.array([238, 210, 195], np.float32)
_COLOURS: dict[str, tuple[int, int, int]] = {
    "light_brown": (182, 122, 78), "dark_brown": (100, 58, 36), "black": (40, 32, 32),
    "blue_grey": (108, 116, 142), "red": (196, 70, 78), "white": (236, 230, 230)}
_EXTRA_COLOURS = ("black", "blue_grey", "red", "white")
_EXTRA_WEIGHTS = np.array([0.33, 0.30, 0.20, 0.17])


def _colour_set(rng: Rng, label: int) -> list[str]:
    """Distinct lesion colours: benign mostly 1-2 browns, malignant mostly 2-5 colours."""
    if label == 0:
        n = int(rng.choice([1, 2, 3], p=[0.55, 0.40, 0.05]))
    else:
        n = int(rng.choice([1, 2, 3, 4, 5], p=[0.03, 0.15, 0.35, 0.30, 0.17]))
    browns = ["light_brown", "dark_brown"]
    if n == 1:
        return [browns[int(rng.uniform() < 0.4)]]
    both_browns = rng.uniform() < (0.8 if label == 0 else 0.75)
    chosen = list(browns) if both_browns else [browns[int(rng.uniform() < 0.5)]]
    k = n - len(chosen)
    if k > 0:
        idx = rng.choice(len(_EXTRA_COLOURS), size=min(k, 4), replace=False, p=_EXTRA_WEIGHTS)
        chosen += [_EXTRA_COLOURS[i] for i in sorted(idx)]
    return chosen


def lesion_params(rng: Rng, label: int) -> dict[str, Any]:
    """Shape and colour parameters; the ABCD cues differ by label, with overlap."""
    mal = label == 1
    def lognorm(median: float, sd: float) -> float:
        return float(np.exp(rng.normal(math.log(median), sd)))
    return {
        "area": float(np.clip(lognorm(0.23 if mal else 0.14, 0.5), 0.03, 0.5)),
        "asymmetry": float(np.clip(lognorm(0.11 if mal else 0.06, 0.5), 0.005, 0.35)),
        "border": float(np.clip(lognorm(0.05 if mal else 0.022, 0.5), 0.003, 0.15)),
        "elongation": float(rng.uniform(0.0, 0.16)),
        "edge_width": float(rng.uniform(0.08, 0.4) if mal else rng.uniform(0.18, 0.5)),
        "edge_alpha": float(rng.uniform(0.4, 0.75) if mal else rng.uniform(0.25, 0.55)),
        "colours": _colour_set(rng, label),
    }


def _radius_table(rng: Rng, p: dict[str, Any], n: int = 2048):
    """Relative radius ``f(theta)`` on ``n`` angles (mean about 1) and the angles."""
    th = np.linspace(-np.pi, np.pi, n, endpoint=False)
    f = np.ones(n)
    f += p["elongation"] * np.cos(2 * (th - rng.uniform(0, np.pi)))
    # asymmetry: harmonics 1 and 3 with unrelated phases, RMS = asymmetry
    psi = rng.uniform(0.25, 1.3)
    a1, a3 = math.cos(psi), math.sin(psi)
    asym = (a1 * np.cos(th - rng.uniform(0, 2 * np.pi))
            + a3 * np.cos(3 * th - rng.uniform(0, 2 * np.pi)))
    f += p["asymmetry"] * asym / (asym.std() + 1e-9)
    # border irregularity: harmonics 4..24, 1/k^1.1 spectrum, RMS = border
    k = np.arange(4, 25)
    amp = rng.standard_normal((2, k.size)) * k ** -1.1
    bord = amp[0] @ np.cos(np.outer(k, th)) + amp[1] @ np.sin(np.outer(k, th))
    f += p["border"] * bord / (bord.std() + 1e-9)
    return th, np.maximum(f, 0.35)


class _Frame(namedtuple("_Frame", "size win x0 y0 cx cy r0 th_tab f_tab xx yy r rad rho mask")):
    """A placed lesion outline on its bounding window ``win`` (top-left pixel ``x0, y0``).

    ``cx, cy, r0`` (centre, scale) in image pixels, ``th_tab, f_tab`` the radius table; per
    window pixel ``(h, w)``: centre ``xx, yy``, distance ``r`` from the lesion centre,
    outline radius ``rad``, ``rho = r / rad`` and the lesion ``mask`` (bool).
    """

    def noise(self, rng: Rng, cells: float) -> np.ndarray:
        """:func:`_noise` of the whole image, cut to the window: ``(h, w)`` float32."""
        return _noise(rng, self.size, cells, self.win)


def _lesion_frame(rng: Rng, size: int, p: dict[str, Any]) -> _Frame:
    """Draw the outline ``r < r0 * f(theta)``, scale it to the lesion area and place it."""
    th_tab, f_tab = _radius_table(rng, p)
    r0 = math.sqrt(p["area"] * size * size / (math.pi * float(np.mean(f_tab ** 2))))
    r0 *= min(1.0, 0.47 * size / (r0 * float(f_tab.max())))  # keep it inside the image
    reach = r0 * float(f_tab.max())
    jitter = min(0.07 * size, max(0.0, 0.47 * size - reach))
    cx, cy = (float(v) for v in 0.5 * size + rng.uniform(-jitter, jitter, 2))
    # work on the lesion's bounding box (+2 px for the anti-aliasing halo) only
    ex, ey = r0 * f_tab * np.cos(th_tab), r0 * f_tab * np.sin(th_tab)
    x0, x1 = max(0, int(cx + ex.min()) - 2), min(size, int(math.ceil(cx + ex.max())) + 3)
    y0, y1 = max(0, int(cy + ey.min()) - 2), min(size, int(math.ceil(cy + ey.max())) + 3)
    win = (slice(y0, y1), slice(x0, x1))
    xx, yy = _grid(size)
    xx, yy = xx[win], yy[win]
    dx, dy = xx - cx, yy - cy
    r = np.hypot(dx, dy)
    rad = r0 * np.interp(np.arctan2(dy, dx), th_tab, f_tab, period=2 * np.pi).astype(np.float32)
    rho = r / rad
    mask = rho < 1.0
    if not mask.any():  # cannot happen for area >= 0.03 and size >= 32; be safe
        mask[int(cy) - y0, int(cx) - x0] = True
    return _Frame(size, win, x0, y0, cx, cy, r0, th_tab, f_tab, xx, yy, r, rad, rho, mask)


def paint_lesion(rng: Rng, size: int, skin: np.ndarray, texture: np.ndarray,
                 p: dict[str, Any]) -> tuple[np.ndarray, float]:
    """Paint the lesion onto ``skin (S, S, 3)`` in place; the mask ``(S, S)`` bool and its
    Feret diameter (px). Pigment is absorbance ``A`` applied as ``skin * exp(-A * d)``, the
    density ``d`` fading inside the mask, so edges fade to a lighter shade as real pigment."""
    fr = _lesion_frame(rng, size, p)
    core, dens = _core_density(rng, fr, p)
    absorb = {name: _absorbance(name, rng) for name in p["colours"]}
    A = _brown_absorbance(rng, fr, p, dens, absorb)
    interior = _smoothstep((1.0 - fr.rho) / 0.15)
    white = _extra_colours(rng, fr, A, absorb, core, interior)
    if "black" in absorb or rng.uniform() < 0.35:
        _globules(rng, fr, A, absorb, interior)
    # views: painting the windows paints the image
    _apply_pigment(rng, fr, p, skin[fr.win], texture[fr.win], A, white)
    full = np.zeros((size, size), bool)
    full[fr.win] = fr.mask
    return full, _feret(fr.mask)


def _core_density(rng: Rng, fr: _Frame, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(core, dens)``, each ``(h, w)``: distance (in ``r0``) from an off-centre pigment
    core (offset growing with asymmetry), and the pigment density: core plus mottling."""
    off = p["asymmetry"] * 2.2 * fr.r0
    ang = rng.uniform(0, 2 * np.pi)
    core = np.hypot(fr.xx - (fr.cx + off * math.cos(ang)),
                    fr.yy - (fr.cy + off * math.sin(ang))) / fr.r0
    dens = (1.0 - 0.6 * np.minimum(core, 1.6) ** 2 + 0.45 * fr.noise(rng, rng.uniform(4, 7))
            + 0.2 * fr.noise(rng, rng.uniform(12, 20)))
    return core, dens


def _brown_absorbance(rng: Rng, fr: _Frame, p: dict[str, Any],
                      dens: np.ndarray, absorb: dict[str, np.ndarray]) -> np.ndarray:
    """Absorbance ``(h, w, 3)`` of the brown base: light to dark brown along the density
    (or one brown modulated by it), fine grainy mottling and often a reticulation."""
    inside = dens[fr.mask]
    browns = [c for c in p["colours"] if c in ("light_brown", "dark_brown")]
    if len(browns) == 2:
        thr = float(np.quantile(inside, 1.0 - rng.uniform(0.3, 0.6)))
        t = _smoothstep((dens - thr) / 0.5 + 0.5)[..., None]
        A = absorb["light_brown"] * (1 - t) + absorb["dark_brown"] * t
    else:
        z = np.clip((dens - inside.mean()) / (inside.std() + 1e-6), -2.0, 2.0)
        A = absorb[browns[0]] * (1.0 + 0.12 * z)[..., None]
    A *= (1.0 + 0.08 * fr.noise(rng, min(fr.size / 4, 50)))[..., None]
    # pigment-network-like reticulation: zero crossings of band-limited noise
    if rng.uniform() < 0.65:
        cells = min(rng.uniform(40, 60), fr.size / 3.2)
        lines = np.exp(-(fr.noise(rng, cells) / 0.45) ** 2)
        strength = rng.uniform(0.25, 0.5)
        if p["asymmetry"] > 0.08:  # atypical: broken, uneven network
            strength = strength * np.clip(0.6 + 0.8 * fr.noise(rng, 5), 0.0, 1.6)
        A *= (1.0 + strength * lines)[..., None]
    return A


# peak opacity range of each extra colour's regions
_EXTRA_PEAKS = {"red": (0.55, 0.85), "blue_grey": (0.6, 0.9), "white": (0.45, 0.75),
                "black": (0.75, 0.95)}


def _extra_colours(rng: Rng, fr: _Frame, A: np.ndarray,
                   absorb: dict[str, np.ndarray], core: np.ndarray,
                   interior: np.ndarray) -> np.ndarray | None:
    """Blend the extra colours into ``A`` in place as soft, mottled regions inside the
    lesion. White is blended over the skin later: returns its opacity ``(h, w)`` or None."""
    white = None
    for name in ("red", "blue_grey", "white", "black"):
        if name not in absorb:
            continue
        field = fr.noise(rng, rng.uniform(3, 6)) + 0.3 * fr.noise(rng, 14)
        if name in ("white", "black"):
            field = field + (1.2 if name == "white" else 0.8) * (1.0 - np.minimum(core, 1.5))
        cover = rng.uniform(0.08, 0.16) if name == "black" else rng.uniform(0.12, 0.3)
        thr = float(np.quantile(field[fr.mask], 1.0 - cover))
        peak = _EXTRA_PEAKS[name]
        mottle = np.clip(0.75 + 0.35 * fr.noise(rng, min(fr.size / 6, 30)), 0.3, 1.0)
        a = _smoothstep((field - thr) / 0.8 + 0.3) * rng.uniform(*peak) * mottle * interior
        if name == "white":
            white = a
        else:
            A += (absorb[name] - A) * a[..., None]
    return white


def _globules(rng: Rng, fr: _Frame, A: np.ndarray,
              absorb: dict[str, np.ndarray], interior: np.ndarray) -> None:
    """Blend dots into ``A`` in place: irregular black dots, or regular brown globules."""
    irregular = "black" in absorb
    dot_a = absorb["black"] if irregular else absorb.get("dark_brown", A.max((0, 1)) * 1.6)
    n_dots = int(rng.integers(4, 22))
    g_th = rng.uniform(-np.pi, np.pi, n_dots)
    g_rho = (rng.uniform(0.2, 0.85, n_dots) if irregular
             else np.sqrt(rng.uniform(0.0, 0.7, n_dots)))
    g_rad = np.interp(g_th, fr.th_tab, fr.f_tab, period=2 * np.pi) * fr.r0 * g_rho
    gx, gy = fr.cx + g_rad * np.cos(g_th), fr.cy + g_rad * np.sin(g_th)
    sig = (rng.uniform(0.004, 0.016, n_dots) if irregular
           else np.full(n_dots, rng.uniform(0.006, 0.01))) * fr.size
    sig = np.maximum(sig, 0.6)
    dots = np.zeros(fr.mask.shape, np.float32)
    xx, yy, x0, y0 = fr.xx, fr.yy, fr.x0, fr.y0
    for gxi, gyi, s in zip(gx - x0, gy - y0, sig):  # window coordinates
        h = int(math.ceil(3 * s))
        xa, xb = max(0, int(gxi) - h), min(dots.shape[1], int(gxi) + h + 1)
        ya, yb = max(0, int(gyi) - h), min(dots.shape[0], int(gyi) + h + 1)
        if xa >= xb or ya >= yb:
            continue
        d2 = (xx[ya:yb, xa:xb] - x0 - gxi) ** 2 + (yy[ya:yb, xa:xb] - y0 - gyi) ** 2
        np.maximum(dots[ya:yb, xa:xb], np.exp(-d2 / (2 * s * s)), out=dots[ya:yb, xa:xb])
    A += (dot_a - A) * (dots * rng.uniform(0.7, 0.95) * interior)[..., None]


def _apply_pigment(rng: Rng, fr: _Frame, p: dict[str, Any], skin: np.ndarray,
                   texture: np.ndarray, A: np.ndarray, white: np.ndarray | None) -> None:
    """Darken the window ``skin (h, w, 3)`` in place by ``exp(-A * d)``, then blend white
    over; outside the mask ``d`` is an anti-aliasing halo of at most one pixel."""
    d = p["edge_alpha"] + (1.0 - p["edge_alpha"]) * _smoothstep((1.0 - fr.rho) / p["edge_width"])
    d *= np.clip(1.0 + 0.15 * fr.noise(rng, rng.uniform(8, 14)), 0.7, 1.0)
    halo = np.clip(1.0 - (fr.r - fr.rad), 0.0, 1.0) * p["edge_alpha"] * 0.5
    d = np.where(fr.mask, d, halo)
    skin *= np.exp(-A * d[..., None])
    if white is not None:
        col = np.array(_COLOURS["white"], np.float32) * np.float32(rng.uniform(0.92, 1.02))
        skin += (col * (0.9 + 0.1 * texture)[..., None] - skin) * (white * d)[..., None]


def _absorbance(name: str, rng: Rng) -> np.ndarray:
    """Absorbance ``(3,)`` of a lesion colour: ``-log`` of its transmittance on fair skin."""
    ref = np.asarray(_COLOURS[name], np.float32) * np.float32(rng.uniform(0.92, 1.06))
    ref = ref * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    return (-np.log(np.clip(ref / _REF_SKIN, 0.03, 1.0))).astype(np.float32)


def _feret(mask: np.ndarray, n_dir: int = 64) -> float:
    """Maximum Feret diameter of a binary mask in pixels (pixel extent included)."""
    edge = mask.copy()
    edge[1:-1, 1:-1] &= ~(mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:])
    ys, xs = np.nonzero(edge)
    if xs.size == 0:
        return 0.0
    ang = np.linspace(0, np.pi, n_dir, endpoint=False)
    proj = np.outer(xs, np.cos(ang)) + np.outer(ys, np.sin(ang))
    return float((proj.max(0) - proj.min(0)).max() + 1.0)


# Each painter returns ``alpha (S, S)`` in [0, 1] and a colour ``(3,)`` or ``(S, S, 3)``;
# the caller zeroes alpha inside the lesion and composites ``img + (colour - img) * alpha``.

def _side_clearance(mask: np.ndarray) -> np.ndarray:
    """Free rows/columns between the lesion and the top, right, bottom, left edges."""
    rows = np.nonzero(mask.any(1))[0]
    cols = np.nonzero(mask.any(0))[0]
    s = mask.shape[0]
    return np.array([rows[0], s - 1 - cols[-1], s - 1 - rows[-1], cols[0]], dtype=float)


def _ruler(rng: Rng, size: int, mask: np.ndarray, lesion: dict[str, float]) -> Paint:
    """Dark band with tick marks along the edge with the most free skin."""
    band_cv, tick_cv = _Canvas(size), _Canvas(size)
    ss = band_cv.ss
    clear = _side_clearance(mask)
    side = int(np.argmax(clear + rng.uniform(0, 0.05 * size, 4)))
    width = rng.uniform(0.045, 0.07) * size
    room = clear[side] - width - 0.03 * size
    dist = float(np.clip(rng.uniform(0.05, 0.11) * size, 0.05 * size, max(0.05 * size, room)))
    tilt = math.radians(rng.uniform(-7, 7))
    # drawn for the top edge, then rotated to ``side`` (square images)
    c, sn = math.cos(tilt), math.sin(tilt)
    mid = np.array([0.5 * size, dist])
    def pt(u, v):  # u along the ruler from its middle, v inwards
        x, y = mid + np.array([u * c - v * sn, u * sn + v * c])
        return (float(x * ss), float(y * ss))
    half = 0.75 * size
    band_cv.draw.polygon([pt(-half, 0), pt(half, 0), pt(half, width), pt(-half, width)],
                         fill=150)
    step = rng.uniform(0.035, 0.05) * size
    lw = max(1, int(round(rng.uniform(0.004, 0.007) * size * ss)))
    for j, u in enumerate(np.arange(-half, half, step)):
        length = (0.55 if j % 5 == 0 else 0.3) * width
        tick_cv.draw.line([pt(u, width - length), pt(u, width + 0.35 * length)], fill=255,
                          width=lw)
    # top, right, bottom, left: rotate the top drawing clockwise ``side`` quarter turns
    band, ticks = np.rot90(band_cv.alpha(), -side), np.rot90(tick_cv.alpha(), -side)
    dark = np.array([48, 42, 40], np.float32) * np.float32(rng.uniform(0.8, 1.2))
    alpha_b = band * rng.uniform(0.6, 0.85)
    col = np.where((ticks > band * 0.5)[..., None], np.array([18, 16, 16], np.float32), dark)
    return np.maximum(alpha_b, ticks * 0.95), col


def _ink(rng: Rng, size: int, mask: np.ndarray, lesion: dict[str, float]) -> Paint:
    """Violet/blue pen mark: an arc round the lesion, or pen dots on free skin."""
    cv = _Canvas(size)
    ss, draw = cv.ss, cv.draw
    cx, cy, reach = lesion["cx"], lesion["cy"], lesion["reach"]
    rad = reach + rng.uniform(0.05, 0.1) * size
    width = max(1, int(round(max(rng.uniform(0.012, 0.02) * size, 1.2) * ss)))
    if rad < 0.42 * size and rng.uniform() < 0.75:
        start = rng.uniform(0, 360)
        span = rng.uniform(110, 280)
        box = [(cx - rad) * ss, (cy - rad) * ss, (cx + rad) * ss, (cy + rad) * ss]
        draw.arc(box, start, start + span, fill=255, width=width)
    else:
        for _ in range(int(rng.integers(1, 4))):
            for _try in range(20):  # a point on free, visible skin
                ang = rng.uniform(0, 2 * np.pi)
                rr = rng.uniform(0.2, 0.42) * size
                x, y = 0.5 * size + rr * math.cos(ang), 0.5 * size + rr * math.sin(ang)
                if not mask[int(y), int(x)]:
                    break
            d = rng.uniform(0.015, 0.03) * size * ss
            if rng.uniform() < 0.5:
                draw.ellipse([x * ss - d, y * ss - d, x * ss + d, y * ss + d], fill=255)
            else:
                a2 = rng.uniform(0, 2 * np.pi)
                ln = rng.uniform(0.06, 0.14) * size * ss
                draw.line([(x * ss, y * ss), (x * ss + ln * math.cos(a2),
                                              y * ss + ln * math.sin(a2))], fill=255, width=width)
    alpha = cv.alpha()
    alpha *= np.clip(rng.uniform(0.6, 0.85) + 0.12 * _noise(rng, size, 20), 0.3, 1.0)
    hues = [(118, 64, 158), (92, 58, 150), (62, 78, 168)]
    return alpha, np.array(hues[int(rng.integers(len(hues)))], np.float32)


def _patch(rng: Rng, size: int, mask: np.ndarray, lesion: dict[str, float]) -> Paint:
    """Colour calibration patch (square with a dark rim, or a disc) towards a corner."""
    cv = _Canvas(size)
    ss = cv.ss
    half = rng.uniform(0.035, 0.06) * size
    # the diagonal direction with the least lesion nearby, inside the always-visible field
    best, where = None, None
    for ang in np.deg2rad([45, 135, 225, 315]) + rng.uniform(-0.2, 0.2):
        rr = 0.44 * size - half * 1.5
        x, y = 0.5 * size + rr * math.cos(ang), 0.5 * size + rr * math.sin(ang)
        ya, yb = int(max(0, y - 2 * half)), int(min(size, y + 2 * half + 1))
        xa, xb = int(max(0, x - 2 * half)), int(min(size, x + 2 * half + 1))
        overlap = mask[ya:yb, xa:xb].sum()
        if best is None or overlap < best:
            best, where = overlap, (x, y)
    x, y = where
    box = [(x - half) * ss, (y - half) * ss, (x + half) * ss, (y + half) * ss]
    palette = [(200, 40, 40), (40, 150, 60), (40, 70, 180), (230, 200, 40), (128, 128, 128),
               (245, 245, 245)]
    fill = np.array(palette[int(rng.integers(len(palette)))], np.float32)
    if rng.uniform() >= 0.6:
        cv.draw.ellipse(box, fill=255)
        return cv.alpha(), fill
    cv.draw.rectangle(box, fill=255)
    rim = _Canvas(size)
    rim.draw.rectangle(box, outline=255, width=max(1, int(round(0.008 * size * ss))))
    col = np.where((rim.alpha() > 0.5)[..., None], np.array([25, 25, 25], np.float32), fill)
    return cv.alpha(), col


def _vignette(rng: Rng, size: int, mask: np.ndarray, lesion: dict[str, float]) -> Paint:
    """Dark corners outside the dermoscope's circular field of view."""
    xx, yy = _grid(size)
    cx, cy = (float(v) for v in size * (0.5 + rng.uniform(-0.02, 0.02, 2)))
    rad = rng.uniform(0.5, 0.66) * size
    soft = max(1.0, 0.025 * size)
    alpha = _smoothstep((np.hypot(xx - cx, yy - cy) - rad) / soft + 0.5)
    col = np.array([10, 8, 8], np.float32) * np.float32(rng.uniform(0.5, 2.0))
    return alpha.astype(np.float32), col


def _hair(rng: Rng, size: int, mask: np.ndarray, lesion: dict[str, float]) -> Paint:
    """A few thin dark curved hairs (quadratic Bezier curves)."""
    cv = _Canvas(size)
    ss = cv.ss
    t = np.linspace(0, 1, 48)[:, None]
    for _ in range(int(rng.integers(2, 8))):
        ang = rng.uniform(0, 2 * np.pi)
        rr = rng.uniform(0.0, 0.45) * size
        p0 = np.array([0.5 * size + rr * math.cos(ang), 0.5 * size + rr * math.sin(ang)])
        d = rng.uniform(0, 2 * np.pi)
        ln = rng.uniform(0.25, 0.8) * size
        p2 = p0 + ln * np.array([math.cos(d), math.sin(d)])
        bend = rng.uniform(-0.3, 0.3) * ln
        p1 = (p0 + p2) / 2 + bend * np.array([-math.sin(d), math.cos(d)])
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        w = max(1, int(round(rng.uniform(0.004, 0.008) * size * ss)))
        cv.draw.line([(float(a) * ss, float(b) * ss) for a, b in pts], fill=255, width=w,
                     joint="curve")
    alpha = cv.alpha() * rng.uniform(0.8, 1.0)
    return alpha, np.array([38, 28, 24], np.float32) * np.float32(rng.uniform(0.7, 1.5))


PAINTERS = {"ruler": _ruler, "ink": _ink, "patch": _patch, "vignette": _vignette, "hair": _hair}


def lesion_geometry(mask: np.ndarray) -> dict[str, float]:
    """Centre ``cx, cy`` and ``reach`` (largest centre-to-pixel distance) of a ``(S, S)``
    mask; an empty mask is a point lesion in the image centre."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        c = 0.5 * mask.shape[0]
        return {"cx": c, "cy": c, "reach": 0.0}
    lesion = {"cx": float(xs.mean()) + 0.5, "cy": float(ys.mean()) + 0.5}
    lesion["reach"] = float(np.hypot(xs + 0.5 - lesion["cx"], ys + 0.5 - lesion["cy"]).max())
    return lesion


def composite(img: np.ndarray, alpha: np.ndarray, col: np.ndarray, allowed: np.ndarray):
    """Blend a painter's output into ``img (S, S, 3) float32`` in place where ``allowed``;
    ``(window, changed)``: the painted pixels' bounding window and, within it, those whose
    rounded value changed (``(None, None)`` when nothing painted)."""
    alpha = np.where(allowed, np.clip(alpha, 0.0, 1.0), np.float32(0.0))
    rows, cols = np.nonzero(alpha.any(1))[0], np.nonzero(alpha.any(0))[0]
    if rows.size == 0:
        return None, None
    win = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    old = img[win]
    col = col[win] if np.ndim(col) == 3 else col
    new = old + (col - old) * alpha[win][..., None]
    np.clip(new, 0.0, 255.0, out=new)
    changed = (np.rint(new) != np.rint(old)).any(-1)
    old[changed] = new[changed]  # a view: writes into img
    return win, changed


def paint_artifact(image: np.ndarray, keep_clear: np.ndarray, name: str,
                   rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """Paint artifact ``name`` onto a copy of ``image (S, S, 3) uint8`` with the generator's
    own painter, placed by ``rng``; ``keep_clear (S, S) bool`` pixels (the lesion) stay
    bit-identical. Returns ``(new (S, S, 3) uint8, changed (S, S) bool)``."""
    if name not in PAINTERS:
        raise ValueError(f"unknown artifact {name!r}; choose from {', '.join(ARTIFACTS)}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"image must be (S, S, 3), got shape {image.shape}")
    keep_clear = np.asarray(keep_clear, bool)
    if keep_clear.shape != image.shape[:2]:
        raise ValueError(f"keep_clear must be {image.shape[:2]}, got {keep_clear.shape}")
    img = image.astype(np.float32)
    alpha, col = PAINTERS[name](rng, image.shape[0], keep_clear, lesion_geometry(keep_clear))
    win, ch = composite(img, alpha, col, ~keep_clear)
    changed = np.zeros(image.shape[:2], bool)
    out = image.copy()
    if win is not None:
        changed[win] = ch
        out[changed] = np.rint(img[changed]).astype(np.uint8)
    return out, changed
