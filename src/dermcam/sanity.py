"""Model-randomisation sanity check (Adebayo et al., 2018), with a verdict that can say "don't know".

Heatmaps explain the *model* only if they change when its weights are re-initialised:
similarity is |Spearman rho| (an inverted map is as model-blind as an identical one) over
random inits, judged by the median over images with a bootstrap CI (docs/attention.md).
Heatmaps ``(N, H, W)``; random ones ``(N, H, W)``, ``(K, N, H, W)`` or ``K`` such arrays.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as _sstats

from dermcam import run as runmod
from dermcam.attribution import CamExplainer
from dermcam.cam_batches import stack_samples
from dermcam.heatmap_files import heatmaps_in_order
from dermcam.stats import bootstrap_median_ci

log = logging.getLogger(__name__)

__all__ = ["MIN_IMAGES", "sanity_verdict", "cascade_blocks", "randomise_parameters",
           "model_randomisation", "check_selection"]

#: Fewest valid images for which ``passed`` can be True: below 6 no distribution-free 95 %
#: interval of a median exists (all of 5 values on one side of it: 2 / 2**5 = 6 %).
MIN_IMAGES = 6

# Images per internal chunk: bounds the temporary (chunk, H*W) float64 arrays.
_CHUNK = 16


def _as_maps(maps, name: str) -> np.ndarray:
    arr = np.asarray(maps)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W), got shape {arr.shape}")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"{name} must have H, W > 0, got shape {arr.shape}")
    if arr.dtype != bool and arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr


def _as_inits(cams_random, shape: tuple[int, ...]) -> list[np.ndarray]:
    if isinstance(cams_random, (list, tuple)):
        if not cams_random:
            raise ValueError("cams_random is an empty list: need at least one random init")
        inits = [_as_maps(c, f"cams_random[{k}]") for k, c in enumerate(cams_random)]
    else:
        arr = np.asarray(cams_random)
        if arr.ndim == 3:
            inits = [_as_maps(arr, "cams_random")]
        elif arr.ndim == 4:
            if arr.shape[0] == 0:
                raise ValueError(f"cams_random (K, N, H, W) has K = 0 inits, shape {arr.shape}")
            inits = [_as_maps(arr[k], f"cams_random[{k}]") for k in range(arr.shape[0])]
        else:
            raise ValueError("cams_random must be (N, H, W), (K, N, H, W) or a list of "
                             f"(N, H, W), got shape {arr.shape}")
    for k, m in enumerate(inits):
        if m.shape != shape:
            label = "cams_random" if len(inits) == 1 else f"cams_random[{k}]"
            raise ValueError(f"cams_trained {shape} and {label} {m.shape} must have the "
                             "same (N, H, W) shape")
    return inits


def _centred_ranks(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, P)`` -> centred average ranks ``(n, P)``, their norms ``(n,)``, finite ``(n,)``."""
    good = np.isfinite(flat).all(axis=1)
    r = _sstats.rankdata(np.where(good[:, None], flat, 0.0), axis=1)
    r -= r.mean(axis=1, keepdims=True)
    return r, np.sqrt((r * r).sum(axis=1)), good


def _rho(a: tuple, b: tuple) -> np.ndarray:
    ra, na, ga = a
    rb, nb, gb = b
    den = na * nb
    ok = ga & gb & (den > 0)
    out = np.full(ra.shape[0], np.nan)
    out[ok] = np.clip((ra[ok] * rb[ok]).sum(axis=1) / den[ok], -1.0, 1.0)
    return out


def _spearman(a: np.ndarray, inits: Sequence[np.ndarray]) -> np.ndarray:
    """``a (N, H, W)`` and ``K`` maps ``(N, H, W)`` -> ``(K, N)`` Spearman rho (NaN undefined)."""
    n = a.shape[0]
    p = a.shape[1] * a.shape[2]
    rho = np.full((len(inits), n), np.nan)
    for s in range(0, n, _CHUNK):
        ta = _centred_ranks(a[s:s + _CHUNK].reshape(-1, p).astype(np.float64))
        for k, b in enumerate(inits):
            tb = _centred_ranks(b[s:s + _CHUNK].reshape(-1, p).astype(np.float64))
            rho[k, s:s + _CHUNK] = _rho(ta, tb)
    return rho


