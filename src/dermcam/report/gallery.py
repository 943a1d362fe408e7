"""Gallery strips for the report: image | heatmap | lesion mask | leak overlay.

Rendered with numpy and PIL from the heatmaps the explain stage saved
(``RUN_DIR/attention/<model>/<method>/batch_*.npz``) and the run's own test
images and masks (through the decode cache), so the page shows exactly the maps
that were scored. No matplotlib, no pyplot.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermcam.overlay import jet, outline

log = logging.getLogger(__name__)

#: Edge of one panel in the strip, pixels.
PANEL = 112
_GAP = 4

#: Card kinds and their captions.
KINDS = {"most": "highest excess leakage", "least": "lowest excess leakage",
         "missed": "missed malignant (label 1, predicted benign)"}


@dataclass
class Case:
    """One gallery card: an attention.csv row and why it was picked."""

    row: dict[str, Any]
    kinds: list[str]


def select_cases(att: pd.DataFrame, n_extreme: int = 3, n_missed: int = 12
                 ) -> tuple[list[Case], list[str]]:
    """Pick the cards for one model/method.

    ``att`` holds the attention.csv rows of one model and method. Returns the
    cases (``n_extreme`` highest and lowest excess leakage among images with a
    defined value, then up to ``n_missed`` misclassified malignant lesions, each
    image once) and the ids of the misclassified malignant lesions left out by the cap.
    """
    ex = pd.to_numeric(att["excess_leakage"], errors="coerce")
    valid = att[np.isfinite(ex.to_numpy(dtype=np.float64))].copy()
    valid["_ex"] = ex[valid.index]
    valid = valid.sort_values(["_ex", "image_id"], kind="stable")
    picked: dict[str, Case] = {}

    def add(rows: pd.DataFrame, kind: str) -> None:
        for r in rows.drop(columns=["_ex"], errors="ignore").to_dict(orient="records"):
            key = str(r["image_id"])
            if key in picked:
                picked[key].kinds.append(kind)
            else:
                picked[key] = Case(r, [kind])

    add(valid.tail(n_extreme).iloc[::-1], "most")
    add(valid.head(n_extreme), "least")
    lab = pd.to_numeric(att["label"], errors="coerce")
    pred = pd.to_numeric(att["pred"], errors="coerce")
    missed = att[(lab == 1) & (pred == 0)].sort_values("prob_malignant", kind="stable")
    add(missed.head(n_missed), "missed")
    left_out = [str(i) for i in missed["image_id"].iloc[n_missed:]]
    return list(picked.values()), left_out


def load_heatmaps(folder: Path, ids: set[str]) -> dict[str, np.ndarray]:
    """Heatmaps ``(S, S) float32`` for ``ids`` from the ``batch_*.npz`` files in ``folder``."""
    from dermcam.errors import DermcamError
    from dermcam.stages.explain import heatmap_batches, read_heatmap_batch

    out: dict[str, np.ndarray] = {}
    for f in heatmap_batches(folder):
        if len(out) == len(ids):
            break
        try:
            b = read_heatmap_batch(f)
            bids = [str(i) for i in b["ids"]]
            for k in (k for k, i in enumerate(bids) if i in ids):
                out[bids[k]] = b["heatmaps"][k].astype(np.float32)
        except (DermcamError, KeyError) as exc:  # a damaged batch costs its cards only
            log.warning("%s: unreadable heatmap batch (%s)", f, exc)
    return out


class ImageSource:
    """The run's test images and masks at the run's size, or the reason they are unavailable.

    ``run``: a :class:`dermcam.run.Run` (what the report's ``RunFiles`` holds as
    ``.run``), or a manifest dict alone, read through the same accessors."""

    def __init__(self, run):
        from dermcam import run as runmod

        if not isinstance(run, runmod.Run):
            run = runmod.Run(Path(), run)  # a manifest alone; no path of the run is used
        self.reason = ""
        self.warning = ""
        self._by_id: dict[str, Any] = {}
        self._cache = None
        self._size = _recorded_size(run)
        root = run.data.get("root")
        try:
            from dermcam.data import load_dataset
            from dermcam.data.cache import ImageCache

            ds = load_dataset(root)
            self._by_id = {s.image_id: s for s in ds.split("test")}
            recorded = run.data.get("fingerprint")
            if recorded and ds.fingerprint() != recorded:
                self.warning = (f"the data under {root} changed since training (fingerprint "
                                "differs), so images and masks may not be the ones scored")
            self._cache = ImageCache(run.cache_dir)
        except Exception as exc:
            self.reason = f"the data set at {root} could not be read ({exc})"
            log.warning("report gallery without images: %s", self.reason)

    def get(self, image_id: str) -> tuple[np.ndarray | None, np.ndarray | None, str]:
        """``(image (S,S,3) uint8, mask (S,S) bool, "")`` or ``(None, None, reason)``."""
        if self._cache is None:
            return None, None, self.reason
        sample = self._by_id.get(image_id)
        if sample is None:
            return None, None, f"image {image_id} is not in the data set's test split"
        try:
            item = self._cache.get(sample, self._size)
        except Exception as exc:
            return None, None, f"image {image_id} could not be read ({exc})"
        mask = item.get("mask")
        return item["image"], (None if mask is None else np.asarray(mask).astype(bool)), ""


def _recorded_size(run) -> int:
    """The run's image size, 0 where the manifest records none (images then unreadable)."""
    try:
        return run.image_size
    except (KeyError, TypeError, ValueError):
        return 0


