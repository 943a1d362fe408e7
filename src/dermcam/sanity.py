"""Model-randomisation sanity check (Adebayo et al., 2018), with a verdict that can say "don't know".

A saliency method explains the *model* only if its heatmaps change when the
model's weights are destroyed. The check compares, image by image, the heatmap of
the trained model with the heatmap of the same architecture after its weights
are re-initialised:

* **Similarity is |Spearman rho|** between the two maps of one image (average
  ranks for ties). The absolute value matters: an inverted map (rho = -1) is as
  much a function of the image, and as little of the model, as an identical one.
  The earlier check used the signed rho and so passed inverted maps.
* **Several random inits.** Per image, |rho| is averaged over the inits that give
  a defined value; the statistic is the median over images of that average.
* **A bootstrap 95 % CI over images** (images resampled, inits kept) decides the
  verdict: ``passed`` is True only when the CI's upper end is below the
  threshold, False when the median itself is at or above it, and None
  ("inconclusive") otherwise: the CI includes the threshold, fewer than
  :data:`MIN_IMAGES` images are valid, or none is.
* **A chance level.** ``chance_abs_rho`` is the same statistic for mismatched
  pairs (trained map of image i, random map of image i + 1). Unrelated maps are
  not at |rho| = 0 when the CAM grid is coarse: upsampled from 2 x 2 cells
  (resnet18's ``layer4`` at 64 px) two independent maps have median |rho| about
  0.45, from 7 x 7 (224 px) about 0.1. Near the threshold, the check cannot pass
  whatever the method does.
* **Cascading randomisation** (:func:`model_randomisation`): the model's blocks
  (:func:`cascade_blocks`) are re-initialised cumulatively from the output down,
  and the similarity is reported after each step, showing which layers the
  heatmaps actually depend on.

:func:`sanity_verdict` is a pure function on arrays (no torch);
:func:`model_randomisation` is the shell that builds the randomised copies and
their heatmaps through :class:`dermcam.attribution.CamExplainer`;
:func:`check_selection` runs it for the explain stage on a run's chosen layers.

Shape contracts: heatmaps ``(N, H, W)``; randomised heatmaps ``(N, H, W)`` (one
init), ``(K, N, H, W)`` or a list of ``K`` arrays ``(N, H, W)``; per-image
results ``(N,)``. Lower similarity is better (the method passes).
"""

from __future__ import annotations

import copy
import inspect
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

__all__ = [
    "MIN_IMAGES",
    "sanity_verdict",
    "cascade_blocks",
    "randomise_parameters",
    "model_randomisation",
    "check_selection",
]

#: Fewest valid images for which ``passed`` can be True. Below 6 no
#: distribution-free 95 % interval of a median exists (the chance that all of
#: 5 values fall on one side of the median is 2 / 2**5 = 6 %), and a bootstrap
#: percentile interval of so few values is too narrow to trust.
MIN_IMAGES = 6

# Images per internal chunk: bounds the temporary (chunk, H*W) float64 arrays.
_CHUNK = 16


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Spearman rank correlation of maps, vectorised over images
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# The verdict
# ---------------------------------------------------------------------------

