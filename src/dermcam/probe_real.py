"""The real-pixel probes: pixels moved between real images rather than painted.

:func:`context_swap` pastes each lesion onto matched images' surroundings with and without
a labelled artifact; :func:`hot_spots` removes or transplants the off-lesion regions a
heatmap marks, against random regions of the same shapes. One summary entry per model
[x artifact].
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import zlib
from typing import Any

import numpy as np
import pandas as pd

from dermcam.config import NEGLIGIBLE_DELTA
from dermcam.data.artifact_labels import PREFIX
from dermcam.perturb import (
    DILATE_FRACTION,
    dilate_mask,
    hot_regions,
    inpaint,
    lesion_geometry,
    match_donors,
    random_shifts,
    shift,
    skin_ring,
    swap_canvas,
    swap_context,
    transplant,
)
from dermcam.probe_scoring import score_images
from dermcam.probe_stats import (
    crossed_diff_summary,
    crossed_side_means,
    diff_summary,
    mean_ci,
    rate,
)

log = logging.getLogger(__name__)


#: Donors per image and side (twice without the artifact, for the control): with 3 the null
#: swap's CI reached beyond +-0.02 on real images, with 10 it stays within (benchmarks/README.md).
SWAP_DONORS = 10
#: The sides of a swap: donors with the artifact, without it, other donors without (control).
WITH, WITHOUT, CONTROL = 0, 1, 2
SWAP_METHOD = ("each test lesion (its mask, exactly) pasted with a feathered edge onto the "
               "surroundings of other test images, whose own lesion is inpainted away; donors "
               "matched on lesion area, position and the colour of the skin around it")


def _swap_plans(flags: pd.DataFrame, geometry: np.ndarray, n: int, k: int, min_images: int
                ) -> tuple[dict[tuple[int, int], int], list[tuple]]:
    """Every artifact's plan ``(column, n with, n without, owners, donors, sides, where)``;
    ``where`` indexes ``pairs`` (``(image, donor) -> composite``), so a composite is made
    and scored once however many artifacts' comparisons it enters."""
    pairs: dict[tuple[int, int], int] = {}
    plans = []
    for col in (c for c in flags.columns if c.startswith(PREFIX)):
        has = flags[col].to_numpy() == 1
        known = flags[col].notna().to_numpy()
        with_x, without = np.flatnonzero(has & known), np.flatnonzero(~has & known)
        if min(len(with_x), len(without) // 2) < max(k, min_images // 2) or \
                len(with_x) < min_images:
            log.info("context swap: %s left out (%d images with it, %d without)", col,
                     len(with_x), len(without))
            continue
        owners, donors, sides, where = [], [], [], []
        for i in range(n):
            w = match_donors(geometry, i, with_x, k)
            wo = match_donors(geometry, i, without, 2 * k)
            a, b = wo[0::2], wo[1::2]  # alternate ranks: two equally matched halves
            for side, chosen in ((WITH, w), (WITHOUT, a), (CONTROL, b)):
                for j in chosen:
                    where.append(pairs.setdefault((i, int(j)), len(pairs)))
                    owners.append(i)
                    donors.append(int(j))
                    sides.append(side)
        plans.append((col, len(with_x), len(without), *(np.array(v, np.int64) for v in
                                                          (owners, donors, sides, where))))
    return pairs, plans


def _swap_entry(name: str, thr: float, plan: tuple, p_all: np.ndarray, labels: np.ndarray,
                k: int, composites: int, n_boot: int, seed: int) -> dict[str, Any]:
    """One model's :func:`context_swap` entry for one artifact's plan."""
    col, n_with, n_without, owners, donors, sides, where = plan
    means, w_image = crossed_side_means(owners, donors, sides, p_all[where], len(labels),
                                        n_boot, seed)
    before, after = means[WITHOUT][0], means[WITH][0]
    benign_before = np.isfinite(after) & np.isfinite(means[CONTROL][0]) & (before < thr)
    entry = {"model": name, "probe": "context_swap", "artifact": col[len(PREFIX):],
             "k": int(k), "images_with": int(n_with), "images_without": int(n_without),
             "threshold": thr, "method": SWAP_METHOD, "margin": NEGLIGIBLE_DELTA,
             "composites": composites,
             **crossed_diff_summary(means, w_image, labels, WITH, WITHOUT),
             **{k2: v for k2, v in crossed_diff_summary(means, w_image, labels, CONTROL, WITHOUT,
                                                        "control").items()
                if k2.startswith("control")},
             "flip_to_malignant": rate(int((benign_before & (after >= thr)).sum()),
                                       int(benign_before.sum())), "flip_to_benign": math.nan}
    return entry


def context_swap(models, images: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                 flags: pd.DataFrame, *, k: int = SWAP_DONORS, n_boot: int = 1000,
                 seed: int = 0, feather: float = DILATE_FRACTION, method: str = "telea",
                 batch_size: int = 64, device="cpu", min_images: int = 6,
                 progress=None) -> list[dict[str, Any]]:
    """Real-pixel reliance on each labelled artifact: every image's lesion on the
    surroundings of ``k`` matched donors with it and ``k`` without (``delta``, CI resampling
    images and donors), and two sets without it (``control``, the null). ``flags``: 0/1
    ``artifact_<name>`` columns; artifacts under ``min_images`` a side are left out."""
    geometry = np.array([(*lesion_geometry(m), *skin_ring(im, m, feather))
                         for im, m in zip(images, masks, strict=True)])

    @functools.cache
    def canvas(j: int) -> np.ndarray:
        return swap_canvas(images[j], masks[j], feather, method)

    pairs, plans = _swap_plans(flags, geometry, len(images), k, min_images)
    if not plans:
        return []
    unique = list(pairs)
    entries = []
    for step, (name, model, thr) in enumerate(models):
        p_all = np.empty(len(unique))
        for start in range(0, len(unique), 8 * batch_size):
            chunk = unique[start:start + 8 * batch_size]
            stack = np.stack([swap_context(images[i], masks[i], canvas(j), feather)
                              for i, j in chunk])
            p_all[start:start + len(chunk)] = score_images(model, stack, batch_size, device)
        entries += [_swap_entry(name, thr, plan, p_all, labels, k, len(unique), n_boot, seed)
                    for plan in plans]
        if progress:
            progress(step + 1, len(models))
    return entries


HOT_METHOD = ("the off-lesion regions holding the most heatmap mass (components of the top "
              "10 % of the map outside the dilated lesion, at most 8 % of the image) against "
              "random off-lesion regions of the same shapes: inpainted away, or their real "
              "pixels pasted into other images outside their lesions")


def _hot_composites(images: np.ndarray, masks: np.ndarray, maps: list, keep: list,
                    rng: np.random.Generator, k: int, feather: float, method: str
                    ) -> tuple[list, list, list, int]:
    """One model's composites: ``(stack, owner (i, j; -1 for a removal), kind, n_maps)``."""
    import cv2

    n = len(images)
    grow = np.ones((3, 3), np.uint8)
    stack, owner, kind = [], [], []
    n_maps = 0
    for i in range(n):
        h = maps[i]
        if h is None or not np.isfinite(h).all():
            continue
        n_maps += 1
        region = hot_regions(h, masks[i], feather)
        moves = random_shifts(region, keep[i], rng) if region.any() else None
        if moves is None:
            continue
        for tag, r in (("hot", region), ("random", shift(region, moves))):
            r = cv2.dilate(r.astype(np.uint8), grow).astype(bool) & keep[i]
            stack.append(inpaint(images[i], r, method))
            owner.append((i, -1))
            kind.append(f"removed_{tag}")
        fits = (j for j in rng.permutation(n) if j != i and not (region & ~keep[j]).any())
        for j in itertools.islice(fits, k):  # the first k that fit: no need to test all
            stack.append(transplant(images[i], images[j], region))
            stack.append(transplant(images[i], images[j], region, read=moves))
            owner += [(i, j), (i, j)]
            kind += ["pasted_hot", "pasted_random"]
    return stack, owner, kind, n_maps


def _hot_entries(p: np.ndarray, owner: list, kind: list, labels: np.ndarray,
                 flags: pd.DataFrame | None, common: dict[str, Any], n_boot: int, seed: int
                 ) -> list[dict[str, Any]]:
    """The ``hot_removed`` and ``hot_transplanted`` entries of one model's scores ``p``."""
    thr = common["threshold"]
    df = pd.DataFrame({"i": [o[0] for o in owner], "j": [o[1] for o in owner],
                       "kind": kind, "p": p})
    wide = df.pivot_table(index=["i", "j"], columns="kind", values="p")
    rem = wide.loc[wide.index.get_level_values("j") == -1]
    d_rem = (rem["removed_hot"] - rem["removed_random"]).groupby(level="i").mean()
    pas = wide.loc[wide.index.get_level_values("j") >= 0]
    d_pair = pas["pasted_hot"] - pas["pasted_random"]
    d_pas = d_pair.groupby(level="i").mean()
    benign_j = labels[pas.index.get_level_values("j")] == 0
    before = pas["pasted_random"].to_numpy() < thr
    flips = benign_j & before & (pas["pasted_hot"].to_numpy() >= thr)
    entries = []
    for probe, d in (("hot_removed", d_rem), ("hot_transplanted", d_pas)):
        idx = d.index.to_numpy()
        e = {**common, "probe": probe, "artifact": "",
             **diff_summary(d.to_numpy(), labels[idx], n_boot, seed)}
        e.update(n=int(len(d)), flip_to_benign=math.nan,
                 flip_to_malignant=rate(int(flips.sum()), int((benign_j & before).sum()))
                 if probe == "hot_transplanted" else math.nan)
        if probe == "hot_transplanted" and flags is not None:
            e["sources"] = _sources(flags, idx, d.to_numpy(), n_boot, seed)
        entries.append(e)
    return entries


def hot_spots(models, images: np.ndarray, masks: np.ndarray, labels: np.ndarray,
              heatmaps: dict[str, Any], flags: pd.DataFrame | None = None, *,
              k: int = SWAP_DONORS, n_boot: int = 1000, seed: int = 0,
              feather: float = DILATE_FRACTION, method: str = "telea", batch_size: int = 64,
              device="cpu") -> list[dict[str, Any]]:
    """Does a model use what its heatmap marks off the lesion? Label-free, real pixels: the
    marked region inpainted (``hot_removed``) or pasted into ``k`` other images
    (``hot_transplanted``), each minus a random region of the same shapes. ``heatmaps[name]``:
    an ``(H, W)`` map or None per image; with ``flags``, ``sources`` names the artifacts."""
    keep = [~dilate_mask(m, 2 * feather) for m in masks]
    entries = []
    for name, model, thr in models:
        rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))
        stack, owner, kind, n_maps = _hot_composites(images, masks, heatmaps[name], keep, rng,
                                                     k, feather, method)
        if not stack:
            log.info("hot spots: no off-lesion region marked by %s's heatmaps", name)
            continue
        p = score_images(model, np.stack(stack), batch_size, device)
        common = {"model": name, "k": int(k), "threshold": thr, "method": HOT_METHOD,
                  "margin": NEGLIGIBLE_DELTA, "images_with_maps": n_maps}
        entries += _hot_entries(p, owner, kind, labels, flags, common, n_boot, seed)
    return entries


def _sources(flags: pd.DataFrame, idx: np.ndarray, d: np.ndarray, n_boot: int,
             seed: int) -> dict[str, dict[str, Any]]:
    """Which labelled artifacts the transplanted regions come from (:func:`hot_spots`)."""
    out = {}
    for col in (c for c in flags.columns if c.startswith(PREFIX)):
        has = flags[col].to_numpy()[idx] == 1
        e = out[col[len(PREFIX):]] = {
            "share": float(has.mean()) if len(has) else math.nan,
            "share_all": float(np.nanmean(flags[col].to_numpy() == 1)), "n_with": int(has.sum())}
        for side, sel in (("with", has), ("without", ~has)):
            e.update(zip((f"delta_{side}", f"delta_{side}_ci_low", f"delta_{side}_ci_high"),
                         mean_ci(d[sel], n_boot, seed)))
    return out