def _mean_over_inits(x: np.ndarray, ok: np.ndarray, count: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(ok, x, 0.0).sum(axis=0) / count, np.nan)


def sanity_verdict(cams_trained, cams_random, threshold: float = 0.5, n_boot: int = 1000,
                   seed: int = 0, min_images: int = MIN_IMAGES, log_result: bool = True
                   ) -> dict[str, Any]:
    """Verdict from heatmaps of the same images and classes: ``cams_trained (N, H, W)``, and
    ``cams_random`` from ``K`` re-initialised copies. ``passed``: False when the median |rho|
    is >= ``threshold``, True when the CI's upper end is below it on at least ``min_images``
    valid images, else None with a ``reason``. ``chance_abs_rho``: mismatched pairs' median.
    """
    out = _verdict(cams_trained, cams_random, threshold, n_boot, seed, min_images)
    if log_result:
        log.log(logging.WARNING if out["passed"] is False else logging.INFO,
                "model randomisation %s%s: median |rho| %.2f [%.2f, %.2f] on %d of %d images "
                "x %d init(s), threshold %g, mismatched pairs %.2f", out["verdict"],
                f" ({out['reason']})" if out["reason"] else "", out["median_abs_rho"],
                out["ci_low"], out["ci_high"], out["n_valid"], out["n_images"],
                out["n_inits"], out["threshold"], out["chance_abs_rho"])
    return out


def _verdict(cams_trained, cams_random, threshold: float, n_boot: int, seed: int,
             min_images: int = MIN_IMAGES) -> dict[str, Any]:
    """:func:`sanity_verdict` without logging (the cascade's steps are not verdicts)."""
    a = _as_maps(cams_trained, "cams_trained")
    inits = _as_inits(cams_random, a.shape)
    threshold = float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1] (|rho| lies in [0, 1]), got {threshold}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n_boot = int(n_boot)
    rho = _spearman(a, inits)  # (K, N)
    ok = ~np.isnan(rho)
    count = ok.sum(axis=0)
    abs_img = _mean_over_inits(np.abs(rho), ok, count)
    signed_img = _mean_over_inits(rho, ok, count)
    valid = abs_img[count > 0]
    n_valid = int(valid.size)
    n, k = a.shape[0], len(inits)
    if n_valid:
        med = float(np.median(valid))
        mean = float(valid.mean())
        med_signed = float(np.median(signed_img[count > 0]))
    else:
        med = mean = med_signed = math.nan
    lo, hi = bootstrap_median_ci(valid, n_boot, seed, what="median |rho|")
    per_init = [float(np.median(np.abs(r[~np.isnan(r)]))) if (~np.isnan(r)).any() else math.nan
                for r in rho]
    if n_valid == 0:
        passed, reason = None, "no_valid_images"
    elif med >= threshold:
        passed, reason = False, ""
    elif n_valid < min_images:
        passed, reason = None, "too_few_images"
    elif hi < threshold:
        passed, reason = True, ""
    else:
        passed, reason = None, "ci_includes_threshold"
    return {
        "rank_correlation": signed_img, "abs_rank_correlation": abs_img,
        "median_abs_rho": med, "median": med, "ci_low": lo, "ci_high": hi,
        "mean_abs_rho": mean, "median_rho": med_signed, "chance_abs_rho": _chance(a, inits),
        "per_init_median": per_init, "per_init_n_valid": [int(c) for c in ok.sum(axis=1)],
        "n_valid": n_valid, "n_images": int(n), "n_inits": int(k), "n_boot": n_boot,
        "min_images": int(min_images), "threshold": threshold, "passed": passed,
        "verdict": {True: "passed", False: "failed", None: "inconclusive"}[passed],
        "reason": reason,
    }