def _panel(arr: np.ndarray, size: int, nearest: bool = False):
    from PIL import Image

    u8 = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8) if arr.dtype != np.uint8 else arr
    im = Image.fromarray(u8)
    if im.size != (size, size):
        im = im.resize((size, size), Image.NEAREST if nearest else Image.BILINEAR)
    return im.convert("RGB")


def render_strip(cam: np.ndarray, image: np.ndarray | None = None,
                 mask: np.ndarray | None = None, panel: int = PANEL) -> bytes:
    """PNG bytes of one strip.

    ``cam`` ``(H, W)`` non-negative heatmap; ``image`` ``(H, W, 3) uint8`` and
    ``mask`` ``(H, W)`` bool/0-1 at the same size, or ``None``. With both, four
    panels: image, heatmap over the image (jet, white lesion outline), mask, and
    the leak overlay (red = heatmap outside the lesion, green = inside, opacity
    following the heatmap). Without them, the heatmap alone. Stored as a
    256-colour palette PNG.
    """
    from PIL import Image

    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2:
        raise ValueError(f"cam must be (H, W), got shape {cam.shape}")
    c = np.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
    peak = c.max()
    cn = c / peak if peak > 0 else c
    if image is None or mask is None:
        panels = [_panel(jet(cn), panel)]
    else:
        image = np.asarray(image)
        m = np.asarray(mask).astype(bool)
        if image.shape != cam.shape + (3,) or m.shape != cam.shape:
            raise ValueError(f"image {image.shape} and mask {m.shape} must match cam "
                             f"{cam.shape} as (H, W, 3) and (H, W)")
        img = image.astype(np.float64) / 255.0
        edge = outline(m)[..., None] if (m.any() and not m.all()) else np.zeros(m.shape + (1,), bool)
        heat = np.where(edge, 1.0, 0.5 * img + 0.5 * jet(cn))
        alpha = (0.85 * cn)[..., None]
        colour = np.where(m[..., None], np.array([0.0, 0.8, 0.0]), np.array([0.9, 0.0, 0.0]))
        grey = img.mean(axis=2, keepdims=True) * 0.6
        leak = np.where(edge, 1.0, grey * (1 - alpha) + colour * alpha)
        panels = [_panel(image, panel), _panel(heat, panel),
                  _panel(np.repeat(m[..., None], 3, axis=2).astype(np.float64), panel, True),
                  _panel(leak, panel)]
    width = len(panels) * panel + (len(panels) - 1) * _GAP
    strip = Image.new("RGB", (width, panel), (255, 255, 255))
    for k, p in enumerate(panels):
        strip.paste(p, (k * (panel + _GAP), 0))
    buf = io.BytesIO()
    # a 256-colour palette keeps a strip near 10 kB instead of 35 kB, with no visible loss
    strip.quantize(256, method=Image.Quantize.FASTOCTREE).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
