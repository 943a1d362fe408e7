"""The probe stage: does the model *use* what lies outside the lesion?

A heatmap says where gradients flow, not what a model relies on. The probes change
the image and watch the malignant probability (Bissoto et al. 2019; Winkler et al.
2019; Nauta et al. 2022):

``lesion_removed``
    the lesion (its mask dilated by a small margin) inpainted from the surrounding
    skin (OpenCV's Telea method by default, or Navier-Stokes). A model that still
    ranks malignant above benign images without the lesion uses context.
``background_removed``
    everything outside the dilated lesion replaced by one flat skin colour: the
    median of the image's own skin pixels (dark vignette corners, near-saturated
    pixels and known artifact pixels excluded).
``artifact_inserted``
    each of the synthetic generator's artifact painters (ruler, ink, colour patch,
    dark corners, hair) pasted outside the dilated lesion, ``placements`` seeded
    placements per image and artifact.
``artifact_removed``
    where the data carry per-pixel artifact maps (the synthetic benchmark), each
    artifact an image carries inpainted away.

Perturbations are made at the run's input size, once per image (not per model), and
every model scores them in batches. Pure functions here change only the pixels they
name (tested bit for bit); :func:`run_probe` is the stage over a run folder: resumable
per batch (``RUN_DIR/probe/batch_<start>.csv``), then ``probe.csv`` (one row per image x
model x probe x artifact x placement, with the intact and perturbed probability),
``probe_summary.json`` (``entries``: one per model x probe [x artifact]; with ``--by``
also ``subgroups``; where images carry artifact labels also ``artifact_presence``) and
figures. :func:`sentences` turns the entries into the plain sentences the CLI and the
report print. ``run_probe(data=OTHER)`` probes another data set's masked images into
``RUN/external/<name>/`` with the run's thresholds.

Caveats the outputs repeat: inpainting leaves traces a model may react to; a changed
prediction shows reliance, an unchanged one does not prove its absence.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermcam import run as runmod
from dermcam.audit_set import AuditSet, by_columns, by_names, check_by, image_columns
from dermcam.config import NEGLIGIBLE_DELTA
from dermcam.errors import DermcamError
from dermcam.formatting import is_number
from dermcam.heatmap_files import heatmap_batches, heatmap_dir, read_heatmap_batch
from dermcam.io import read_json, write_csv, write_json
from dermcam.perturb import (
    DILATE_FRACTION,
    INPAINT_METHODS,
    check_image,
    dilate_mask,
    hot_regions,
    inpaint,
    insert_artifact,
    lesion_geometry,
    match_donors,
    random_shifts,
    remove_artifact,
    remove_background,
    remove_lesion,
    shift,
    skin_ring,
    swap_canvas,
    swap_context,
    transplant,
)

log = logging.getLogger(__name__)

PROBES: tuple[str, ...] = ("lesion_removed", "background_removed", "artifact_inserted",
                           "artifact_removed")
"""Probe names, in the order they run and are reported."""

#: Probes that run only when asked for: the context swap needs per-image artifact labels.
OPTIONAL_PROBES: tuple[str, ...] = ("context_swap", "hot_spots")
PROBE_TITLES = {"lesion_removed": "lesion removed", "background_removed": "background removed",
                "artifact_inserted": "inserted", "artifact_removed": "removed",
                "context_swap": "context swapped", "hot_removed": "marked regions removed",
                "hot_transplanted": "marked regions transplanted"}
PROBE_DIR = runmod.PROBE_DIR  # file names: dermcam.run, the one place they are spelled
PROBE_CSV = runmod.PROBE_CSV
PROBE_SUMMARY = runmod.PROBE_SUMMARY
#: probe_summary.json's layout: 2 = ``{"entries", "subgroups", "artifact_presence"}`` (1 was
#: the bare list of entries, still read).
SUMMARY_SCHEMA = 2
CAVEAT = ("Inpainting leaves traces a model may react to; a changed prediction shows "
          "reliance, an unchanged one does not prove its absence.")
CSV_COLUMNS = ["image_id", "label", "model", "probe", "artifact", "placement", "prob_intact",
               "prob_perturbed", "delta", "threshold", "decision_intact", "decision_perturbed",
               "changed_share", "lesion_area"]


def _artifact_names() -> tuple[str, ...]:
    from dermcam.data.synth import ARTIFACTS

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
class ProbeConfig:
    """What :func:`perturb` makes for each image (recorded in the manifest)."""

    probes: tuple[str, ...] = PROBES
    artifacts: tuple[str, ...] = field(default_factory=_artifact_names)
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
        known = _artifact_names()
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


class _Clock:
    """Thread-safe accumulator of seconds spent in inpainting."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def add(self, s: float) -> None:
        with self._lock:
            self.seconds += s


def perturb(image: np.ndarray, mask: np.ndarray, artifacts: np.ndarray | None, image_id: str,
            cfg: ProbeConfig, clock: _Clock | None = None) -> list[Variant]:
    """Every perturbation ``cfg`` asks for of one image, in a fixed order.

    ``image (S, S, 3) uint8``, ``mask (S, S)`` lesion, ``artifacts (S, S) uint8`` codes
    (``index + 1`` into the generator's artifact list, 0 none) or None.
    """
    image = np.asarray(image)
    mask = np.asarray(mask).astype(bool)
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

    known = _artifact_names()
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


# ------------------------------------------------------------------ context swap (real pixels)

#: Donors per image and side (with the artifact; without it, twice, for the control).
SWAP_DONORS = 3
SWAP_METHOD = ("each test lesion (its mask, exactly) pasted with a feathered edge onto the "
               "surroundings of other test images, whose own lesion is inpainted away; donors "
               "matched on lesion area, position and the colour of the skin around it")


def _diff_summary(d: np.ndarray, labels: np.ndarray, n_boot: int, seed: int,
                  prefix: str = "delta") -> dict[str, Any]:
    """Mean paired difference with its bootstrap CI, over all images and per class, named as
    the other probes' entries are (``delta_mean``, ``delta_ci_low``, ``delta_benign``, ...)."""
    out = {}
    for tag, keep in (("", np.ones(len(d), bool)), ("_benign", labels == 0),
                      ("_malignant", labels == 1)):
        m, lo, hi = _mean_ci(d[keep], n_boot, seed)
        out.update({f"{prefix}{tag or '_mean'}": m, f"{prefix}{tag}_ci_low": lo,
                    f"{prefix}{tag}_ci_high": hi, f"n{tag}": int(keep.sum())})
    return out


