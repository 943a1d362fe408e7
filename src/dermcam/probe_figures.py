"""The probe stage's figures: ``probe_delta.png``, ``probe_auc.png`` (ROC AUC intact vs
lesion / background removed) and ``probe_examples.png``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermcam.formatting import is_number
from dermcam.io import save_figure
from dermcam.perturb import PerturbConfig, Variant, perturb, probe_order
from dermcam.plots import new_figure
from dermcam.probe_stats import find, normalise_rows

PROBE_TITLES = {"lesion_removed": "lesion removed", "background_removed": "background removed",
                "artifact_inserted": "inserted", "artifact_removed": "removed",
                "context_swap": "context swapped", "hot_removed": "marked regions removed",
                "hot_transplanted": "marked regions transplanted"}


def probe_label(e: dict[str, Any]) -> str:
    """A probe's short title, with its artifact where it has one."""
    if e["probe"] in ("artifact_inserted", "artifact_removed"):
        return f"{e['artifact']} {PROBE_TITLES[e['probe']]}"
    return PROBE_TITLES[e["probe"]]


def build_delta_figure(df: pd.DataFrame, displays: dict[str, str] | None = None):
    """Per model, the per-image change in malignant probability under each probe (box plots)."""
    displays = displays or {}
    df = normalise_rows(df)
    models = list(dict.fromkeys(df["model"]))
    fig = new_figure((max(6.0, 0.55 * df.groupby(["probe", "artifact"]).ngroups + 2),
                       2.6 * len(models)))
    axes = fig.subplots(len(models), 1, squeeze=False)[:, 0]
    for ax, model in zip(axes, models):
        g = df[df["model"] == model]
        keys = sorted(g.groupby(["probe", "artifact"]).groups,
                      key=lambda k: (probe_order(k[0]), k[1]))
        data = [g[(g["probe"] == p) & (g["artifact"] == a)].groupby("image_id")["delta"].mean()
                for p, a in keys]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(keys) + 1))
        ax.set_xticklabels([probe_label({"probe": p, "artifact": a}) for p, a in keys],
                           rotation=30, ha="right", fontsize=8)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("Δ P(malignant)")
        ax.set_title(displays.get(model, model), fontsize=10)
    return fig


def build_auc_figure(entries: Sequence[dict[str, Any]], displays: dict[str, str] | None = None):
    """ROC AUC intact vs lesion removed vs background removed, with 95 % CIs, per model."""
    displays = displays or {}
    models = list(dict.fromkeys(e["model"] for e in entries))
    fig = new_figure((max(5.0, 1.8 * len(models) + 1.5), 3.6))
    ax = fig.subplots()
    colours = {"intact": "#4c72b0", "lesion_removed": "#c44e52", "background_removed": "#55a868"}
    for i, model in enumerate(models):
        rows = []
        for probe in ("lesion_removed", "background_removed"):
            e = find(entries, model, probe)
            if e is None:
                continue
            if not rows:
                rows.append(("intact", e.get("auc_intact"), e.get("auc_intact_ci_low"),
                             e.get("auc_intact_ci_high")))
            rows.append((probe, e.get("auc"), e.get("auc_ci_low"), e.get("auc_ci_high")))
        for j, (key, v, lo, hi) in enumerate(rows):
            if not is_number(v):
                continue
            x = i + (j - 1) * 0.22
            err = [[v - lo], [hi - v]] if is_number(lo) and is_number(hi) else None
            ax.errorbar([x], [v], yerr=err, fmt="o", color=colours[key], capsize=3,
                        label=key.replace("_", " ") if i == 0 else None)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels([displays.get(m, m) for m in models])
    ax.set_ylabel("ROC AUC [95 % CI]")
    ax.set_ylim(0.0, 1.02)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def build_examples_figure(examples: Sequence[tuple[str, int, list[Variant], np.ndarray]]):
    """A grid: one row per example image, its intact pixels then every perturbation."""
    ncol = 1 + max((len(v) for _, _, v, _ in examples), default=0)
    fig = new_figure((1.35 * ncol, 1.55 * len(examples)))
    axes = fig.subplots(len(examples), ncol, squeeze=False)
    for r, (image_id, label, variants, intact) in enumerate(examples):
        cells = [("intact", intact)] + [
            (probe_label({"probe": v.probe, "artifact": v.artifact}) +
             (f" #{v.placement + 1}" if v.probe == "artifact_inserted" else ""), v.image)
            for v in variants]
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(cells):
                ax.imshow(cells[c][1])
                title = cells[c][0] if c else f"{image_id}\n({'malignant' if label else 'benign'})"
                ax.set_title(title, fontsize=6)
    return fig


def write_figures(figdir: Path, df: pd.DataFrame, entries, samples, cache, size: int,
                  cfg: PerturbConfig, displays: dict[str, str]) -> None:
    """The three figures into ``figdir``; the examples: a malignant then a benign probed image."""
    save_figure(build_delta_figure(df, displays), figdir / "probe_delta.png")
    if any(e["probe"] in ("lesion_removed", "background_removed") for e in entries):
        save_figure(build_auc_figure(entries, displays), figdir / "probe_auc.png")
    examples = []
    one_cfg = dataclasses.replace(cfg, placements=1)
    probed = set(df["image_id"])
    for want in (1, 0):
        pool = [s for s in samples if s.label == want and s.image_id in probed]
        if not pool:
            continue
        items = [(s, cache.get(s, size)) for s in pool[:40]]
        s, it = next(((s, it) for s, it in items if it.get("artifacts") is not None
                      and it["artifacts"].any()), items[0])
        examples.append((s.image_id, s.label, perturb(it["image"], it["mask"],
                                                      it.get("artifacts"), s.image_id, one_cfg),
                         it["image"]))
    if examples:
        save_figure(build_examples_figure(examples), figdir / "probe_examples.png", dpi=110)
