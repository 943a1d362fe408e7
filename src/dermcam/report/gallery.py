"""Gallery strips for the report: image | heatmap | lesion mask | leak overlay.

Rendered with numpy and PIL from the heatmaps the explain stage saved
(``RUN_DIR/attention/<model>/<method>/batch_*.npz``) and the run's own test
images and masks (through the decode cache), so the page shows exactly the maps
that were scored. No matplotlib, no pyplot.

Also the report's two opening pictures: :func:`examples_png` (per model, a typical
malignant and benign image and the worst misclassified one, image | heatmap) and
:func:`shortcut_example_png` (a ruler pasted onto a benign image, scored and explained by
the control and the shortcut-trained model; the demo writes it with
:func:`write_shortcut_example`).
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


# ------------------------------------------------------------ the report's opening pictures
#
# Two figures drawn with PIL at panel resolution (image and heatmap resized first, the
# lesion outline traced on the resized mask, so the border stays a crisp one-pixel line):
# per-model examples (:func:`examples_png`) and the planted shortcut
# (:func:`shortcut_example_png`). Text in DejaVu Sans, the font matplotlib ships (found on
# disk, matplotlib is not imported); Pillow's own font where it is missing.

#: Per-model examples: panel edge, gap inside an image | heatmap pair, gap between pairs,
#: outer margin (px). With ``n=3``: 3 pairs of 180 px panels, 1168 px wide.
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
#: The shortcut picture's file in the control run's figures folder (the demo writes it).
SHORTCUT_EXAMPLE_PNG = "shortcut_example.png"

_WHITE = (255, 255, 255)
_INK = (30, 30, 30)
_GREY = (110, 110, 110)
_fonts: dict[tuple[int, bool], Any] = {}


def _font(size: int, bold: bool = False):
    """DejaVu Sans (matplotlib's bundled copy) at ``size`` px; Pillow's default without it."""
    from PIL import ImageFont

    key = (size, bold)
    if key not in _fonts:
        import importlib.util

        spec = importlib.util.find_spec("matplotlib")
        name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
        font = None
        for root in (spec.submodule_search_locations or []) if spec else []:
            path = Path(root) / "mpl-data" / "fonts" / "ttf" / name
            if path.is_file():
                font = ImageFont.truetype(str(path), size)
                break
        _fonts[key] = font or ImageFont.load_default(size=size)
    return _fonts[key]


def heat_panel(cam: np.ndarray, image: np.ndarray, mask: np.ndarray | None, size: int):
    """A ``size`` x ``size`` PIL image: the heatmap (jet, scaled to its maximum) blended
    half and half over the image, with the lesion border as a white line.

    ``cam`` ``(H, W)``, ``image`` ``(H, W, 3) uint8``, ``mask`` ``(H, W)`` bool or None (no
    line). All three are resized to ``size`` first (bilinear; the mask thresholded at 0.5
    after resizing) and the border traced there, so it stays one pixel wide.
    """
    from PIL import Image

    cam = np.asarray(cam, dtype=np.float64)
    image = np.asarray(image)
    if cam.ndim != 2 or image.shape != cam.shape + (3,):
        raise ValueError(f"cam must be (H, W) and image (H, W, 3) at its size, got "
                         f"{cam.shape} and {image.shape}")
    c = np.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
    c = c / c.max() if c.max() > 0 else c
    img = np.asarray(Image.fromarray(image.astype(np.uint8)).resize((size, size),
                                                                    Image.BILINEAR))
    cz = np.asarray(Image.fromarray(c.astype(np.float32)).resize((size, size),
                                                                Image.BILINEAR))
    out = 0.5 * img.astype(np.float64) / 255.0 + 0.5 * jet(np.clip(cz, 0, 1))
    if mask is not None:
        m = np.asarray(mask, dtype=np.float32)
        if m.shape != cam.shape:
            raise ValueError(f"mask must be {cam.shape}, got shape {m.shape}")
        mz = np.asarray(Image.fromarray(m).resize((size, size), Image.BILINEAR)) >= 0.5
        if mz.any() and not mz.all():
            out[outline(mz)] = 1.0
    return _panel(out, size)


def _to_png(canvas) -> bytes:
    """Lossless RGB PNG: a 256-colour palette (as the strips use) bands the heatmaps'
    gradients visibly at this size, and these are the report's first pictures."""
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _class_name(label: Any) -> str:
    try:
        return {0: "benign", 1: "malignant"}[int(label)]
    except (TypeError, ValueError, KeyError):
        return "unknown class"


def _median_row(rows: pd.DataFrame, column: str) -> dict[str, Any] | None:
    """The row at the lower median of ``column`` (finite values only; ties by image id)."""
    v = pd.to_numeric(rows[column], errors="coerce")
    ok = rows[np.isfinite(v.to_numpy(np.float64))].assign(_v=v)
    if ok.empty:
        return None
    ok = ok.assign(_id=ok["image_id"].astype(str)).sort_values(["_v", "_id"], kind="stable")
    return ok.iloc[(len(ok) - 1) // 2].drop(["_v", "_id"]).to_dict()


def pick_examples(att: pd.DataFrame, n: int = 3) -> list[tuple[str, dict[str, Any] | None]]:
    """The images :func:`examples_png` shows for one model at one method and layer.

    ``att``: attention.csv rows of that model, method and layer. Returns ``n`` (1-3)
    ``(kind, row or None)`` pairs, kinds in :data:`EXAMPLE_KINDS` order:

    1. ``malignant``: among malignant images classified malignant (``pred == label``) with
       a defined pixel AUROC, the one at the lower median of pixel AUROC;
    2. ``benign``: the same among benign images classified benign;
    3. ``misclassified``: among images whose ``pred`` differs from ``label``, the one with
       the highest excess leakage (leakage minus the uniform heatmap's, ``1 - lesion
       area``: the gallery's measure, fair to small lesions).

    Ties go to the smaller image id; ``None`` where no image qualifies.
    """
    if not 1 <= n <= len(EXAMPLE_KINDS):
        raise ValueError(f"n must be 1 to {len(EXAMPLE_KINDS)}, got {n}")
    lab = pd.to_numeric(att["label"], errors="coerce")
    pred = pd.to_numeric(att["pred"], errors="coerce")
    out: list[tuple[str, dict[str, Any] | None]] = []
    for kind, _ in EXAMPLE_KINDS[:n]:
        if kind == "misclassified":
            wrong = att[(lab != pred) & lab.notna() & pred.notna()]
            ex = pd.to_numeric(wrong["excess_leakage"], errors="coerce")
            ok = wrong[np.isfinite(ex.to_numpy(np.float64))].assign(
                _v=-ex, _id=wrong["image_id"].astype(str))
            row = (ok.sort_values(["_v", "_id"], kind="stable").iloc[0]
                   .drop(["_v", "_id"]).to_dict() if len(ok) else None)
        else:
            cls = int(kind == "malignant")
            row = _median_row(att[(lab == cls) & (pred == cls)], "pixel_auroc")
        out.append((kind, row))
    return out


def examples_png(run_dir: str | Path, model: str | None = None, n: int = 3) -> bytes | None:
    """PNG bytes of the per-model examples, one row per model (``model``: that model only).

    Each row is the model at the method and layer the explain stage chose
    (attention_summary.json ``layer_choice``) and shows the ``n`` images
    :func:`pick_examples` picks from attention.csv (a correctly classified malignant and
    benign image of median pixel AUROC, the misclassified image with the highest excess
    leakage), each as image | saved heatmap over the image with the lesion border in
    white, captioned with its id, true class, P(malignant) and pixel AUROC. Images and
    masks are read as the gallery reads them (:class:`ImageSource`). Width
    ``2 * EX_MARGIN + n * (2 * EX_PANEL + EX_GAP) + (n - 1) * EX_PAIR_GAP`` (1168 px for
    ``n = 3``); height ``2 * EX_MARGIN + EX_HEADING`` plus ``EX_TITLE + EX_LABEL + EX_PANEL
    + EX_CAPTION`` per model.

    Returns None, with the reason logged, where the summary, attention.csv, a picked
    image's heatmap or the images themselves are missing.
    """
    from PIL import Image, ImageDraw

    from dermcam import run as runmod
    from dermcam.formatting import fmt_num
    from dermcam.io import read_json
    from dermcam.stages.explain import heatmap_dir

    if not 1 <= n <= len(EXAMPLE_KINDS):
        raise ValueError(f"n must be 1 to {len(EXAMPLE_KINDS)}, got {n}")
    run_dir = Path(run_dir)
    out = runmod.Outputs(run_dir)
    if not out.attention_summary.exists() or not out.attention.exists():
        log.warning("examples: %s has no attention summary or attention.csv (run 'dermcam "
                    "explain')", run_dir)
        return None
    choices = [c for c in read_json(out.attention_summary).get("layer_choice") or []
               if model is None or c.get("model") == model]
    if not choices:
        log.warning("examples: no CAM layer chosen for %s in %s", model or "any model",
                    out.attention_summary)
        return None
    att = pd.read_csv(out.attention, dtype={"image_id": str, "model": str, "method": str,
                                            "layer": str},
                      keep_default_na=False, na_values=[""])
    run = runmod.Run.open(run_dir)
    source = ImageSource(run)
    if source.reason:
        log.warning("examples: %s", source.reason)
        return None
    rows = []
    for c in choices:
        g = att[(att["model"] == c["model"]) & (att["method"] == c["method"])
                & (att["layer"] == c["layer"])]
        picks = pick_examples(g, n)
        ids = {str(r["image_id"]) for _, r in picks if r is not None}
        maps = load_heatmaps(heatmap_dir(run_dir, c["model"], c["method"], c["layer"]), ids)
        cells = []
        for kind, r in picks:
            if r is None:
                cells.append((kind, None, None, None, None))
                continue
            iid = str(r["image_id"])
            image, mask, why = source.get(iid)
            if iid not in maps or image is None:
                log.warning("examples: %s", why or f"no saved heatmap for {iid} under "
                            f"{heatmap_dir(run_dir, c['model'], c['method'], c['layer'])}")
                return None
            cells.append((kind, r, image, mask, maps[iid]))
        rows.append((c, cells))

    labels = dict(EXAMPLE_KINDS)
    pair = 2 * EX_PANEL + EX_GAP
    width = 2 * EX_MARGIN + n * pair + (n - 1) * EX_PAIR_GAP
    row_h = EX_TITLE + EX_LABEL + EX_PANEL + EX_CAPTION
    canvas = Image.new("RGB", (width, 2 * EX_MARGIN + EX_HEADING + len(rows) * row_h), _WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((EX_MARGIN, EX_MARGIN), "Each pair: a test image | its saved heatmap over it "
              "(jet, each scaled to its own maximum: red = most attention); white line = "
              "lesion border", font=_font(14), fill=_GREY)
    names = run.display_names
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
            called = "" if kind != "misclassified" else \
                f", called {_class_name(r.get('pred'))}"
            draw.text((x, cy), f"{r['image_id']} · {truth}{called}", font=_font(13), fill=_INK)
            draw.text((x, cy + 17), f"P(malignant) {fmt_num(r.get('prob_malignant'), 2)} · "
                      f"pixel AUROC {fmt_num(r.get('pixel_auroc'), 2)}", font=_font(13),
                      fill=_INK)
    return _to_png(canvas)


@dataclass
class ShortcutCase:
    """A ruler (or another artifact) pasted onto one benign test image, scored by two models.

    ``image``, ``pasted`` ``(S, S, 3) uint8`` (before and after), ``mask`` ``(S, S)`` bool
    lesion, ``region`` the dilated lesion the painter kept clear, ``changed`` the pasted
    pixels; ``roles``: ``{"control" | "shortcut": {"model", "display", "p_before",
    "p_after", "threshold", "cam" (S, S)}}``; ``rule``: how the image was picked.
    """

    image_id: str
    artifact: str
    placement: int
    method: str
    layer: str
    image: np.ndarray
    pasted: np.ndarray
    mask: np.ndarray
    region: np.ndarray
    changed: np.ndarray
    roles: dict[str, dict[str, Any]]
    rule: str

    def info(self) -> dict[str, Any]:
        """What the demo keeps in shortcut_experiment.json (``example``)."""
        return {"image_id": self.image_id, "artifact": self.artifact,
                "placement": self.placement, "method": self.method, "layer": self.layer,
                "rule": self.rule,
                **{role: {k: float(r[k]) for k in ("p_before", "p_after", "threshold")}
                   for role, r in self.roles.items()}}


def _probe_config(run, artifact: str):
    """The probes' placement settings as ``run`` recorded them (seed, lesion margin), for one
    placement of ``artifact``: the pixels ``artifact_inserted`` pasted at placement 0."""
    from dermcam.stages.probe import DILATE_FRACTION, ProbeConfig

    rec = run.stage_setting("probe", "config") or {}
    rec = rec if isinstance(rec, dict) else {}
    return ProbeConfig(probes=("artifact_inserted",), artifacts=(artifact,), placements=1,
                       seed=int(rec.get("seed", run.seed)),
                       dilate=float(rec.get("dilate", DILATE_FRACTION)))


def _without(artifact: str, ds, samples, items) -> tuple[list[bool], bool]:
    """``(free, known)``: per sample, whether it carries no ``artifact`` (its artifact map
    where there is one, else its ``artifact_<name>`` flag); ``known`` False where neither
    says (every sample then counts as free)."""
    from dermcam.data.artifact_labels import PREFIX
    from dermcam.data.synth import ARTIFACTS
    from dermcam.stages.probe import artifact_flags

    code = ARTIFACTS.index(artifact) + 1 if artifact in ARTIFACTS else None
    flags = artifact_flags(ds, samples)
    col = PREFIX + artifact
    by_id = (dict(zip(flags["image_id"], flags[col])) if flags is not None
             and col in flags.columns else {})
    free, known = [], True
    for s, it in zip(samples, items):
        arts = it.get("artifacts")
        if arts is not None and code is not None:
            free.append(not (np.asarray(arts) == code).any())
        elif s.image_id in by_id and np.isfinite(by_id[s.image_id]):
            free.append(by_id[s.image_id] == 0)
        else:
            free.append(True)
            known = False
    return free, known


def shortcut_case(control_run: str | Path, shortcut_run: str | Path, model: str, method: str,
                  layer: str, artifact: str = "ruler") -> ShortcutCase:
    """Paste ``artifact`` onto one benign test image and score it with both runs' ``model``.

    The image: among the control run's benign test images with a lesion mask and without
    ``artifact``, those both models call benign at their thresholds (all of them where
    none is), the one whose change in the shortcut model's P(malignant) when the artifact
    is pasted is the lower median (ties by image id): a typical reaction, not the
    strongest. The artifact is pasted exactly as the probe stage's ``artifact_inserted``
    does at placement 0 (:func:`dermcam.stages.probe.perturb` with the seed and lesion
    margin the control's probe stage recorded), so ``p_after`` is the probe's
    ``prob_perturbed`` for that row. Probabilities: the probe's scoring
    (:func:`dermcam.stages.probe.score_images`: the run's preprocessing and calibration);
    heatmaps: :class:`dermcam.attribution.CamExplainer` at ``method`` / ``layer`` with the
    target and normalisation each run's explain stage recorded, as the explain stage
    computes them. Everything on the CPU.
    """
    import torch

    from dermcam import run as runmod
    from dermcam.attribution import CamExplainer
    from dermcam.augment import preprocess
    from dermcam.errors import DermcamError
    from dermcam.stages.probe import dilate_mask, perturb, score_images, skip_reason

    runs = {"control": runmod.Run.open(control_run, require="train"),
            "shortcut": runmod.Run.open(shortcut_run, require="train")}
    size = runs["control"].image_size
    if runs["shortcut"].image_size != size:
        raise DermcamError(f"the two runs use different image sizes ({size} and "
                           f"{runs['shortcut'].image_size} px)", runs["shortcut"].dir)
    loaded = {}
    for role, run in runs.items():
        if model not in run.trained_models:
            raise DermcamError(f"{model} was not trained in this run", run.dir)
        net, _info, payload = run.load_model(model)
        loaded[role] = (net.cpu(), float(payload["threshold"]))
    ctrl = runs["control"]
    cfg = _probe_config(ctrl, artifact)
    ds = ctrl.dataset
    samples = [s for s in ctrl.test_samples(require_masks=True) if s.label == 0]
    items = [ctrl.cache.get(s, size) for s in samples]
    keep = [k for k, it in enumerate(items) if skip_reason(it["mask"]) is None]
    samples, items = [samples[k] for k in keep], [items[k] for k in keep]
    free, known = _without(artifact, ds, samples, items)
    samples = [s for s, f in zip(samples, free) if f]
    items = [it for it, f in zip(items, free) if f]
    if not samples:
        raise DermcamError(f"no benign test image with a lesion mask and without a "
                           f"{artifact} to paste one onto", ds.root)
    intact = np.stack([it["image"] for it in items])
    pasted = np.stack([perturb(it["image"], it["mask"], it.get("artifacts"), s.image_id,
                               cfg)[0].image for s, it in zip(samples, items)])
    p0 = {role: score_images(net, intact) for role, (net, _) in loaded.items()}
    p_pasted = score_images(loaded["shortcut"][0], pasted)
    benign = np.all([p0[r] < loaded[r][1] for r in loaded], axis=0)
    pool = np.flatnonzero(benign) if benign.any() else np.arange(len(samples))
    delta = p_pasted - p0["shortcut"]
    order = sorted(pool, key=lambda k: (delta[k], samples[k].image_id))
    k = int(order[(len(order) - 1) // 2])
    rule = (f"benign test images with a lesion mask and no {artifact}"
            + ("" if known else f" (where the data say whether one carries a {artifact})")
            + (", called benign by both models" if benign.any() else "")
            + f": the one with the median change in the shortcut model's P(malignant) when "
              f"the {artifact} is pasted (probe placement 0; {len(pool)} images)")
    image, mask = items[k]["image"], np.asarray(items[k]["mask"]).astype(bool)
    roles = {}
    x = preprocess(torch.from_numpy(pasted[k:k + 1]))
    for role, run in runs.items():
        net, threshold = loaded[role]
        # the picked image scored again, alone with its pasted copy, by each model alike
        # (rounding depends on the batch: ~1e-6 relative to the selection's numbers)
        before, after = score_images(net, np.stack([intact[k], pasted[k]]))
        with CamExplainer(net, layer, method) as ex:
            cb = ex.compute(x, target=run.stage_setting("explain", "target", "malignant"),
                            size=size, threshold=threshold,
                            normalize=run.stage_setting("explain", "normalize", "minmax"))
        roles[role] = {"model": model, "display": run.display_names.get(model, model),
                       "p_before": float(before), "p_after": float(after),
                       "threshold": threshold, "cam": cb.heatmaps[0]}
    return ShortcutCase(samples[k].image_id, artifact, 0, method, layer, image, pasted[k],
                        mask, dilate_mask(mask, cfg.dilate), (pasted[k] != image).any(-1),
                        roles, rule)


def render_shortcut_example(case: ShortcutCase) -> bytes:
    """PNG bytes: one row per model (control, then shortcut), each the image with the
    pasted artifact | its heatmap over it with the lesion border in white, beside the
    model's P(malignant) before -> after the paste (red where the change reaches the
    probes' negligible margin) and the decision at its threshold; under the rows, the rule
    that picked the image. 802 px wide (``SC_TEXT`` + two ``SC_PANEL`` panels), about 600
    px high."""
    from PIL import Image, ImageDraw

    from dermcam.formatting import MINUS, fmt_num
    from dermcam.stages.probe import NEGLIGIBLE_DELTA

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


def shortcut_example_png(control_run: str | Path, shortcut_run: str | Path, model: str,
                         method: str, layer: str, artifact: str = "ruler"
                         ) -> tuple[bytes, dict[str, Any]]:
    """``(PNG bytes, info)`` of the planted-shortcut picture: :func:`shortcut_case` drawn by
    :func:`render_shortcut_example`; ``info`` is :meth:`ShortcutCase.info` (image id, the
    rule that picked it, ``p_before`` / ``p_after`` / ``threshold`` per role)."""
    case = shortcut_case(control_run, shortcut_run, model, method, layer, artifact)
    return render_shortcut_example(case), case.info()


def write_shortcut_example(control_run: str | Path, shortcut_run: str | Path, model: str,
                           method: str, layer: str, artifact: str = "ruler") -> dict[str, Any]:
    """:func:`shortcut_example_png` written to the control run's
    ``figures/`` :data:`SHORTCUT_EXAMPLE_PNG` (atomically); returns its info, with
    ``figure`` the PNG's path relative to the control run."""
    from dermcam import run as runmod
    from dermcam.io import atomic_path

    png, info = shortcut_example_png(control_run, shortcut_run, model, method, layer, artifact)
    out = runmod.Outputs(control_run).figures / SHORTCUT_EXAMPLE_PNG
    with atomic_path(out) as tmp:
        tmp.write_bytes(png)
    return {**info, "figure": out.relative_to(Path(control_run)).as_posix()}