def context_swap(models, images: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                 flags: pd.DataFrame, *, k: int = SWAP_DONORS, n_boot: int = 1000,
                 seed: int = 0, feather: float = DILATE_FRACTION, method: str = "telea",
                 batch_size: int = 64, device="cpu", min_images: int = 6,
                 progress=None) -> list[dict[str, Any]]:
    """Real-pixel reliance on each labelled artifact: every image's lesion on the
    surroundings of ``k`` matched images that carry the artifact and of ``k`` that do not
    (``delta``: mean P(malignant) with minus without, per image, bootstrap CI over images),
    and on two sets of ``k`` without it (``control``, the null). ``flags``: 0/1
    ``artifact_<name>`` columns aligned with ``images``; artifacts with fewer than
    ``min_images`` images on either side are left out. One entry per model and artifact.
    """
    from dermcam.data.artifact_labels import PREFIX

    geometry = np.array([(*lesion_geometry(m), *skin_ring(im, m, feather))
                         for im, m in zip(images, masks, strict=True)])
    canvases: dict[int, np.ndarray] = {}

    def canvas(j: int) -> np.ndarray:
        if j not in canvases:
            canvases[j] = swap_canvas(images[j], masks[j], feather, method)
        return canvases[j]

    # every artifact's plan first: a lesion on a donor's surroundings is one composite,
    # made and scored once however many artifacts' comparisons it enters
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
        owners, sides, where = [], [], []
        for i in range(len(images)):
            w = match_donors(geometry, i, with_x, k)
            wo = match_donors(geometry, i, without, 2 * k)
            a, b = wo[0::2], wo[1::2]  # alternate ranks: two equally matched halves
            for side, donors in (("with", w), ("without", a), ("control", b)):
                for j in donors:
                    where.append(pairs.setdefault((i, int(j)), len(pairs)))
                    owners.append(i)
                    sides.append(side)
        plans.append((col, len(with_x), len(without), np.array(owners), np.array(sides),
                      np.array(where, np.int64)))
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
        for col, n_with, n_without, owners, sides, where in plans:
            df = pd.DataFrame({"i": owners, "side": sides, "p": p_all[where]})
            mean = df.groupby(["i", "side"])["p"].mean().unstack()
            ok = mean[["with", "without", "control"]].notna().all(axis=1)
            mean = mean[ok]
            lab = labels[mean.index.to_numpy()]
            d = (mean["with"] - mean["without"]).to_numpy()
            c = (mean["control"] - mean["without"]).to_numpy()
            benign_before = mean["without"].to_numpy() < thr
            entry = {"model": name, "probe": "context_swap", "artifact": col[len(PREFIX):],
                     "k": int(k), "images_with": int(n_with), "images_without": int(n_without),
                     "threshold": thr, "method": SWAP_METHOD, "margin": NEGLIGIBLE_DELTA,
                     "composites": len(unique),
                     **_diff_summary(d, lab, n_boot, seed),
                     **{k2: v for k2, v in _diff_summary(c, lab, n_boot, seed,
                                                          "control").items()
                        if k2.startswith("control")},
                     "flip_to_malignant": _rate(int((benign_before
                                                     & (mean["with"].to_numpy() >= thr)).sum()),
                                                int(benign_before.sum()))}
            entry.update(n=int(len(d)), flip_to_benign=math.nan)
            entries.append(entry)
        if progress:
            progress(step + 1, len(models))
    return entries


#: The heatmap-guided probes: off-lesion regions a model's heatmap marks, inpainted away
#: (``hot_removed``) or moved into ``k`` other images (``hot_transplanted``), each against
#: random off-lesion regions of the same shapes.
HOT_PROBES = ("hot_removed", "hot_transplanted")
HOT_METHOD = ("the off-lesion regions holding the most heatmap mass (components of the top "
              "10 % of the map outside the dilated lesion, at most 8 % of the image) against "
              "random off-lesion regions of the same shapes: inpainted away, or their real "
              "pixels pasted into other images outside their lesions")


def hot_spots(models, images: np.ndarray, masks: np.ndarray, labels: np.ndarray,
              heatmaps: dict[str, Any], flags: pd.DataFrame | None = None, *,
              k: int = SWAP_DONORS, n_boot: int = 1000, seed: int = 0,
              feather: float = DILATE_FRACTION, method: str = "telea", batch_size: int = 64,
              device="cpu") -> list[dict[str, Any]]:
    """Does a model use what its heatmap marks off the lesion? Label-free, real pixels.

    For each model (``heatmaps[name]``: one ``(H, W)`` map per image, None or NaN where an
    image has none) and image whose map marks an off-lesion region
    (:func:`dermcam.perturb.hot_regions`): P(malignant) with that region inpainted minus
    with a random off-lesion region of the same shapes inpainted (``hot_removed``), and,
    in ``k`` other images whose dilated lesion it misses, with the region's pixels pasted
    in minus with the random region's pixels pasted at the same place
    (``hot_transplanted``, averaged over the ``k``). Bootstrap CIs over images. With
    ``flags`` (0/1 ``artifact_<name>``), each transplant entry says which artifacts the
    regions come from: ``sources[name]`` = share of the images with a region carrying it,
    its share among all images, and the mean change from images with and without it.
    """
    import cv2

    from dermcam.data.artifact_labels import PREFIX

    n = len(images)
    keep = [~dilate_mask(m, 2 * feather) for m in masks]
    grow = np.ones((3, 3), np.uint8)
    entries = []
    for name, model, thr in models:
        rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))
        stack, owner, kind = [], [], []
        n_maps = 0
        for i in range(n):
            h = heatmaps[name][i]
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
        if not stack:
            log.info("hot spots: no off-lesion region marked by %s's heatmaps", name)
            continue
        p = score_images(model, np.stack(stack), batch_size, device)
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
        common = {"model": name, "k": int(k), "threshold": thr, "method": HOT_METHOD,
                  "margin": NEGLIGIBLE_DELTA, "images_with_maps": n_maps}
        for probe, d in (("hot_removed", d_rem), ("hot_transplanted", d_pas)):
            idx = d.index.to_numpy()
            e = {**common, "probe": probe, "artifact": "",
                 **_diff_summary(d.to_numpy(), labels[idx], n_boot, seed)}
            e.update(n=int(len(d)), flip_to_benign=math.nan,
                     flip_to_malignant=_rate(int(flips.sum()), int((benign_j & before).sum()))
                     if probe == "hot_transplanted" else math.nan)
            if probe == "hot_transplanted" and flags is not None:
                e["sources"] = _sources(flags, idx, d.to_numpy(), PREFIX, n_boot, seed)
            entries.append(e)
    return entries


