"""Classify new dermoscopy images with a trained dermcam checkpoint, with Grad-CAM overlays.

Writes ``OUT/predictions.csv``, ``OUT/overlays/<id>.png`` and ``OUT/manifest.json``. Images
are decoded as for training, so a probability equals :func:`dermcam.inference.predict_proba`'s;
the decision uses the checkpoint's validation threshold, and the heatmaps explain it."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from dermcam.attribution import CamExplainer
from dermcam.augment import preprocess
from dermcam.checkpoints import load_checkpoint
from dermcam.data.cache import decode_sample
from dermcam.data.dataset import Sample
from dermcam.errors import DermcamError
from dermcam.io import write_bytes, write_csv, write_json
from dermcam.leakage import METRICS, score_batch
from dermcam.overlay import jet, outline, unit_cam
from dermcam.run import (  # run-folder-style file names live there
    Outputs,
    now,
    recorded_kind,
    versions,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
#: Files with these stem endings are masks or maps, not images, when a folder is scanned.
NOT_IMAGE_STEMS = ("_segmentation", "_superpixels", "_artifacts", "_lesion")
MASK_NAMES = ("{stem}_Segmentation.png", "{stem}_segmentation.png", "{stem}.png")
MANIFEST_KIND = "dermcam-predictions"
OVERLAY_PANEL = 224  # overlay panels are at least this many pixels wide
NOT_VALIDATED_FOR = (
    "clinical decisions (diagnosis, triage or reassurance): research use only. Inputs unlike the training data (another dermatoscope or camera, "
    "clinical photographs, other body sites, populations or skin types, other diagnoses) "
    "can give confident but wrong probabilities, and the threshold was chosen on the "
    "training data's validation split, not for any clinical operating point.")


@dataclass
class PredictResult:
    out: Path
    table: Any  # pandas.DataFrame, one row per image in input order
    card: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, error)

    @property
    def csv_path(self) -> Path:
        return Outputs(self.out).predictions


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders scanned (sorted, not recursively) for images, leaving out
    masks and maps (stems ending in :data:`NOT_IMAGE_STEMS`)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir()
                           if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not f.stem.lower().endswith(NOT_IMAGE_STEMS))
            if not found:
                raise DermcamError("folder holds no .jpg, .jpeg, .png or .bmp images", p)
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DermcamError("image file or folder not found", p)
    if not out:
        raise DermcamError("no images given")
    return out


def find_mask(mask_dir: Path, image: Path) -> Path | None:
    """The first of :data:`MASK_NAMES` for ``image`` in ``mask_dir``, or None."""
    for pattern in MASK_NAMES:
        p = mask_dir / pattern.format(stem=image.stem)
        if p.is_file() and p.resolve() != image.resolve():
            return p
    return None


def _ids(paths: Sequence[Path]) -> list[str]:
    """File-name-safe, unique ids from the stems (``a b.jpg`` -> ``a_b``; repeats get ``__2``)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", p.stem).lstrip(".") or "image"
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}__{seen[base]}")
    return out


def model_card(payload: dict[str, Any], info) -> dict[str, Any]:
    """The checkpoint's model card, fields older checkpoints lack filled from the payload."""
    card = dict(payload.get("model_card") or {})
    card.setdefault("architecture", info.display_name)
    card.setdefault("weights_source", payload.get("weights_source", info.weights_source))
    card.setdefault("trained_on", "unknown (not recorded in the checkpoint)")
    card.setdefault("image_size", payload["image_size"])
    card.setdefault("threshold", float(payload["threshold"]))
    card.setdefault("val_auc", None)
    card.setdefault("intended_use", "research on dermoscopy classification and attention "
                                    "auditing; not validated for clinical use")
    card["not_validated_for"] = NOT_VALIDATED_FOR
    return card


