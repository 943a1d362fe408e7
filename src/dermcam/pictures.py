"""Pictures of heatmaps over images, drawn with numpy and PIL at panel resolution.

Image and heatmap are resized to the panel first and the outline traced on the resized
mask, so the border stays a crisp one-pixel line (matplotlib cannot promise that). Text in
matplotlib's bundled DejaVu Sans, found without importing matplotlib.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermcam.config import NEGLIGIBLE_DELTA
from dermcam.formatting import MINUS, fmt_num
from dermcam.overlay import jet, leak_overlay, outline, unit_cam

#: Gallery strip: edge of one panel and the gap between panels (px).
PANEL = 112
_GAP = 4
#: Per-model examples: panel edge, gap inside an image | heatmap pair, gap between pairs,
#: outer margin (px).
EX_PANEL = 180
EX_GAP = 4
EX_PAIR_GAP = 24
EX_MARGIN = 14
#: Heights (px) of the figure's heading, a model's title, a pick's label, its caption.
EX_HEADING = 26
EX_TITLE = 36
EX_LABEL = 20
EX_CAPTION = 40
#: The picks of :func:`pick_examples`, in order: key and label.
EXAMPLE_KINDS = (("malignant", "correctly called malignant (median pixel AUROC)"),
                 ("benign", "correctly called benign (median pixel AUROC)"),
                 ("misclassified", "misclassified (highest excess leakage)"))
#: Shortcut picture: panel edge and the width of the text column on the left (px).
SC_PANEL = 220
SC_TEXT = 330

_WHITE = (255, 255, 255)
_INK = (30, 30, 30)
_GREY = (110, 110, 110)


@functools.cache
def _font(size: int, bold: bool = False):
    """DejaVu Sans (matplotlib's bundled copy) at ``size`` px; Pillow's default without it."""
    import importlib.util

    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "mpl-data" / "fonts" / "ttf" / name
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def _panel(arr: np.ndarray, size: int, nearest: bool = False):
    from PIL import Image

    u8 = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8) if arr.dtype != np.uint8 else arr
    im = Image.fromarray(u8)
    if im.size != (size, size):
        im = im.resize((size, size), Image.NEAREST if nearest else Image.BILINEAR)
    return im.convert("RGB")


def _to_png(canvas) -> bytes:
    """Optimised PNG bytes (the examples stay RGB: a palette bands their heatmaps' gradients)."""
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def render_strip(cam: np.ndarray, image: np.ndarray | None = None,
                 mask: np.ndarray | None = None, panel: int = PANEL) -> bytes:
    """PNG bytes of one gallery strip: with ``image (H, W, 3) uint8`` and ``mask (H, W)``,
    image | heatmap over it | mask | leak overlay (red off the lesion, green on it); without
    them the ``cam (H, W)`` alone."""
    from PIL import Image

    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2:
        raise ValueError(f"cam must be (H, W), got shape {cam.shape}")
    cn = unit_cam(cam)
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
        leak = np.where(edge, 1.0, leak_overlay(img, m, cn))
        panels = [_panel(image, panel), _panel(heat, panel),
                  _panel(np.repeat(m[..., None], 3, axis=2).astype(np.float64), panel, True),
                  _panel(leak, panel)]
    width = len(panels) * panel + (len(panels) - 1) * _GAP
    strip = Image.new("RGB", (width, panel), _WHITE)
    for k, p in enumerate(panels):
        strip.paste(p, (k * (panel + _GAP), 0))
    # a 256-colour palette keeps a strip near 10 kB instead of 35 kB, with no visible loss
    return _to_png(strip.quantize(256, method=Image.Quantize.FASTOCTREE))


def heat_panel(cam: np.ndarray, image: np.ndarray, mask: np.ndarray | None, size: int):
    """A ``size`` x ``size`` PIL image: the heatmap (jet, scaled to its maximum) blended half
    and half over the image, the lesion border (``mask``, or None) traced in white after
    resizing so it stays one pixel wide."""
    from PIL import Image

    cam = np.asarray(cam, dtype=np.float64)
    image = np.asarray(image)
    if cam.ndim != 2 or image.shape != cam.shape + (3,):
        raise ValueError(f"cam must be (H, W) and image (H, W, 3) at its size, got "
                         f"{cam.shape} and {image.shape}")
    c = unit_cam(cam)
    img = np.asarray(Image.fromarray(image.astype(np.uint8)).resize((size, size), Image.BILINEAR))
    cz = np.asarray(Image.fromarray(c.astype(np.float32)).resize((size, size), Image.BILINEAR))
    out = 0.5 * img.astype(np.float64) / 255.0 + 0.5 * jet(np.clip(cz, 0, 1))
    if mask is not None:
        m = np.asarray(mask, dtype=np.float32)
        if m.shape != cam.shape:
            raise ValueError(f"mask must be {cam.shape}, got shape {m.shape}")
        mz = np.asarray(Image.fromarray(m).resize((size, size), Image.BILINEAR)) >= 0.5
        if mz.any() and not mz.all():
            out[outline(mz)] = 1.0
    return _panel(out, size)


def _class_name(label: Any) -> str:
    try:
        return {0: "benign", 1: "malignant"}[int(label)]
    except (TypeError, ValueError, KeyError):
        return "unknown class"


def _ranked_row(rows: pd.DataFrame, v: pd.Series, at) -> dict[str, Any] | None:
    """The row at ``at(n)`` of the ``n`` rows sorted by finite ``v``, ties by image id; or None."""
    keep = np.isfinite(v.to_numpy(np.float64))
    ok = rows.loc[keep].assign(_v=v.to_numpy()[keep])  # values: an empty frame takes no index
    if ok.empty:
        return None
    ok = ok.assign(_id=ok["image_id"].astype(str)).sort_values(["_v", "_id"], kind="stable")
    return ok.iloc[at(len(ok))].drop(["_v", "_id"]).to_dict()


def pick_examples(att: pd.DataFrame, n: int = 3) -> list[tuple[str, dict[str, Any] | None]]:
    """The ``n`` (1-3) ``(kind, row or None)`` picks :func:`examples_png` shows from one model
    x method x layer's attention.csv rows: the correctly called malignant, then benign,
    image at the lower median of pixel AUROC, and the misclassified image with the highest
    excess leakage (fair to small lesions). Ties go to the smaller image id."""
    if not 1 <= n <= len(EXAMPLE_KINDS):
        raise ValueError(f"n must be 1 to {len(EXAMPLE_KINDS)}, got {n}")
    lab = pd.to_numeric(att["label"], errors="coerce")
    pred = pd.to_numeric(att["pred"], errors="coerce")
    out: list[tuple[str, dict[str, Any] | None]] = []
    for kind, _ in EXAMPLE_KINDS[:n]:
        if kind == "misclassified":
            wrong = att[(lab != pred) & lab.notna() & pred.notna()]
            row = _ranked_row(wrong, -pd.to_numeric(wrong["excess_leakage"], errors="coerce"),
                              lambda k: 0)  # the highest excess leakage
        else:
            cls = int(kind == "malignant")
            ok = att[(lab == cls) & (pred == cls)]
            row = _ranked_row(ok, pd.to_numeric(ok["pixel_auroc"], errors="coerce"),
                              lambda k: (k - 1) // 2)  # the lower median
        out.append((kind, row))
    return out


def examples_png(rows, names: dict[str, str] | None = None) -> bytes:
    """PNG bytes of the per-model examples, one row per ``(choice, cells)`` of ``rows``:
    ``choice`` a ``{model, method, layer}`` dict, ``cells`` the :func:`pick_examples` picks
    as ``(kind, row, image, mask, cam)`` (None where no image qualifies), each drawn as image
    | heatmap with a caption. 1168 px wide for 3 picks."""
    from PIL import Image, ImageDraw

    n = max((len(cells) for _, cells in rows), default=1)
    labels = dict(EXAMPLE_KINDS)
    pair = 2 * EX_PANEL + EX_GAP
    width = 2 * EX_MARGIN + n * pair + (n - 1) * EX_PAIR_GAP
    row_h = EX_TITLE + EX_LABEL + EX_PANEL + EX_CAPTION
    canvas = Image.new("RGB", (width, 2 * EX_MARGIN + EX_HEADING + len(rows) * row_h), _WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((EX_MARGIN, EX_MARGIN), "Each pair: a test image | its saved heatmap over it "
              "(jet, each scaled to its own maximum: red = most attention); white line = "
              "lesion border", font=_font(14), fill=_GREY)
    names = names or {}
    for k, (c, cells) in enumerate(rows):
        y = EX_MARGIN + EX_HEADING + k * row_h
        title = names.get(c["model"], c["model"])
        draw.text((EX_MARGIN, y + 11), title, font=_font(17, True), fill=_INK)
        draw.text((EX_MARGIN + draw.textlength(title, font=_font(17, True)) + 10, y + 14),
                  f"{c['method']} at {c['layer']}", font=_font(14), fill=_GREY)
        for j, (kind, r, image, mask, cam) in enumerate(cells):
            x = EX_MARGIN + j * (pair + EX_PAIR_GAP)
            draw.text((x, y + EX_TITLE), labels[kind], font=_font(13, True), fill=_INK)
            py = y + EX_TITLE + EX_LABEL
            if r is None:
                draw.rectangle((x, py, x + pair - 1, py + EX_PANEL - 1), outline=(200, 200, 200))
                draw.text((x + 10, py + EX_PANEL // 2 - 8), "no such image in the test split",
                          font=_font(13), fill=_GREY)
                continue
            canvas.paste(_panel(image, EX_PANEL), (x, py))
            canvas.paste(heat_panel(cam, image, mask, EX_PANEL), (x + EX_PANEL + EX_GAP, py))
            cy = py + EX_PANEL + 4
            truth = _class_name(r.get("label"))
            called = "" if kind != "misclassified" else f", called {_class_name(r.get('pred'))}"
            draw.text((x, cy), f"{r['image_id']} · {truth}{called}", font=_font(13), fill=_INK)
            draw.text((x, cy + 17), f"P(malignant) {fmt_num(r.get('prob_malignant'), 2)} · "
                      f"pixel AUROC {fmt_num(r.get('pixel_auroc'), 2)}", font=_font(13),
                      fill=_INK)
    return _to_png(canvas)


def _lines(text: str, width: int, font) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` px in ``font``."""
    out: list[str] = []
    cur = ""
    for w in text.split():
        trial = f"{cur} {w}".strip()
        if cur and font.getlength(trial) > width:
            out.append(cur)
            cur = w
        else:
            cur = trial
    return out + [cur] if cur else out


def render_shortcut_example(case) -> bytes:
    """PNG bytes of a :class:`dermcam.demo.ShortcutCase`: per model (control, then shortcut)
    the pasted image | its heatmap, beside P(malignant) before -> after the paste and the
    decisions; under the rows, the rule that picked the image."""
    from PIL import Image, ImageDraw

    titles = {"control": "Control", "shortcut": "Shortcut model"}
    notes = {"control": f"{case.artifact}s independent of the label in training",
             "shortcut": f"{case.artifact}s marked malignancy in training"}
    head, row_h, line = 64, SC_PANEL + 16, 16
    width = 2 * EX_MARGIN + SC_TEXT + 2 * SC_PANEL + EX_GAP
    foot = _lines(f"Picked from {case.rule}. Each heatmap is scaled to its own maximum, so "
                  "its colours compare places within one map, not the two models.",
                  width - 2 * EX_MARGIN, _font(12))
    canvas = Image.new("RGB", (width, EX_MARGIN + head + len(case.roles) * row_h
                               + line * len(foot) + EX_MARGIN), _WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((EX_MARGIN, EX_MARGIN), f"A {case.artifact} pasted outside the lesion of benign "
              f"test image {case.image_id}", font=_font(17, True), fill=_INK)
    draw.text((EX_MARGIN, EX_MARGIN + 26), f"image with the pasted {case.artifact} | heatmap "
              f"({case.method} at {case.layer}; red = most attention), white line = lesion "
              "border", font=_font(13), fill=_GREY)
    for j, (role, r) in enumerate(case.roles.items()):
        y = EX_MARGIN + head + j * row_h
        x = EX_MARGIN
        draw.text((x, y + 20), f"{titles.get(role, role)}: {r['display']}", font=_font(16, True),
                  fill=_INK)
        draw.text((x, y + 44), notes.get(role, ""), font=_font(13), fill=_GREY)
        before, after = r["p_before"], r["p_after"]
        # red where the change is not negligible by the probes' own margin
        draw.text((x, y + 84), f"P(malignant) {fmt_num(before, 2)} → {fmt_num(after, 2)}",
                  font=_font(22, True),
                  fill=(170, 0, 0) if abs(after - before) >= NEGLIGIBLE_DELTA else _INK)
        draw.text((x, y + 112), f"change {fmt_num(after - before, 2, sign=True, minus=MINUS)}",
                  font=_font(13), fill=_INK)
        called = ["malignant" if p >= r["threshold"] else "benign" for p in (before, after)]
        draw.text((x, y + 130), f"decision at threshold {fmt_num(r['threshold'], 2)}: "
                  f"{called[0]} → {called[1]}", font=_font(13), fill=_INK)
        px = EX_MARGIN + SC_TEXT
        canvas.paste(_panel(case.pasted, SC_PANEL), (px, y))
        canvas.paste(heat_panel(r["cam"], case.pasted, case.mask, SC_PANEL),
                     (px + SC_PANEL + EX_GAP, y))
    for i, text in enumerate(foot):
        draw.text((EX_MARGIN, EX_MARGIN + head + len(case.roles) * row_h + i * line), text,
                  font=_font(12), fill=_GREY)
    return _to_png(canvas)