def _chance(a: np.ndarray, inits: Sequence[np.ndarray]) -> float:
    """Median |rho| of mismatched pairs: trained map of image i, random map of image i + 1."""
    if a.shape[0] < 2:
        return math.nan
    rho = _spearman(a, [np.roll(b, -1, axis=0) for b in inits])
    ok = ~np.isnan(rho)
    per_img = _mean_over_inits(np.abs(rho), ok, ok.sum(axis=0))
    per_img = per_img[~np.isnan(per_img)]
    return float(np.median(per_img)) if per_img.size else math.nan


def cascade_blocks(model, target_layer: str | None = None) -> list[str]:
    """Names of ``model``'s parametrised top-level children, in forward (registration)
    order, the ``nn.Sequential`` trunk holding ``target_layer`` replaced by its own children:
    resnet18 at ``layer4``: ``conv1, bn1, layer1 .. layer4, fc``."""
    import torch.nn as nn

    names = []
    for name, child in model.named_children():
        expand = (isinstance(child, nn.Sequential) and target_layer is not None
                  and target_layer.startswith(name + "."))
        items = ([(f"{name}.{c}", m) for c, m in child.named_children()] if expand
                 else [(name, child)])
        names += [nm for nm, m in items if any(True for _ in m.parameters())]
    return names


def randomise_parameters(module, seed: int) -> list[str]:
    """Re-initialise ``module`` in place (``reset_parameters()``, or the private
    ``_reset_parameters`` of ``nn.MultiheadAttention``, on every submodule) under
    ``seed`` on the CPU generator, the caller's random state kept. Returns the names of
    parameters no reset covers (they keep their trained values)."""
    import torch

    not_reset = []
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        for name, m in module.named_modules():
            reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
            if callable(reset):
                reset()
            else:
                not_reset += [f"{name}.{p}" if name else p
                              for p, _ in m.named_parameters(recurse=False)]
    return not_reset


def _randomise_on_cpu(module, seed: int, device) -> list[str]:
    module.to("cpu")
    try:
        return randomise_parameters(module, seed)
    finally:
        module.to(device)


def randomised_copies(model, n_inits: int, seed: int, not_reset: set[str] | None = None):
    """The null models, one at a time: copy ``i`` re-initialised with seed ``seed + i`` (on
    the CPU, then moved to ``model``'s device). The localisation benchmark draws its nulls
    here too, so a layer chosen for passing is held to the reported check's null."""
    device = next(iter(model.parameters())).device
    for i in range(int(n_inits)):
        m = copy.deepcopy(model)
        missed = _randomise_on_cpu(m, seed + i, device)
        if not_reset is not None:
            not_reset.update(missed)
        yield m


def model_randomisation(model, target_layer: str, method: str, x, targets, trained_heatmaps,
                        size: int, normalize: str = "minmax", n_inits: int = 3,
                        cascade: bool = True, seed: int = 0, reshape_transform=None, *,
                        blocks: Sequence[str] | None = None, threshold: float = 0.5,
                        n_boot: int = 1000, batch_size: int = 32) -> dict[str, Any]:
    """Full and cascading model randomisation for one model, CAM method and image batch.

    ``x (N, 3, H, W)``, ``targets (N,)``, ``trained_heatmaps (N, size, size)``. Full:
    ``n_inits`` copies judged by :func:`sanity_verdict`; cascade: :func:`cascade_blocks`
    re-initialised cumulatively from the output down. ``model`` is never modified.
    """
    n, targets, trained, device = _randomisation_inputs(model, x, targets, trained_heatmaps,
                                                        size, n_inits, batch_size)

    def heatmaps(m) -> np.ndarray:  # m's (N, size, size) maps, in batches on device
        out = []
        with CamExplainer(m, target_layer, method, reshape_transform=reshape_transform) as ex:
            for s in range(0, n, batch_size):
                out.append(ex.compute(x[s:s + batch_size].to(device),
                                      target=targets[s:s + batch_size], size=size,
                                      normalize=normalize).heatmaps)
        return np.concatenate(out) if out else np.zeros((0, size, size), np.float32)

    not_reset: set[str] = set()
    full_maps = [heatmaps(m) for m in randomised_copies(model, n_inits, seed, not_reset)]
    full = sanity_verdict(trained, full_maps, threshold=threshold, n_boot=n_boot, seed=seed)
    names = list(blocks) if blocks is not None else cascade_blocks(model, target_layer)
    steps = (_cascade_steps(model, names, trained, heatmaps, seed, device, threshold, n_boot,
                            not_reset) if cascade else [])
    if not_reset:
        log.warning("model randomisation: %d parameter tensor(s) have no reset_parameters and "
                    "keep their trained values: %s", len(not_reset),
                    ", ".join(sorted(not_reset)[:5]))
    full = {k: [float(f) for f in v] if isinstance(v, np.ndarray) else v for k, v in full.items()}
    return {"full": full, "cascade": steps, "blocks": names,
            "not_reset": sorted(not_reset), "method": method, "layer": target_layer,
            "normalize": normalize, "n_images": int(n), "n_inits": int(n_inits),
            "seed": int(seed)}