def model_card_lines(card: dict[str, Any]) -> list[str]:
    auc = card.get("val_auc")
    auc_txt = f"{auc:.3f}" if isinstance(auc, (int, float)) else "not recorded"
    n = ""
    if card.get("n_train") is not None:
        n = f" ({card['n_train']} training, {card.get('n_val', '?')} validation images)"
    rule = f" ({card['threshold_rule']})" if card.get("threshold_rule") else ""
    lines = [
        f"model: {card['architecture']}, weights {card['weights_source']}, input "
        f"{card['image_size']} px",
        f"trained on: {card['trained_on']}{n}",
        f"validation AUC {auc_txt}; decision threshold {float(card['threshold']):.3f}{rule}",
    ]
    tm = card.get("test_metrics")
    if tm:
        def ci(name: str) -> str:
            m = tm.get(name) or {}
            if m.get("value") is None:
                return f"{name.replace('_', ' ')} n/a"
            lo, hi = m.get("lo"), m.get("hi")
            rng = f" ({lo:.3f}-{hi:.3f})" if lo is not None and hi is not None else ""
            return f"{name.replace('_', ' ')} {m['value']:.3f}{rng}"
        ts = card.get("test_set") or {}
        lines.append(f"test set {ts.get('name', '?')} (n={ts.get('n', '?')}, "
                     f"{ts.get('n_malignant', '?')} malignant), 95 % CI: "
                     + ", ".join(ci(k) for k in ("roc_auc", "average_precision", "sensitivity",
                                                 "specificity", "balanced_accuracy")))
    else:
        lines.append("test metrics: not recorded (run 'dermcam evaluate' on the training run)")
    lines += [f"intended use: {card['intended_use']}",
              f"not validated for: {card['not_validated_for']}"]
    return lines


def overlay_png(image: np.ndarray, cam: np.ndarray, mask: np.ndarray | None = None) -> bytes:
    """PNG bytes: the image beside its heatmap over it (jet, 50 %), lesion outline in white.
    ``image (S, S, 3) uint8``, ``cam (S, S)`` non-negative, ``mask (S, S)`` bool or None."""
    from PIL import Image
    if image.ndim != 3 or cam.shape != image.shape[:2] or (
            mask is not None and mask.shape != cam.shape):
        raise ValueError(f"image {image.shape}, cam {cam.shape} and mask "
                         f"{None if mask is None else mask.shape} must be (S, S, 3), (S, S)")
    heat = 0.5 * image.astype(np.float64) / 255.0 + 0.5 * jet(unit_cam(cam))
    if mask is not None and mask.any() and not mask.all():
        heat[outline(mask.astype(bool))] = 1.0
    side, gap = max(OVERLAY_PANEL, image.shape[0]), 4
    tiles = [Image.fromarray(image), Image.fromarray((heat * 255).round().astype(np.uint8))]
    strip = Image.new("RGB", (2 * side + gap, side), (255, 255, 255))
    for k, t in enumerate(tiles):
        strip.paste(t.resize((side, side), Image.NEAREST), (k * (side + gap), 0))
    buf = io.BytesIO()
    strip.save(buf, format="PNG")
    return buf.getvalue()


def _prepare_out(out: Outputs) -> None:
    """Create ``out``; clear a previous prediction there, refuse any other dermcam output."""
    if out.root.exists() and not out.root.is_dir():
        raise DermcamError("output path exists and is not a folder", out.root)
    if out.manifest.exists():
        if recorded_kind(out.root) != MANIFEST_KIND:
            raise DermcamError("output folder holds another dermcam output (a run?); choose "
                               "a new --out folder", out.root)
        out.manifest.unlink()  # ours: not complete again until this run finishes
        out.predictions.unlink(missing_ok=True)
        shutil.rmtree(out.overlays, ignore_errors=True)  # stale overlays go
    out.root.mkdir(parents=True, exist_ok=True)


