"""The report's gallery: per model and method, the images whose heatmaps leak most and least
and the missed malignant lesions, each a strip image | heatmap | mask | leak overlay drawn
from the heatmaps explain saved, so the page shows exactly the maps that were scored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dermcam import run as runmod
from dermcam.formatting import fmt_num, is_number
from dermcam.heatmap_files import heatmap_dir, load_heatmaps
from dermcam.pictures import render_strip

log = logging.getLogger(__name__)

#: Card kinds and their captions.
KINDS = {"most": "highest excess leakage", "least": "lowest excess leakage",
         "missed": "missed malignant (label 1, predicted benign)"}
#: Gallery caps per model and method.
N_EXTREME, N_MISSED = 3, 12


@dataclass
class Case:
    """One gallery card: an attention.csv row and why it was picked."""
    row: dict[str, Any]
    kinds: list[str]


def select_cases(att: pd.DataFrame, n_extreme: int = N_EXTREME, n_missed: int = N_MISSED
                 ) -> tuple[list[Case], list[str]]:
    """The cards for one model and method's attention.csv rows: the ``n_extreme`` highest and
    lowest defined excess leakage, then up to ``n_missed`` missed malignant lesions, each
    image once; and the ids of the missed ones left out by the cap."""
    ex = pd.to_numeric(att["excess_leakage"], errors="coerce")
    valid = att[np.isfinite(ex.to_numpy(dtype=np.float64))].copy()
    valid["_ex"] = ex[valid.index]
    valid = valid.sort_values(["_ex", "image_id"], kind="stable")
    picked: dict[str, Case] = {}

    def add(rows: pd.DataFrame, kind: str) -> None:
        for r in rows.drop(columns=["_ex"], errors="ignore").to_dict(orient="records"):
            picked.setdefault(str(r["image_id"]), Case(r, [])).kinds.append(kind)

    add(valid.tail(n_extreme).iloc[::-1], "most")
    add(valid.head(n_extreme), "least")
    lab, pred = (pd.to_numeric(att[c], errors="coerce") for c in ("label", "pred"))
    missed = att[(lab == 1) & (pred == 0)].sort_values("prob_malignant", kind="stable")
    add(missed.head(n_missed), "missed")
    left_out = [str(i) for i in missed["image_id"].iloc[n_missed:]]
    return list(picked.values()), left_out


class ImageSource:
    """A run's test images and masks at its size; ``reason`` says why they are unavailable,
    ``warning`` that the data changed since training."""

    def __init__(self, run: runmod.Run):
        self.run, self.reason, self.warning = run, "", ""
        self._by_id: dict[str, Any] = {}
        try:
            self._by_id = {s.image_id: s for s in run.test_samples()}
            recorded = run.data.get("fingerprint")
            if recorded and run.dataset.fingerprint() != recorded:
                self.warning = (f"the data under {run.data.get('root')} changed since training "
                                "(fingerprint differs), so images and masks may not be the "
                                "ones scored")
        except Exception as exc:
            self.reason = f"the data set at {run.data.get('root')} could not be read ({exc})"
            log.warning("report gallery without images: %s", self.reason)

    def get(self, image_id: str) -> tuple[np.ndarray | None, np.ndarray | None, str]:
        """``(image (S,S,3) uint8, mask (S,S) bool, "")`` or ``(None, None, reason)``."""
        if self.reason:
            return None, None, self.reason
        sample = self._by_id.get(image_id)
        if sample is None:
            return None, None, f"image {image_id} is not in the data set's test split"
        try:
            item = self.run.cache.get(sample, self.run.image_size)
        except Exception as exc:
            return None, None, f"image {image_id} could not be read ({exc})"
        mask = item.get("mask")
        return item["image"], (None if mask is None else np.asarray(mask).astype(bool)), ""


def _cls(v: Any) -> str:
    return {0: "benign", 1: "malignant"}.get(int(v), str(v)) if is_number(v) else str(v)


def cards(run: runmod.Run, names: dict[str, str], data_uri) -> tuple[list[dict], list[str]]:
    """The gallery's cards, per model and method (strips as ``data_uri(png)``), and notes on
    what could not be shown."""
    path = runmod.Outputs(run.dir).attention
    if not path.exists():
        return [], []
    att = pd.read_csv(path, dtype={"image_id": str, "model": str, "method": str, "layer": str},
                      keep_default_na=False, na_values=[""])
    order = list(run.model_records)
    att = att.assign(_o=[order.index(m) if m in order else len(order) for m in att["model"]])
    source, out, notes = None, [], []
    for (_, model, method, layer), g in att.groupby(["_o", "model", "method", "layer"]):
        cases, left = select_cases(g)
        if left:
            notes.append(f"{names.get(model, model)} ({method}): {len(left)} more missed "
                         f"malignant lesions not shown: {', '.join(left)}")
        folder = heatmap_dir(run.dir, model, method, layer)
        maps = load_heatmaps(folder, {str(c.row["image_id"]) for c in cases})
        if source is None and cases:
            source = ImageSource(run)
            if source.reason or source.warning:
                notes.insert(0, f"images and masks: {source.reason or source.warning}")
        for c in cases:
            r, iid = c.row, str(c.row["image_id"])
            card = {"model": model, "method": method, "cls": _cls(r.get("label")),
                    "kind": " ".join(c.kinds), "tags": [KINDS.get(k, k) for k in c.kinds],
                    "id": iid, "name": names.get(model, model), "png": None,
                    "pred": _cls(r.get("pred")), "prob": fmt_num(r.get("prob_malignant"), 3),
                    "threshold": fmt_num(run.thresholds.get(model), 3),
                    "excess": fmt_num(r.get("excess_leakage"), 3, sign=True),
                    "area": fmt_num(r.get("lesion_area"), 3),
                    "auroc": fmt_num(r.get("pixel_auroc"), 3), "why": ""}
            if isinstance(r.get("reason"), str) and r["reason"]:
                card["why"] = f"scores undefined: {r['reason'].replace('_', ' ')}"
            if iid not in maps:
                card["why"] = f"no saved heatmap for {iid} under {folder}"
            else:
                image, mask, why = source.get(iid)
                try:
                    card["png"] = data_uri(render_strip(maps[iid], image, mask))
                    card["why"] = card["why"] or (f"heatmap only: {why}" if why else "")
                except ValueError as exc:
                    card["why"] = f"strip could not be drawn ({exc})"
            out.append(card)
    return out, notes


def filters(cards: list[dict]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """The gallery's selects: ``(card data key, label, [(value, text)])``."""
    methods = list(dict.fromkeys(c["method"] for c in cards))
    return [("model", "Model", list({c["model"]: c["name"] for c in cards}.items())),
            *([("method", "Method", [(m, m) for m in methods])] if len(methods) > 1 else []),
            ("cls", "Class", [("benign", "benign"), ("malignant", "malignant")]),
            ("kind", "Shown because", list(KINDS.items()))]