def _sources(flags: pd.DataFrame, idx: np.ndarray, d: np.ndarray, prefix: str, n_boot: int,
             seed: int) -> dict[str, dict[str, Any]]:
    """Which labelled artifacts the transplanted regions come from (:func:`hot_spots`)."""
    out = {}
    for col in (c for c in flags.columns if c.startswith(prefix)):
        has = flags[col].to_numpy()[idx] == 1
        m1, lo1, hi1 = _mean_ci(d[has], n_boot, seed)
        m0, lo0, hi0 = _mean_ci(d[~has], n_boot, seed)
        out[col[len(prefix):]] = {
            "share": float(has.mean()) if len(has) else math.nan,
            "share_all": float(np.nanmean(flags[col].to_numpy() == 1)),
            "n_with": int(has.sum()), "delta_with": m1, "delta_with_ci_low": lo1,
            "delta_with_ci_high": hi1, "delta_without": m0, "delta_without_ci_low": lo0,
            "delta_without_ci_high": hi0}
    return out


# ------------------------------------------------------------------ the stage


#: ``--precision`` of the probe's inference: float32 (as ``dermcam evaluate`` scores), or
#: bfloat16 autocast (``auto``: where the hardware computes it natively and it is faster
#: for the model at the run's input size, the rule training uses).
INFERENCE_PRECISIONS = ("32-true", "bf16-mixed", "auto")


def inference_precision(spec: str, name: str, device, image_size: int) -> str:
    """The precision model ``name`` is scored in: ``32-true`` or ``bf16-mixed``."""
    import torch

    from dermcam.device import resolve_precision
    from dermcam.inference import depthwise_net

    if spec not in INFERENCE_PRECISIONS:
        raise DermcamError(f"--precision must be one of {', '.join(INFERENCE_PRECISIONS)}, "
                           f"not {spec!r}")
    on_gpu = torch.device(device).type == "cuda"
    return resolve_precision(spec, "gpu" if on_gpu else "cpu", depthwise_net(name), image_size)


def _load_models(run: runmod.Run, names: Sequence[str], device,
                 precisions: dict[str, str] | None = None) -> list[tuple[str, Any, float]]:
    """``(name, model, threshold)`` per model, each scored in its resolved precision
    (``precisions``: :func:`inference_precision` per model; float32 where absent)."""
    import torch

    from dermcam.inference import Bf16Inference, folded_for_inference, use_channels_last

    models = []
    for name in names:
        model, _info, payload = run.load_model(name)
        model.to(device)
        if (precisions or {}).get(name) == "bf16-mixed":
            model = Bf16Inference(model, torch.device(device).type)
        else:  # BatchNorm folded: the same probabilities up to rounding, faster
            model = folded_for_inference(model, channels_last=use_channels_last(name))
        models.append((name, model, float(payload["threshold"])))
    return models


def score_images(model, images: np.ndarray, batch_size: int = 64, device="cpu") -> np.ndarray:
    """Malignant probability of ``(N, S, S, 3) uint8`` images -> ``(N,)`` float64."""
    from dermcam.inference import predict_proba

    return predict_proba(model, images, batch_size=batch_size, device=device).astype(np.float64)