def _mask_folder(masks: str | Path | None, paths: Sequence[Path]) -> Path | None:
    """``masks`` as a folder matching at least one of ``paths``, or None without one."""
    if masks is None:
        return None
    mask_dir = Path(masks)
    if not mask_dir.is_dir():
        raise DermcamError("mask folder not found", mask_dir)
    if not any(find_mask(mask_dir, p) for p in paths):
        raise DermcamError(f"no mask matches any of the {len(paths)} image(s) (expected "
                           "<stem>_Segmentation.png, <stem>_segmentation.png or "
                           "<stem>.png for an image <stem>.jpg)", mask_dir)
    return mask_dir


@dataclass
class _Classifier:
    model: Any
    card: dict[str, Any]
    size: int
    threshold: float
    cam_method: str
    cam_layer: str
    resize: str = "squash"


def _load(checkpoint: Path) -> _Classifier:
    """The checkpoint's classifier (with the fields predict needs) and the CAM method and
    layer explain chose (else Grad-CAM at the study's layer)."""
    path = Path(checkpoint)
    if path.is_file():
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"PK\x03\x04":  # torch.save writes a zip archive
            raise DermcamError("not a PyTorch checkpoint file (expected a dermcam "
                               "RUN/models/<name>/model.pt)", path)
    model, info, payload = load_checkpoint(checkpoint)
    size, thr = payload.get("image_size"), payload.get("threshold")
    if not isinstance(size, int) or size < 8 or not isinstance(thr, (int, float)) or not (
            0.0 <= float(thr) <= 1.0):
        raise DermcamError("not a trained dermcam classifier checkpoint (no image_size and "
                           "validation threshold); use RUN/models/<name>/model.pt", checkpoint)
    cam = payload.get("cam") or {}
    return _Classifier(model, model_card(payload, info), int(payload["image_size"]),
                       float(payload["threshold"]), cam.get("method", "gradcam"),
                       cam.get("layer", info.target_layer), payload.get("resize", "squash"))


def _decode(job: tuple[Path, str], mask_dir: Path | None, size: int, resize: str = "squash"):
    """``(path, image_id, mask_path, item or the DermcamError decoding it raised)``."""
    path, image_id = job
    mask_path = find_mask(mask_dir, path) if mask_dir is not None else None
    try:
        return path, image_id, mask_path, decode_sample(
            Sample(image_id, path, 0, "test", mask_path), size, resize)
    except DermcamError as exc:
        return path, image_id, mask_path, exc