def _median_ci(v: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    return bootstrap_median_ci(v, n_boot, seed, what="median |rho|")


def _mean_over_inits(x: np.ndarray, ok: np.ndarray, count: np.ndarray) -> np.ndarray:
    total = np.where(ok, x, 0.0).sum(axis=0)
    out = np.full(x.shape[1], np.nan)
    has = count > 0
    out[has] = total[has] / count[has]
    return out


def sanity_verdict(cams_trained, cams_random, threshold: float = 0.5, n_boot: int = 1000,
                   seed: int = 0, min_images: int = MIN_IMAGES, log_result: bool = True
                   ) -> dict[str, Any]:
    """Verdict of the model-randomisation check from heatmaps.

    ``cams_trained`` ``(N, H, W)``: heatmaps of N images from the trained model.
    ``cams_random``: the same images' heatmaps (same target classes) from ``K``
    randomly re-initialised copies: ``(K, N, H, W)``, a list of ``K`` arrays
    ``(N, H, W)``, or one ``(N, H, W)`` (K = 1).

    Similarity per image and init is ``|rho|`` (Spearman; NaN where either map is
    constant or non-finite). Per image it is averaged over the inits where it is
    defined; an image is valid when at least one init is. The statistic is the
    median over valid images, with a percentile bootstrap 95 % CI over images
    (``n_boot`` resamples, ``numpy.random.default_rng(seed)``). Lower is better.

    ``passed``: False when the median is >= ``threshold``; True when the CI's
    upper end is < ``threshold`` and at least ``min_images`` images are valid;
    None (inconclusive) otherwise, with ``reason`` one of ``"no_valid_images"``,
    ``"too_few_images"``, ``"ci_includes_threshold"`` (``""`` when decided).

    Returns a dict: ``rank_correlation`` ``(N,)`` signed rho averaged over inits
    and ``abs_rank_correlation`` ``(N,)`` |rho| averaged over inits (numpy
    arrays, NaN for invalid images); floats ``median_abs_rho`` (also under
    ``median``, for older readers), ``ci_low``, ``ci_high``, ``mean_abs_rho``,
    ``median_rho`` (median of the signed per-image values: near -1 means inverted
    maps), ``chance_abs_rho`` (median |rho| of mismatched pairs, the trained map of
    image i against the random map of image i + 1: what unrelated maps of this
    resolution and layout reach; near ``threshold`` the check cannot pass; NaN below 2
    images); lists ``per_init_median`` and ``per_init_n_valid`` (median |rho| and valid
    images of each init); ints ``n_valid``, ``n_images``, ``n_inits``,
    ``n_boot``, ``min_images``; ``threshold``, ``passed``, ``verdict``
    (``"passed"``/``"failed"``/``"inconclusive"``) and ``reason``. ``log_result=False``:
    do not log the verdict (callers that report many candidates in a table of their own).
    """
    out = _verdict(cams_trained, cams_random, threshold, n_boot, seed, min_images)
    if log_result:  # not e.g. the localisation benchmark, which reports every candidate
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
    lo, hi = _median_ci(valid, n_boot, seed)
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
    verdict = {True: "passed", False: "failed", None: "inconclusive"}[passed]
    chance = _chance(a, inits)
    return {
        "rank_correlation": signed_img, "abs_rank_correlation": abs_img,
        "median_abs_rho": med, "median": med, "ci_low": lo, "ci_high": hi,
        "mean_abs_rho": mean, "median_rho": med_signed, "chance_abs_rho": chance,
        "per_init_median": per_init, "per_init_n_valid": [int(c) for c in ok.sum(axis=1)],
        "n_valid": n_valid, "n_images": int(n), "n_inits": int(k), "n_boot": n_boot,
        "min_images": int(min_images), "threshold": threshold, "passed": passed,
        "verdict": verdict, "reason": reason,
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


# ---------------------------------------------------------------------------
# Randomising a model
# ---------------------------------------------------------------------------

def cascade_blocks(model, target_layer: str | None = None) -> list[str]:
    """Names of ``model``'s blocks for cascading randomisation, in forward order.

    The blocks are the model's top-level children that hold parameters; the
    top-level ``nn.Sequential`` child that contains ``target_layer`` strictly
    inside it (the trunk, e.g. ``features`` of EfficientNet / MobileNet /
    DenseNet / VGG) is replaced by its own parametrised children. resnet18 with
    ``layer4``: ``conv1, bn1, layer1, layer2, layer3, layer4, fc``;
    efficientnet_b0 with ``features.8``: ``features.0 .. features.8, classifier``.
    The order is registration order, which is forward order for torchvision.
    """
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
    """Re-initialise ``module`` in place: ``reset_parameters()`` on every submodule.

    Runs under ``torch.manual_seed(seed)`` for the CPU generator, inside
    ``torch.random.fork_rng`` so the caller's random state is left as it was;
    call it on a CPU module for the same weights on every machine. BatchNorm's
    reset also resets its running statistics. Modules with only the private
    ``_reset_parameters`` (``nn.MultiheadAttention``) get that. Returns the names
    of parameters no reset covers (held directly by a module without either
    method); they keep their trained values.
    """
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
    """The full randomisation's null models, one at a time: copy ``i`` of ``n_inits`` is a
    deep copy of ``model`` re-initialised by :func:`randomise_parameters` with seed
    ``seed + i`` (on the CPU, then moved to ``model``'s device). ``model`` is never
    modified. :func:`model_randomisation` and the localisation benchmark
    (:mod:`dermcam.localisation`) draw their nulls here, so a layer chosen for passing
    the sanity check is held to the same null the reported check uses. Names of
    parameters no reset covers are added to ``not_reset``.
    """
    device = next(iter(model.parameters())).device
    for i in range(int(n_inits)):
        m = copy.deepcopy(model)
        missed = _randomise_on_cpu(m, seed + i, device)
        if not_reset is not None:
            not_reset.update(missed)
        yield m


def _jsonable(v: dict) -> dict:
    out = {}
    for key, val in v.items():
        if isinstance(val, np.ndarray):
            val = [float(x) for x in val]
        out[key] = val
    return out


def model_randomisation(model, target_layer: str, method: str, x, targets, trained_heatmaps,
                        size: int, normalize: str = "minmax", n_inits: int = 3,
                        cascade: bool = True, seed: int = 0, reshape_transform=None, *,
                        blocks: Sequence[str] | None = None, threshold: float = 0.5,
                        n_boot: int = 1000, batch_size: int = 32) -> dict[str, Any]:
    """Full and cascading model randomisation for one model, CAM method and image batch.

    ``model``: the trained torch module (never modified: every randomised model
    is a deep copy). ``x`` ``(N, 3, H, W)`` preprocessed images; ``targets``
    ``(N,)`` the classes ``trained_heatmaps`` ``(N, size, size)`` explain (the
    trained model's heatmaps, same ``method``, layer and ``normalize``).

    *Full*: ``n_inits`` copies, init ``i`` re-initialised entirely by
    :func:`randomise_parameters` with seed ``seed + i``; their heatmaps of the
    same images and target classes go to :func:`sanity_verdict`.
    *Cascade* (``cascade=True``): one copy, its :func:`cascade_blocks` (or
    ``blocks``, forward order) re-initialised cumulatively from the output down
    (block ``j`` from the top with seed ``seed + j``), heatmaps after each step.

    Heatmaps are computed in batches of ``batch_size`` on the model's device.
    Returns a JSON-ready dict: ``full`` (the verdict, per-image arrays as lists),
    ``cascade`` (``[{"block", "median_abs_rho", "ci_low", "ci_high", "n_valid"}]``,
    top block first; ``[]`` when off), ``blocks`` (forward order), ``not_reset``
    (parameters no reset covered), ``method``, ``layer``, ``normalize``,
    ``n_images``, ``n_inits``, ``seed``.
    """
    n, targets, trained, device = _randomisation_inputs(model, x, targets, trained_heatmaps,
                                                        size, n_inits, batch_size)
    options = _explainer_options(reshape_transform)

    def heatmaps(m) -> np.ndarray:
        return _batched_heatmaps(m, target_layer, method, options, x, targets, size,
                                 normalize, batch_size, device)

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
    return {"full": _jsonable(full), "cascade": steps, "blocks": names,
            "not_reset": sorted(not_reset), "method": method, "layer": target_layer,
            "normalize": normalize, "n_images": int(n), "n_inits": int(n_inits),
            "seed": int(seed)}


def _randomisation_inputs(model, x, targets, trained_heatmaps, size: int, n_inits: int,
                          batch_size: int):
    """:func:`model_randomisation`'s inputs checked (``ValueError`` naming the offending
    shape or value): ``(N, targets (N,) int64, trained heatmaps (N, size, size) float32,
    the model's device)``."""
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


def _explainer_options(reshape_transform) -> dict[str, Any]:
    """Keyword arguments for :class:`dermcam.attribution.CamExplainer` beyond the model,
    layer and method: ``reshape_transform`` where one is given (``ValueError`` where this
    version's explainer does not take one)."""
    options = {}
    if reshape_transform is not None:
        if "reshape_transform" not in inspect.signature(CamExplainer).parameters:
            raise ValueError("reshape_transform was given, but dermcam.attribution.CamExplainer "
                             "does not take one in this version")
        options["reshape_transform"] = reshape_transform
    return options


def _batched_heatmaps(m, target_layer: str, method: str, options: dict[str, Any], x,
                      targets: np.ndarray, size: int, normalize: str, batch_size: int,
                      device) -> np.ndarray:
    """``m``'s heatmaps ``(N, size, size)`` of images ``x`` for classes ``targets``, computed
    on ``device`` in batches of ``batch_size``."""
    n = x.shape[0]
    out = []
    with CamExplainer(m, target_layer, method, **options) as ex:
        for s in range(0, n, batch_size):
            cb = ex.compute(x[s:s + batch_size].to(device),
                            target=targets[s:s + batch_size], size=size,
                            normalize=normalize)
            out.append(cb.heatmaps)
    return np.concatenate(out) if out else np.zeros((0, size, size), np.float32)


def _cascade_steps(model, names: Sequence[str], trained: np.ndarray, heatmaps, seed: int,
                   device, threshold: float, n_boot: int, not_reset: set[str]
                   ) -> list[dict[str, Any]]:
    """The cascade on one deep copy of ``model``: blocks ``names`` (forward order)
    re-initialised cumulatively from the top (block ``j`` from the top with seed
    ``seed + j``), the similarity of ``heatmaps(copy)`` to ``trained`` after each step.
    Parameters no reset covers are added to ``not_reset``."""
    steps = []
    m = copy.deepcopy(model)
    for j, name in enumerate(reversed(names)):
        not_reset.update(f"{name}.{p}" for p in
                         _randomise_on_cpu(m.get_submodule(name), seed + j, device))
        v = _verdict(trained, heatmaps(m), threshold, n_boot, seed)
        steps.append({"block": name, "median_abs_rho": v["median_abs_rho"],
                      "ci_low": v["ci_low"], "ci_high": v["ci_high"],
                      "n_valid": v["n_valid"]})
        log.debug("cascade %s: median |rho| %.3f", name, v["median_abs_rho"])
    return steps


def check_selection(run: runmod.Run, selection, samples, normalize, k: int = 64,
                    n_boot: int = 1000, cascade: bool = True,
                    out: runmod.Outputs | None = None) -> dict[str, dict[str, Any]]:
    """Adebayo et al. (2018) on the chosen layers (``selection``: ``[{model, method,
    layer}]``), on the CPU, on the first ``k`` of ``samples``: full and cascading
    randomisation (the trained heatmaps read from ``out``, default the run's own), as
    ``{"model/method": model_randomisation(...)}``."""
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