def _batch_rows(models, chunk, items, cfg: ProbeConfig, batch_size: int, pool, clock,
                timing: dict[str, float], device) -> pd.DataFrame:
    """Perturb one batch of images (once) and score every variant with every model."""
    t0 = time.perf_counter()
    jobs = [(s.image_id, it["image"], it["mask"], it.get("artifacts")) for s, it in
            zip(chunk, items)]
    variants = list(pool.map(lambda j: perturb(j[1], j[2], j[3], j[0], cfg, clock), jobs))
    timing["perturb_seconds"] += time.perf_counter() - t0
    intact = np.stack([j[1] for j in jobs])
    stack = np.stack([v.image for vs in variants for v in vs]) if any(variants) else intact[:0]
    owner = np.repeat(np.arange(len(jobs)), [len(vs) for vs in variants])
    flat = [v for vs in variants for v in vs]
    areas = np.array([float(np.asarray(j[2]).astype(bool).mean()) for j in jobs])
    labels = np.array([s.label for s in chunk], np.int64)
    frames = []
    for name, model, thr in models:
        t1 = time.perf_counter()
        p0 = score_images(model, intact, batch_size, device)
        p1 = score_images(model, stack, batch_size, device) if len(stack) else np.zeros(0)
        timing["predict_seconds"] += time.perf_counter() - t1
        timing["images_scored"] += len(intact) + len(stack)
        frames.append(pd.DataFrame({
            "image_id": [jobs[k][0] for k in owner], "label": labels[owner], "model": name,
            "probe": [v.probe for v in flat], "artifact": [v.artifact for v in flat],
            "placement": [v.placement for v in flat], "prob_intact": p0[owner],
            "prob_perturbed": p1, "delta": p1 - p0[owner], "threshold": thr,
            "decision_intact": (p0[owner] >= thr).astype(int),
            "decision_perturbed": (p1 >= thr).astype(int),
            "changed_share": [v.changed_share for v in flat], "lesion_area": areas[owner]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CSV_COLUMNS)


def _batch_path(out: runmod.Outputs, start: int) -> Path:
    return out.probe_batches / f"batch_{start:06d}.csv"


def read_rows(path: str | Path) -> pd.DataFrame:
    """A ``probe.csv`` (or one batch of it) as a DataFrame; ``artifact`` is "" where none."""
    try:
        df = pd.read_csv(path, dtype={"image_id": str, "model": str, "probe": str,
                                      "artifact": str}, keep_default_na=False, na_values=[""])
    except Exception as exc:
        raise DermcamError(f"unreadable probe file ({type(exc).__name__}); delete it and "
                           "re-run 'dermcam probe'", path) from exc
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise DermcamError(f"probe file lacks columns {', '.join(missing)}; delete it and "
                           "re-run 'dermcam probe'", path)
    return _normalise(df)


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(artifact=df["artifact"].fillna("").astype(str))


def run_probe(run_dir: runmod.Run | str | Path, probes: Sequence[str] = PROBES,
              artifacts: Sequence[str] | None = None, placements: int = 3,
              seed: int | None = None, limit: int | None = None, batch_size: int = 32,
              inpaint_method: str = "telea", dilate: float = DILATE_FRACTION,
              n_boot: int = 1000, progress=None, figures: bool = True, workers: int | None = None,
              device: str = "cpu", data: str | Path | None = None, name: str | None = None,
              by=(), min_group: int | None = None,
              artifact_labels: str | Path | None = None,
              precision: str = "32-true") -> list[dict[str, Any]]:
    """Run the probes on every trained model and every masked test image; write the outputs.

    Resumes per batch of ``batch_size`` images when the same configuration ran before
    (another configuration starts over). Returns the ``probe_summary.json`` entries
    (:func:`read_summary_object` reads the whole summary).

    ``data``: probe another data set's masked images instead (those
    :func:`dermcam.audit_set.external_samples` picks) into ``RUN/external/<name>/``, stage
    ``external:<name>/probe``, at the run's thresholds; ``artifact_labels``: a label file
    joined to that set. ``by``: columns (metadata, ``ita``) for the summary by subgroup,
    groups under ``min_group`` images too few to estimate. Where the images carry artifact
    flags (``artifact_<name>`` metadata: the synthetic benchmark's, or joined labels), the
    lesion and background removal are also split by each artifact's presence.
    ``precision``: ``32-true`` scores in float32, as ``dermcam evaluate`` does;
    ``bf16-mixed`` under bfloat16 autocast (faster where bfloat16 is native, probabilities
    about 1e-2 away); ``auto`` per model, by the rule ``--precision auto`` trains with.
    """
    import shutil

    run = runmod.Run.of(run_dir, require="train")
    run_dir = run.dir
    seed = run.seed if seed is None else int(seed)
    cfg = ProbeConfig(probes=tuple(probes),
                      artifacts=tuple(artifacts) if artifacts else _artifact_names(),
                      placements=int(placements), seed=seed, dilate=float(dilate),
                      inpaint=inpaint_method)
    names = run.trained_models
    if not names:
        raise DermcamError("no trained model in this run; finish 'dermcam train' first", run.dir)
    t0 = time.perf_counter()
    audit = (AuditSet.external_set(run, data, "probe", name=name, artifacts=artifact_labels,
                                   limit=limit, what="the probes", warm=True)
             if data is not None else AuditSet.test_split(run, "probe", limit=limit))
    ds, explain_stage = audit.ds, audit.key("explain")
    if by:
        check_by(ds, by)
    if "context_swap" in cfg.probes and artifact_flags(ds, audit.samples) is None:
        raise DermcamError("the context swap needs per-image artifact labels: pass "
                           "--artifact-labels FILE (e.g. isic_bias.csv) or use a data set "
                           "with artifact_<name> columns", ds.root)
    if "hot_spots" in cfg.probes and \
            run.stage_entry(explain_stage).get("status") != runmod.STATUS_COMPLETE:
        raise DermcamError("the heatmap-guided probe (hot_spots) needs the models' heatmaps: "
                           "run 'dermcam explain' on these images first", run.dir)
    prev = run.stage_entry(audit.stage)
    precisions = {m: inference_precision(precision, m, device, run.image_size) for m in names}
    if prev.get("config_key") != cfg.key() or prev.get("limit") != limit or \
            prev.get("batch_size") != batch_size or \
            prev.get("precision", dict.fromkeys(names, "32-true")) != precisions:
        shutil.rmtree(audit.out.probe_batches, ignore_errors=True)
    # a failure (Ctrl-C too) is recorded; the batches on disk resume next time
    with run.stage(audit.stage, config=asdict(cfg), config_key=cfg.key(), limit=limit,
                   batch_size=batch_size, precision=precisions, **audit.where) as record:
        entries = _probe_stage(run, audit, names, cfg, seed, t0, record,
                               batch_size=batch_size, n_boot=n_boot, progress=progress,
                               figures=figures, workers=workers, device=device, by=by,
                               min_group=min_group, precisions=precisions)
    return entries


def _probe_stage(run: runmod.Run, audit: AuditSet, names, cfg, seed: int, t0: float,
                 record: dict[str, Any], *, batch_size: int, n_boot: int, progress,
                 figures: bool, workers, device, by, min_group,
                 precisions: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The probe stage's work on ``audit`` once its inputs are checked: batches, summary,
    figures; ``record`` receives what the manifest keeps of it."""
    out, ds, cache, size = audit.out, audit.ds, audit.cache, audit.size
    explain_stage = audit.key("explain")
    samples, skipped = [], []
    for s in audit.samples:
        why = "no lesion mask" if s.mask_path is None else None
        (skipped.append({"image_id": s.image_id, "reason": why}) if why else samples.append(s))
    models = _load_models(run, names, device, precisions)
    df, clock, timing = _probe_batches(out, samples, names, models, cfg, cache, size,
                                       skipped, batch_size, progress, workers, device)
    only_swap = not set(cfg.probes) - set(OPTIONAL_PROBES)
    probed = [s for s in samples if skip_reason(cache.get(s, size)["mask"]) is None] \
        if only_swap else [s for s in samples if s.image_id in set(df["image_id"])]
    if not probed:
        raise DermcamError("no test image could be probed (the probes need lesion masks): "
                           f"{len(skipped)} skipped", ds.root)
    write_csv(out.probe_csv, df)
    attention = _attention_for_tracking(out, run.stage_entry(explain_stage))
    entries = [] if df.empty else summarise(df, cfg, n_boot=n_boot, seed=seed,
                                            attention=attention)
    summary: dict[str, Any] = {"schema_version": SUMMARY_SCHEMA, "entries": entries}
    if by:
        summary["subgroups"] = probe_subgroups(
            df, image_columns(ds, probed, cache, size, by), by, n_boot=n_boot, seed=seed,
            min_group=min_group)
    flags = artifact_flags(ds, probed)
    if flags is not None:
        summary["artifact_presence"] = artifact_presence(df, flags, n_boot=n_boot, seed=seed)
    real = [p for p in ("context_swap", "hot_spots") if p in cfg.probes]
    if real:
        items = [cache.get(s, size) for s in probed]
        images = np.stack([it["image"] for it in items])
        masks = np.stack([np.asarray(it["mask"], bool) for it in items])
        labels = np.array([s.label for s in probed])
        common = dict(n_boot=n_boot, seed=seed, feather=cfg.dilate, method=cfg.inpaint,
                      batch_size=batch_size * 2, device=device)
    for p in real:
        t1 = time.perf_counter()
        if p == "context_swap" and flags is not None:
            entries += context_swap(models, images, masks, labels, flags, **common)
        elif p == "hot_spots":
            maps = chosen_heatmaps(out.root, run.stage_entry(explain_stage), names, probed)
            entries += hot_spots(models, images, masks, labels, maps, flags, **common)
        record[f"{p}_seconds"] = round(time.perf_counter() - t1, 2)
    if audit.external:
        summary["external"] = {
            **audit.about(), "thresholds": "each model's threshold chosen on the "
                                           "training data's validation split",
            "trained_on": run.data.get("name")}
    write_json(out.probe_summary, summary)
    if figures and not df.empty:
        _figures(run, df, entries, samples, cache, size, cfg, out)
    n_rows = int(len(df) / max(1, len(names)))
    n_images = len(probed)
    scored = timing["images_scored"]
    timing.update({
        "inpaint_seconds": round(clock.seconds, 3),
        "perturb_seconds": round(timing["perturb_seconds"], 3),
        "predict_seconds": round(timing["predict_seconds"], 3),
        "scored_images_per_second": round(scored / timing["predict_seconds"], 1)
        if timing["predict_seconds"] > 0 else None,
        "probed_images_per_second": round(n_images / (time.perf_counter() - t0), 2),
        "wall_seconds": round(time.perf_counter() - t0, 2)})
    record.update(n_images=n_images, rows_per_model=n_rows, skipped=skipped,
                  inpaint=f"OpenCV {cfg.inpaint}", timing=timing, by=list(by_columns(by)),
                  artifact_presence=sorted({r["artifact"] for r in
                                            summary.get("artifact_presence", [])}))
    if skipped:
        log.warning("%d test image(s) skipped by the probes, e.g. %s: %s", len(skipped),
                    skipped[0]["image_id"], skipped[0]["reason"])
    return entries


def _probe_batches(out: runmod.Outputs, samples, names, models, cfg, cache, size: int,
                   skipped: list, batch_size: int, progress, workers, device):
    """``(probe rows, inpainting clock, timing)``: every batch of ``samples`` perturbed once
    and scored by every model, or read back from ``probe/`` where an earlier run of the same
    configuration wrote it. Images that cannot be probed are appended to ``skipped``."""
    clock = _Clock()
    timing = {"perturb_seconds": 0.0, "predict_seconds": 0.0, "images_scored": 0}
    starts = list(range(0, len(samples), batch_size))
    frames = []
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for k, start in enumerate(starts):
            path = _batch_path(out, start)
            chunk = samples[start:start + batch_size]
            if path.exists():
                rows = read_rows(path)
                ids = {s.image_id for s in chunk}
                if len(rows) and set(rows["image_id"]) <= ids and \
                        set(rows["model"]) == set(names):
                    frames.append(rows)
                    for s in chunk:  # images this batch skipped when it was computed
                        if s.image_id not in set(rows["image_id"]):
                            why = skip_reason(cache.get(s, size)["mask"])
                            skipped.append({"image_id": s.image_id, "reason": why})
                    if progress:
                        progress(k + 1, len(starts))
                    continue
            items = [cache.get(s, size) for s in chunk]
            keep = []
            for s, it in zip(chunk, items):
                why = skip_reason(it["mask"])
                if why:
                    skipped.append({"image_id": s.image_id, "reason": why})
                else:
                    keep.append((s, it))
            rows = _batch_rows(models, [s for s, _ in keep], [it for _, it in keep], cfg,
                               batch_size * 2, pool, clock, timing, device) if keep else \
                pd.DataFrame(columns=CSV_COLUMNS)
            write_csv(path, rows[CSV_COLUMNS])
            frames.append(rows)
            if progress:
                progress(k + 1, len(starts))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CSV_COLUMNS)
    df = df[CSV_COLUMNS].sort_values(["model", "image_id", "probe", "artifact", "placement"],
                                     kind="stable").reset_index(drop=True)
    return df, clock, timing


def chosen_heatmaps(root: Path, st: dict[str, Any], names, samples) -> dict[str, list]:
    """``{model: [heatmap or None per sample]}`` at each model's chosen method and layer
    (``st``: the explain stage's manifest entry)."""
    out: dict[str, list] = {m: [None] * len(samples) for m in names}
    where = {s.image_id: k for k, s in enumerate(samples)}
    for sel in st.get("layers") or []:
        if sel["model"] not in out:
            continue
        folder = heatmap_dir(root, sel["model"], sel["method"], sel["layer"])
        for f in heatmap_batches(folder):
            b = read_heatmap_batch(f)
            for i, h in zip(b["ids"], b["heatmaps"], strict=True):
                if str(i) in where:
                    out[sel["model"]][where[str(i)]] = h.astype(np.float32)
    return out


def _attention_for_tracking(out: runmod.Outputs, st: dict | None) -> pd.DataFrame | None:
    """attention.csv rows of ``out`` at each model's chosen method and layer (``st``:
    the explain stage's manifest entry; None without a complete explain)."""
    path = out.attention
    st = st or {}
    if not path.exists() or st.get("status") != runmod.STATUS_COMPLETE:
        return None
    att = pd.read_csv(path, dtype={"image_id": str, "model": str, "method": str, "layer": str},
                      keep_default_na=False, na_values=[""])
    keep = []
    for sel in st.get("layers") or []:
        m = (att["model"] == sel["model"]) & (att["method"] == sel["method"])
        if "layer" in att.columns:
            m &= att["layer"] == sel["layer"]
        if m.any() and sel["model"] not in {k["model"].iloc[0] for k in keep}:
            keep.append(att[m].assign(cam=f"{sel['method']}@{sel['layer']}"))
    return pd.concat(keep, ignore_index=True) if keep else None


# ------------------------------------------------------------------ statistics


def _mean_ci(v: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    from dermcam.stats import bootstrap_indices, percentile_interval

    v = np.asarray(v, np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    if v.size < 2:
        return float(v.mean()), math.nan, math.nan
    idx = bootstrap_indices(v, n_boot, seed, stratified=False)
    lo, hi = percentile_interval(v[idx].mean(1), what="mean probability change")
    return float(v.mean()), lo, hi


def _rate(num: int, den: int) -> float:
    return num / den if den else math.nan


def _spearman_rows(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of ``(B, n)`` arrays, ``(B,)``: the Pearson
    correlation of average ranks, as scipy's ``spearmanr`` computes it, for all rows at
    once; NaN for a row where either side is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(xs, axis=1), rankdata(ys, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = (rx * ry).sum(axis=1) / den
    return np.where(den > 0, np.clip(rho, -1.0, 1.0), np.nan)


def _spearman_ci(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int
                 ) -> tuple[float, float, float, int]:
    from scipy.stats import spearmanr

    from dermcam.stats import bootstrap_indices, percentile_interval

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, math.nan, int(x.size)
    rho = float(spearmanr(x, y).statistic)
    idx = bootstrap_indices(x, n_boot, seed, stratified=False)
    lo, hi = percentile_interval(_spearman_rows(x[idx], y[idx]), what="Spearman rho")
    return rho, lo, hi, int(x.size)


def summarise(df: pd.DataFrame, cfg: ProbeConfig | None = None, n_boot: int = 1000,
              seed: int = 0, attention: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """``probe.csv`` rows -> one entry per model x probe [x artifact].

    Per entry: ``n`` images; ``delta_mean`` with a 95 % bootstrap CI over images (each
    image's change averaged over its placements first, so placements are not counted as
    independent images), the same per class (``delta_benign``, ``delta_malignant``);
    ``flip_to_malignant`` = share of (image, placement) rows decided benign intact and
    malignant perturbed among those decided benign intact (``flip_to_benign`` likewise).
    For lesion and background removal also ``auc``/``ap`` with stratified bootstrap CIs,
    ``auc_intact``/``ap_intact`` on the same images, the DeLong p of the AUC change, and,
    when ``attention`` (attention.csv at the chosen CAM) is given, Spearman's rho between
    each image's leakage (and excess leakage) and the size of its probability change
    ``|delta|`` with a bootstrap CI.
    """
    entries: list[dict[str, Any]] = []
    cfg = cfg or ProbeConfig()
    df = _normalise(df)
    for (model, probe, artifact), g in df.groupby(["model", "probe", "artifact"], sort=False,
                                                  dropna=False):
        per_img = g.groupby("image_id", sort=True).agg(
            delta=("delta", "mean"), label=("label", "first"),
            prob_intact=("prob_intact", "first"), prob_perturbed=("prob_perturbed", "mean"))
        d = per_img["delta"].to_numpy(np.float64)
        mean, lo, hi = _mean_ci(d, n_boot, seed)
        ben, mal = g[g["decision_intact"] == 0], g[g["decision_intact"] == 1]
        e: dict[str, Any] = {
            "model": model, "probe": probe, "artifact": artifact or None,
            "n": int(len(per_img)), "placements": int(g["placement"].nunique()),
            "delta_mean": mean, "delta_ci_low": lo, "delta_ci_high": hi,
            "flip_to_malignant": _rate(int((ben["decision_perturbed"] == 1).sum()), len(ben)),
            "flip_to_benign": _rate(int((mal["decision_perturbed"] == 0).sum()), len(mal)),
            "n_decided_benign": int(len(ben)), "n_decided_malignant": int(len(mal)),
            "changed_share": float(g["changed_share"].mean()),
        }
        for cls, lab in (("benign", 0), ("malignant", 1)):
            v = per_img.loc[per_img["label"] == lab, "delta"].to_numpy(np.float64)
            m_, l_, h_ = _mean_ci(v, n_boot, seed)
            e.update({f"delta_{cls}": m_, f"delta_{cls}_ci_low": l_,
                      f"delta_{cls}_ci_high": h_, f"n_{cls}": int(v.size)})
        if probe in ("lesion_removed", "background_removed"):
            y = per_img["label"].to_numpy(np.int64)
            e.update(_auc_fast(y, per_img["prob_intact"].to_numpy(np.float64),
                               per_img["prob_perturbed"].to_numpy(np.float64), n_boot, seed))
            e["method"] = (f"OpenCV inpainting ({cfg.inpaint}) of the lesion dilated by "
                           f"{cfg.dilate:.0%} of the side" if probe == "lesion_removed" else
                           "pixels outside the dilated lesion set to the median skin colour")
            if attention is not None:
                e.update(_tracking(attention, model, per_img, n_boot, seed))
        elif probe == "artifact_inserted":
            e["method"] = (f"the synthetic generator's {artifact} painter, outside the dilated "
                           f"lesion, {e['placements']} seeded placement(s) per image")
        else:
            e["method"] = f"OpenCV inpainting ({cfg.inpaint}) of the {artifact} pixels"
        entries.append(e)
    order = {p: i for i, p in enumerate(PROBES)}
    entries.sort(key=lambda e: (str(e["model"]), order.get(e["probe"], 99), e["artifact"] or ""))
    return entries


def per_image(df: pd.DataFrame) -> pd.DataFrame:
    """``probe.csv`` rows -> one row per model x probe x artifact x image: ``delta`` (its
    placements averaged), ``flip_rate`` (share of its placements whose decision at the
    run's threshold changed, either way; 0 or 1 with one placement), ``label``,
    ``prob_intact``, ``prob_perturbed`` (mean) and ``placements``."""
    d = _normalise(df)
    d = d.assign(flipped=(d["decision_perturbed"] != d["decision_intact"]).astype(float))
    return d.groupby(["model", "probe", "artifact", "image_id"], sort=True).agg(
        delta=("delta", "mean"), flip_rate=("flipped", "mean"), label=("label", "first"),
        prob_intact=("prob_intact", "first"), prob_perturbed=("prob_perturbed", "mean"),
        placements=("placement", "nunique")).reset_index()


#: The per-image scores :func:`probe_subgroups` summarises per group, and their titles.
SUBGROUP_TITLES = {"delta": "Δ P(malignant)", "flip_rate": "flip rate"}


def probe_subgroups(df: pd.DataFrame, columns: pd.DataFrame, by, n_boot: int = 1000,
                    seed: int = 0, min_group: int | None = None) -> dict[str, Any]:
    """``probe_summary.json["subgroups"]``: per ``--by`` column, model x probe [x artifact]
    and group, the mean change in malignant probability with a paired 95 % CI (bootstrap
    over images of each image's perturbed minus intact probability) and the flip rate
    (Wilson CI where each image has one decision, else a bootstrap over images), n
    images, and Kruskal-Wallis across groups (Holm over columns and entries);
    :func:`dermcam.subgroups.subgroup_summary_analyses`. ``columns``: ``image_id`` and
    the ``by`` columns (:func:`dermcam.audit_set.image_columns`)."""
    from dermcam.subgroups import MIN_GROUP, subgroup_summary_analyses

    table = per_image(df).merge(columns, on="image_id", how="left")
    out = subgroup_summary_analyses(
        table, by_names(by), list(SUBGROUP_TITLES), ("model", "probe", "artifact"),
        n_boot=n_boot, seed=seed, min_group=MIN_GROUP if min_group is None else int(min_group),
        what="models x probes")
    order = {p: i for i, p in enumerate(PROBES)}
    for analysis in out.values():  # in the order the probes run, as the entries
        analysis["entries"].sort(key=lambda e: (str(e["model"]), order.get(e["probe"], 99),
                                                e["artifact"] or ""))
    return out


def artifact_flags(ds, samples) -> pd.DataFrame | None:
    """``image_id`` and the 0/1 ``artifact_<name>`` metadata of ``samples`` (the synthetic
    benchmark's ``metadata.csv`` or joined artifact labels), or None when there are none."""
    from dermcam.data.artifact_labels import PREFIX
    from dermcam.data.metadata import metadata_table

    meta = metadata_table(ds)
    cols = [c for c in (meta.columns if meta is not None else []) if c.startswith(PREFIX)]
    if not cols:
        return None
    ids = [s.image_id for s in samples]
    out = meta.reindex(ids)[cols].apply(pd.to_numeric, errors="coerce").astype("float64")
    out = out.loc[:, out.notna().any()]
    return None if out.empty or not len(out.columns) else \
        out.rename_axis("image_id").reset_index()


def _auc_fast(y: np.ndarray, p_intact: np.ndarray, p_pert: np.ndarray, n_boot: int,
              seed: int) -> dict[str, Any]:
    """ROC AUC and AP of the perturbed and intact probabilities with stratified percentile
    bootstrap CIs (the same resamples for all four, vectorised as evaluate does, matching
    scikit-learn), and the DeLong p of the AUC change; NaN with ``auc_reason`` when the
    images hold one class (or none)."""
    from dermcam.evaluation import batch_ranking_metrics
    from dermcam.stats import delong_test, percentile_interval, resampling_weights

    y = np.asarray(y, np.int64)
    if np.unique(y).size < 2:
        return {**{f"{k}{s}{c}": math.nan for k in ("auc", "ap") for s in ("", "_intact")
                   for c in ("", "_ci_low", "_ci_high")},
                "auc_reason": "no images" if y.size == 0 else "the images are of one class"}
    w = np.vstack([np.ones(y.size), resampling_weights(y, n_boot, seed, stratified=True)])
    out: dict[str, Any] = {}
    for suffix, p in (("", p_pert), ("_intact", p_intact)):
        m = batch_ranking_metrics(w, y, np.asarray(p, np.float64), 10)
        for key, name in (("auc", "roc_auc"), ("ap", "average_precision")):
            lo, hi = percentile_interval(m[name][1:], what=f"{key}{suffix}")
            out.update({f"{key}{suffix}": float(m[name][0]), f"{key}{suffix}_ci_low": lo,
                        f"{key}{suffix}_ci_high": hi})
    out["auc_diff_p"] = delong_test(y, p_intact, p_pert).get("p")
    return out


def artifact_presence(df: pd.DataFrame, flags: pd.DataFrame, n_boot: int = 1000,
                      seed: int = 0) -> list[dict[str, Any]]:
    """Lesion and background removal on images with versus without each artifact.

    ``flags``: ``image_id`` and 0/1 ``artifact_<name>`` columns (:func:`artifact_flags`;
    an image whose flag is missing is on neither side). One record per model x removal
    probe x artifact: ``with`` and ``without`` each hold ``n``, ``n_malignant``, the mean
    change with its 95 % bootstrap CI (``delta_mean``, ``delta_ci_low``,
    ``delta_ci_high``) and the ROC AUC and AP on those images, perturbed and intact, with
    CIs (:func:`_auc_fast`); ``delta_diff`` (with - without) and ``delta_p``
    (two-sided Mann-Whitney, :func:`dermcam.data.artifact_labels.split_by_presence`),
    Holm-adjusted over all records (``delta_p_adjusted``).
    """
    from dermcam.data.artifact_labels import PREFIX, split_by_presence

    cols = [c for c in flags.columns if c.startswith(PREFIX)]
    pi = per_image(df)
    pi = pi[pi["probe"].isin(("lesion_removed", "background_removed"))]
    flags = flags.assign(**{c: pd.to_numeric(flags[c], errors="coerce").astype("float64")
                            for c in cols})  # a missing flag (NA) becomes NaN
    pi = pi.merge(flags[["image_id", *cols]], on="image_id", how="left")
    rows: list[dict[str, Any]] = []
    for (model, probe), g in pi.groupby(["model", "probe"], sort=True):
        tests = {r["artifact"]: r for r in split_by_presence(g, cols, ("delta",))}
        for col in cols:
            art = col.removeprefix(PREFIX)
            flag = g[col]
            row: dict[str, Any] = {"model": model, "probe": probe, "artifact": art,
                                   "delta_diff": tests[art]["diff"], "delta_p": tests[art]["p"],
                                   "test": "Mann-Whitney of the per-image change, with vs "
                                           "without"}
            for side, sel in (("with", flag == 1), ("without", flag == 0)):
                h = g[sel.to_numpy()]
                y = h["label"].to_numpy(np.int64)
                mean, lo, hi = _mean_ci(h["delta"].to_numpy(np.float64), n_boot, seed)
                block: dict[str, Any] = {"n": int(len(h)), "n_malignant": int(y.sum()),
                                         "delta_mean": mean, "delta_ci_low": lo,
                                         "delta_ci_high": hi}
                block.update(_auc_fast(y, h["prob_intact"].to_numpy(np.float64),
                                       h["prob_perturbed"].to_numpy(np.float64), n_boot, seed))
                row[side] = block
            rows.append(row)
    order = {p: i for i, p in enumerate(PROBES)}
    rows.sort(key=lambda r: (str(r["model"]), order.get(r["probe"], 99), r["artifact"]))
    from dermcam.stats import adjust_pvalues

    adj = adjust_pvalues([r["delta_p"] for r in rows], "holm") if rows else []
    for r, pa in zip(rows, adj):
        r.update(delta_p_adjusted=float(pa), adjust_method="Holm",
                 family="artifact presence: models x removal probes x artifacts")
    return rows


def _tracking(att: pd.DataFrame, model: str, per_img: pd.DataFrame, n_boot: int, seed: int
              ) -> dict[str, Any]:
    a = att[att["model"] == model].drop_duplicates("image_id").set_index("image_id")
    ids = per_img.index.intersection(a.index)
    if len(ids) == 0:
        return {}
    mag = np.abs(per_img.loc[ids, "delta"].to_numpy(np.float64))
    out: dict[str, Any] = {"cam": str(a["cam"].iloc[0])}
    for metric in ("leakage", "excess_leakage"):
        if metric not in a.columns:
            continue
        x = a.loc[ids, metric].to_numpy(np.float64)
        rho, lo, hi, n = _spearman_ci(x, mag, n_boot, seed)
        out.update({f"{metric}_rho": rho, f"{metric}_rho_ci_low": lo,
                    f"{metric}_rho_ci_high": hi, "rho_n": n})
    return out


def read_summary_object(folder: str | Path) -> dict[str, Any] | None:
    """The whole ``probe_summary.json`` in ``folder`` (a run or an external set's folder):
    ``{"entries", ...}``; a summary written before schema 2 (a bare list of entries) is
    read as its entries. None when there is none."""
    path = Path(folder) / PROBE_SUMMARY
    if not path.exists():
        return None
    obj = read_json(path)
    if isinstance(obj, list):
        return {"schema_version": 1, "entries": obj}
    if not isinstance(obj, dict) or not isinstance(obj.get("entries"), list):
        raise DermcamError("probe_summary.json holds no list of entries", path)
    return obj


def read_summary(run_dir: str | Path) -> list[dict[str, Any]] | None:
    """The entries of ``probe_summary.json`` in ``run_dir`` (None when there is none)."""
    obj = read_summary_object(run_dir)
    return None if obj is None else obj["entries"]


def find(entries: Sequence[dict[str, Any]], model: str, probe: str,
         artifact: str | None = None) -> dict[str, Any] | None:
    for e in entries:
        if e["model"] == model and e["probe"] == probe and (e.get("artifact") or None) == artifact:
            return e
    return None


# ------------------------------------------------------------------ figures


def _label(e: dict[str, Any]) -> str:
    if e["probe"] in ("artifact_inserted", "artifact_removed"):
        return f"{e['artifact']} {PROBE_TITLES[e['probe']]}"
    return PROBE_TITLES[e["probe"]]


def build_delta_figure(df: pd.DataFrame, displays: dict[str, str] | None = None):
    """Per model, the per-image change in malignant probability under each probe (box plots)."""
    from dermcam.plots import new_figure

    displays = displays or {}
    df = _normalise(df)
    models = list(dict.fromkeys(df["model"]))
    fig = new_figure((max(6.0, 0.55 * df.groupby(["probe", "artifact"]).ngroups + 2),
                       2.6 * len(models)))
    axes = fig.subplots(len(models), 1, squeeze=False)[:, 0]
    order = {p: i for i, p in enumerate(PROBES)}
    for ax, model in zip(axes, models):
        g = df[df["model"] == model]
        keys = sorted(g.groupby(["probe", "artifact"]).groups,
                      key=lambda k: (order.get(k[0], 99), k[1]))
        data = [g[(g["probe"] == p) & (g["artifact"] == a)].groupby("image_id")["delta"].mean()
                for p, a in keys]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(keys) + 1))
        ax.set_xticklabels([_label({"probe": p, "artifact": a}) for p, a in keys],
                           rotation=30, ha="right", fontsize=8)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("Δ P(malignant)")
        ax.set_title(displays.get(model, model), fontsize=10)
    return fig


def build_auc_figure(entries: Sequence[dict[str, Any]], displays: dict[str, str] | None = None):
    """ROC AUC intact vs lesion removed vs background removed, with 95 % CIs, per model."""
    from dermcam.plots import new_figure

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
    from dermcam.plots import new_figure

    ncol = 1 + max((len(v) for _, _, v, _ in examples), default=0)
    fig = new_figure((1.35 * ncol, 1.55 * len(examples)))
    axes = fig.subplots(len(examples), ncol, squeeze=False)
    for r, (image_id, label, variants, intact) in enumerate(examples):
        cells = [("intact", intact)] + [
            (_label({"probe": v.probe, "artifact": v.artifact}) +
             (f" #{v.placement + 1}" if v.probe == "artifact_inserted" else ""), v.image)
            for v in variants]
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(cells):
                ax.imshow(cells[c][1])
                title = cells[c][0] if c else f"{image_id}\n({'malignant' if label else 'benign'})"
                ax.set_title(title, fontsize=6)
    return fig


def _figures(run: runmod.Run, df: pd.DataFrame, entries, samples, cache, size: int,
             cfg: ProbeConfig, out: runmod.Outputs) -> None:
    from dermcam.io import save_figure

    displays = run.display_names
    figdir = out.figures
    save_figure(build_delta_figure(df, displays), figdir / "probe_delta.png")
    if any(e["probe"] in ("lesion_removed", "background_removed") for e in entries):
        save_figure(build_auc_figure(entries, displays), figdir / "probe_auc.png")
    examples = []
    one_cfg = ProbeConfig(probes=cfg.probes, artifacts=cfg.artifacts, placements=1,
                          seed=cfg.seed, dilate=cfg.dilate, inpaint=cfg.inpaint)
    probed = set(df["image_id"])
    for want in (1, 0):  # a malignant then a benign image, the first carrying an artifact
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