def _randomisation_inputs(model, x, targets, trained_heatmaps, size: int, n_inits: int,
                          batch_size: int):
    """The inputs checked: ``(N, targets (N,) int64, trained (N, size, size) float32,
    the model's device)``; ``ValueError`` naming the offending shape or value."""
    import torch

    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a (N, 3, H, W) tensor, got "
                         f"{tuple(x.shape) if hasattr(x, 'shape') else type(x).__name__}")
    n = x.shape[0]
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if targets.shape != (n,):
        raise ValueError(f"targets must be (N,) = ({n},), got shape {targets.shape}")
    trained = np.asarray(trained_heatmaps, dtype=np.float32)
    if trained.shape != (n, size, size):
        raise ValueError(f"trained_heatmaps must be (N, size, size) = ({n}, {size}, {size}), "
                         f"got shape {trained.shape}")
    if int(n_inits) < 1:
        raise ValueError(f"n_inits must be >= 1, got {n_inits}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    params = list(model.parameters())
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameters to randomise")
    return n, targets, trained, params[0].device


def _cascade_steps(model, names: Sequence[str], trained: np.ndarray, heatmaps, seed: int,
                   device, threshold: float, n_boot: int, not_reset: set[str]
                   ) -> list[dict[str, Any]]:
    """The cascade on one deep copy of ``model``: ``names`` re-initialised cumulatively from
    the top (seed ``seed + j``), the similarity to ``trained`` after each step."""
    steps = []
    m = copy.deepcopy(model)
    for j, name in enumerate(reversed(names)):
        not_reset.update(f"{name}.{p}" for p in
                         _randomise_on_cpu(m.get_submodule(name), seed + j, device))
        v = _verdict(trained, heatmaps(m), threshold, n_boot, seed)
        steps.append({"block": name, **{k: v[k] for k in ("median_abs_rho", "ci_low",
                                                           "ci_high", "n_valid")}})
        log.debug("cascade %s: median |rho| %.3f", name, v["median_abs_rho"])
    return steps


def check_selection(run: runmod.Run, selection, samples, normalize, k: int = 64,
                    n_boot: int = 1000, cascade: bool = True,
                    out: runmod.Outputs | None = None) -> dict[str, dict[str, Any]]:
    """:func:`model_randomisation` of each chosen ``{model, method, layer}`` on the CPU, on
    the first ``k`` of ``samples`` (trained heatmaps read from ``out``, default the run's),
    as ``{"model/method": result}``."""
    size = run.image_size
    chunk = samples[:k]
    x, _, _ = stack_samples(run.cache, chunk, size)
    res = {}
    for sel in selection:
        name, method, lay = sel["model"], sel["method"], sel["layer"]
        trained = heatmaps_in_order((out or run.outputs).root, name, method, lay,
                                    [s.image_id for s in chunk])
        res[f"{name}/{method}"] = model_randomisation(
            run.load_model(name)[0].cpu(), lay, method, x, trained["targets"],
            trained["heatmaps"], size, normalize=normalize, seed=run.seed, cascade=cascade,
            n_boot=n_boot)
    return res
