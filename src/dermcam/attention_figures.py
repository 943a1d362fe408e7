"""The explain stage's pictures from attention.csv's rows and the saved heatmaps: the
attention figures and the report's first picture, ``figures/examples.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermcam import attention_plots as ap
from dermcam import leakage as lk
from dermcam import run as runmod
from dermcam.heatmap_files import heatmaps_by_id
from dermcam.io import write_bytes
from dermcam.pictures import examples_png, pick_examples


def _images_of(run: runmod.Run, out: runmod.Outputs, sel: dict[str, str], ids: set[str],
               by_id: dict[str, Any]) -> dict[str, tuple[dict, np.ndarray]]:
    """``{image id: (cached item, saved heatmap)}`` of ``ids`` at ``sel``."""
    heats = heatmaps_by_id(out.root, sel["model"], sel["method"], sel["layer"], ids)
    return {i: (run.cache.get(by_id[i], run.image_size), heats[i]) for i in sorted(ids)}


def attention_figures(run: runmod.Run, out: runmod.Outputs, att: pd.DataFrame, samples,
                      n_examples: int = 3) -> None:
    """The attention figures into ``out.figures`` (``samples``: the images scored)."""
    figs = out.figures
    by_id = {s.image_id: s for s in samples}
    first_method = sorted(att["method"].unique())[0]
    for model, g in att.groupby("model"):
        gm = g[g["method"] == first_method]
        disp = run.display_names.get(model, model)
        ap.plot_attention_summary(gm, figs / f"attention_leakage_analysis_{model}.png",
                                  title=f"{disp} ({first_method}): attention leakage")
    ap.plot_leakage_vs_accuracy(att[att["method"] == first_method],
                                figs / "leakage_vs_accuracy.png",
                                title="Attention leakage vs share classified correctly "
                                      f"({first_method})", displays=run.display_names)
    ap.plot_leakage_vs_area(att[att["method"] == first_method], figs / "leakage_vs_area.png",
                            title="Leakage vs lesion area, one panel per model",
                            displays=run.display_names)
    table = lk.summarise(att, ("excess_leakage", "localisation_gain", "pixel_auroc",
                               "pointing_game"), by=("model", "method"), n_boot=200, seed=0)
    ap.plot_size_aware_table(table, figs / "size_aware_scores.png")
    for (model, method), g in att.groupby(["model", "method"]):
        valid = g[g["reason"] == ""].sort_values("excess_leakage")
        picks = [("least", r) for r in valid.head(n_examples).itertuples()] + \
                [("most", r) for r in valid.tail(n_examples).itertuples()]
        layer = str(g["layer"].iloc[0])
        sel = {"model": model, "method": method, "layer": layer}
        images = _images_of(run, out, sel, {r.image_id for _, r in picks}, by_id)
        for kind, r in picks:
            item, heat = images[r.image_id]
            ap.plot_example(item["image"], heat, item["mask"].astype(bool),
                            figs / "examples" / f"{model}_{method}_{kind}_{r.image_id}.png",
                            title=f"{r.image_id} ({'malignant' if r.label else 'benign'}, "
                                  f"p={r.prob_malignant:.2f}, {model}/{method} at {layer})")


def example_rows(run: runmod.Run, out: runmod.Outputs, att: pd.DataFrame, selection,
                 samples, n: int = 3) -> list[tuple[dict, list[tuple]]]:
    """What :func:`dermcam.pictures.examples_png` draws: the picks of each ``selection`` entry."""
    by_id = {s.image_id: s for s in samples}
    rows = []
    for c in selection:
        g = att[(att["model"] == c["model"]) & (att["method"] == c["method"])
                & (att["layer"] == c["layer"])]
        picks = pick_examples(g, n)
        images = _images_of(run, out, c, {str(r["image_id"]) for _, r in picks
                                          if r is not None}, by_id)
        cells = []
        for kind, r in picks:
            if r is None:
                cells.append((kind, None, None, None, None))
                continue
            item, heat = images[str(r["image_id"])]
            cells.append((kind, r, item["image"], item.get("mask"), heat))
        rows.append((c, cells))
    return rows


def write_examples(run: runmod.Run, out: runmod.Outputs, selection, samples) -> Path:
    """``figures/examples.png`` from the attention.csv just written."""
    att = pd.read_csv(out.attention, dtype={"image_id": str, "model": str, "method": str,
                                            "layer": str}, keep_default_na=False,
                      na_values=[""])
    rows = example_rows(run, out, att, selection, samples)
    return write_bytes(out.figures / runmod.EXAMPLES_PNG, examples_png(rows, run.display_names))