def _mask_scores(items, heatmaps: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({metric: (N,)}, reasons (N,))`` for items with a mask (NaN and "no mask" for the rest)."""
    has = np.array([it[3]["mask"] is not None for it in items])
    scores: dict[str, np.ndarray] = {}
    reasons = np.full(len(items), "no mask", dtype=object)
    if has.any():
        m = np.stack([it[3]["mask"].astype(bool) for it, h in zip(items, has) if h])
        vals, why = score_batch(heatmaps[has], m)
        for name in METRICS:
            col = np.full(len(items), np.nan)
            col[has] = vals[name]
            scores[name] = col
        reasons[has] = why
    return scores, reasons


def _batch_rows(items, probs: np.ndarray, thr: float, with_masks: bool,
                scores: dict[str, np.ndarray], reasons: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for k, (path, image_id, mask_path, _) in enumerate(items):
        prob = float(probs[k])
        row = {"path": str(path), "image_id": image_id, "prob_malignant": prob,
               "decision": "malignant" if prob >= thr else "benign", "threshold": thr}
        if with_masks:
            row["mask_path"] = "" if mask_path is None else str(mask_path)
            for name in METRICS:
                row[name] = float(scores[name][k]) if scores else np.nan
            row["metric_note"] = reasons[k]
        rows.append(row)
    return rows


def _predict_batch(ex, clf: _Classifier, items, device: str, out: Outputs,
                   with_masks: bool) -> list[dict[str, Any]]:
    """Probabilities, heatmaps and scores of one batch; writes its overlays, returns its rows."""
    import torch
    x = preprocess(torch.from_numpy(np.stack([it[3]["image"] for it in items])).to(device))
    cams = ex.compute(x, target="predicted", threshold=clf.threshold, size=clf.size)
    scores, reasons = _mask_scores(items, cams.heatmaps)
    rows = _batch_rows(items, cams.probs, clf.threshold, with_masks, scores, reasons)
    for k, (_, image_id, _, item) in enumerate(items):
        mask = None if item["mask"] is None else item["mask"].astype(bool)
        write_bytes(out.overlay(image_id), overlay_png(item["image"], cams.heatmaps[k], mask))
    return rows


def _predict_all(clf: _Classifier, paths: list[Path], mask_dir: Path | None, out: Outputs,
                 batch_size: int, device: str, skip_bad: bool, warn: Callable[[str], None],
                 progress: Callable[[int, int], None] | None
                 ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """``(rows, skipped)`` over every batch, decoded by all cores in input order."""
    ids, total = _ids(paths), len(paths)
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    decode = partial(_decode, mask_dir=mask_dir, size=clf.size, resize=clf.resize)
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    with pool, CamExplainer(clf.model, clf.cam_layer, clf.cam_method) as ex:
        for start in range(0, total, batch_size):
            jobs = zip(paths[start:start + batch_size], ids[start:start + batch_size])
            items = []
            for path, image_id, mask_path, item in pool.map(decode, jobs):
                if isinstance(item, DermcamError):  # unreadable: raise, or warn and skip
                    if not skip_bad:
                        raise item
                    warn(f"skipped: {item}")
                    skipped.append((str(path), str(item)))
                else:
                    items.append((path, image_id, mask_path, item))
            if items:
                rows += _predict_batch(ex, clf, items, device, out, mask_dir is not None)
            if progress:
                progress(min(total, start + batch_size), total)
    return rows, skipped


def _output_manifest(checkpoint: Path, clf: _Classifier, mask_dir: Path | None,
                     n_images: int, skipped: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "schema_version": 1, "kind": MANIFEST_KIND, "created": now(), "status": "complete",
        "versions": versions(), "checkpoint": str(checkpoint.resolve()),
        "model_card": clf.card, "image_size": clf.size, "threshold": clf.threshold,
        "cam_method": clf.cam_method, "cam_layer": clf.cam_layer,
        "cam_target": "predicted (decision at the threshold)",
        "masks": None if mask_dir is None else str(mask_dir),
        "n_images": n_images, "skipped": [{"path": p, "error": e} for p, e in skipped]}


def predict(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path,
            masks: str | Path | None = None, batch_size: int = 16, skip_bad: bool = False,
            device: str = "cpu", progress: Callable[[int, int], None] | None = None,
            warn: Callable[[str], None] | None = None) -> PredictResult:
    """Probability of malignancy, decision and Grad-CAM overlay for each input image.
    ``masks``: a folder of lesion masks; images with one also get the attention metrics. An
    unreadable image raises a one-line error, or with ``skip_bad`` is warned about and left out."""
    import pandas as pd
    if batch_size < 1:
        raise DermcamError(f"--batch-size must be at least 1, got {batch_size}")
    warn = warn or log.warning
    outs, checkpoint = Outputs(out), Path(checkpoint)
    # Inputs first: a bad folder or mask folder is refused before the model is loaded.
    paths = collect_images(inputs)
    mask_dir = _mask_folder(masks, paths)
    clf = _load(checkpoint)
    _prepare_out(outs)
    clf.model = clf.model.to(device)
    rows, skipped = _predict_all(clf, paths, mask_dir, outs, batch_size, device, skip_bad,
                                 warn, progress)
    if not rows:
        raise DermcamError("every input image was unreadable and skipped; nothing to predict")
    if mask_dir is not None and not any(r["mask_path"] for r in rows):
        warn(f"{mask_dir}: no mask matched any readable image; no attention metrics")
    table = pd.DataFrame(rows)
    write_csv(outs.predictions, table)
    write_json(outs.manifest, _output_manifest(checkpoint, clf, mask_dir, len(rows), skipped))
    return PredictResult(outs.root, table, clf.card, skipped)
