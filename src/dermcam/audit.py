"""Audit any two-class torch classifier, without a dermcam run.

For users whose model comes from their own pipeline: a model, the name of the layer to
hook, images and lesion masks (arrays, or a data folder of any layout dermcam reads) ->
the attention table, one row per image, with the metrics ``dermcam explain`` writes to
attention.csv (leakage, chance and excess leakage, pixel AUROC, ...), as a pandas
DataFrame; :func:`audit_summary` adds the statistics (means with CIs per class, the
uniform-attention guard, the lesion-size confound test).

    from dermcam.audit import audit_images, audit_summary
    table = audit_images(model, "layer3", images, masks, labels)   # (N, H, W, 3) uint8
    audit_summary(table)["size_confound"]["summary"]

The model must return two logits per image, ``[benign, malignant]`` (a model with one
malignant logit can be wrapped: ``torch.cat([-z, z], 1) / 2``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dermcam.errors import DermcamError

log = logging.getLogger(__name__)

__all__ = ["audit_images", "audit_folder", "audit_summary"]


def audit_images(model, layer: str, images, masks, labels=None, *, method: str = "gradcam",
                 target: str = "malignant", normalize: str = "minmax",
                 image_ids: Sequence[str] | None = None, batch_size: int = 32,
                 device: str = "cpu", threshold: float = 0.5):
    """The attention table of ``model``'s CAMs at ``layer`` against lesion ``masks``.

    ``images``: ``(N, H, W, 3)`` uint8 RGB (normalised here as dermcam normalises its own
    inputs, ImageNet mean and std) or an ``(N, 3, H, W)`` float tensor already prepared
    the way the model expects. ``masks``: ``(N, H, W)``, nonzero = lesion, at the images'
    size. ``labels``: ``(N,)`` 0 benign / 1 malignant, optional (needed for class
    comparisons and ``target="true"``). ``method``: a pytorch-grad-cam method dermcam
    offers (gradcam, gradcam++, hirescam, layercam, eigencam, xgradcam). ``target``:
    malignant (default), predicted (decided at ``threshold``) or true. The model is left
    in the mode and on the device it came with.

    Returns a DataFrame: ``image_id``, ``label``, ``prob_malignant``, ``cam_target``,
    ``method``, ``layer`` and every metric of :data:`dermcam.leakage.METRICS`, with
    ``reason`` where a metric is undefined (NaN, never a fake 0).
    """
    import pandas as pd
    import torch

    from dermcam.attribution import CamExplainer, check_method
    from dermcam.device import resolve_device
    from dermcam.leakage import score_batch

    x = _as_input(images)
    n, _, h, w = x.shape
    masks = np.asarray(masks)
    if masks.shape != (n, h, w):
        raise ValueError(f"masks must be (N, H, W) = ({n}, {h}, {w}) like the images, got "
                         f"shape {masks.shape}")
    y = None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
    if y is not None and (y.shape != (n,) or not np.isin(y, (0, 1)).all()):
        raise ValueError(f"labels must be (N,) = ({n},) of 0 (benign) or 1 (malignant)")
    if target == "true" and y is None:
        raise ValueError("target='true' needs labels")
    ids = [str(i) for i in (image_ids if image_ids is not None else range(n))]
    if len(ids) != n:
        raise ValueError(f"image_ids must have {n} entries, got {len(ids)}")
    method = check_method(method)
    dev = resolve_device(device)
    home = next(model.parameters()).device
    _check_two_logits(model, x[:1].to(home))
    model.to(dev)
    rows = []
    try:
        with CamExplainer(model, layer, method) as ex:
            for s in range(0, n, int(batch_size)):
                xb = x[s:s + batch_size]
                cb = ex.compute(xb, target=target, labels=None if y is None else y[s:s + batch_size],
                                size=h, normalize=normalize, threshold=threshold)
                if cb.heatmaps.shape[1:] != (h, w):  # non-square inputs: back to (H, W)
                    t = torch.from_numpy(cb.heatmaps)[:, None]
                    heat = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear",
                                                           align_corners=False)[:, 0].numpy()
                else:
                    heat = cb.heatmaps
                values, reasons = score_batch(heat, masks[s:s + batch_size] != 0)
                df = pd.DataFrame({"image_id": ids[s:s + batch_size],
                                   "prob_malignant": np.round(cb.probs.astype(np.float64), 6),
                                   "cam_target": cb.targets.astype(int),
                                   "method": method, "layer": layer})
                if y is not None:
                    df.insert(1, "label", y[s:s + batch_size])
                for k, v in values.items():
                    df[k] = v
                df["reason"] = reasons
                rows.append(df)
    finally:
        model.to(home)
    return pd.concat(rows, ignore_index=True)


def audit_folder(model, layer: str, data: str | Path, *, image_size: int = 224,
                 split: str = "test", cache_dir: str | None = None, **kwargs):
    """:func:`audit_images` on the masked images of a data folder of any layout dermcam
    reads (ISIC 2016/2017, HAM10000, PH2, the generic ``labels.csv``), resized to
    ``image_size`` through dermcam's decode cache; ``split``: test, train, or all.
    ``kwargs`` go to :func:`audit_images`."""
    from dermcam.data import load_dataset
    from dermcam.data.cache import ImageCache

    ds = load_dataset(data)
    samples = ds.samples if split == "all" else ds.split(split)
    samples = [s for s in samples if s.mask_path is not None]
    if not samples:
        raise DermcamError(f"no {split} images with lesion masks to audit", ds.root)
    cache = ImageCache(cache_dir)
    items = [cache.get(s, image_size) for s in samples]
    images = np.stack([it["image"] for it in items])
    masks = np.stack([it["mask"] for it in items])
    labels = np.array([s.label for s in samples], np.int64)
    return audit_images(model, layer, images, masks, labels,
                        image_ids=[s.image_id for s in samples], **kwargs)


def audit_summary(table, n_boot: int = 1000, seed: int = 0, margin: float = 0.02
                  ) -> dict[str, Any]:
    """The statistics dermcam reports for one model x method x layer, on an audit table:

    ``guard`` (:func:`dermcam.localisation.uniform_guard`: do the maps beat uniform
    attention? a class difference in leakage means nothing where they do not),
    ``by_class`` (:func:`dermcam.leakage.summarise`: mean, median and 95 % CI of leakage,
    excess leakage and pixel AUROC per class, with n and undefined counts; needs labels)
    and ``size_confound`` (:func:`dermcam.leakage.size_confound`: is the benign /
    malignant leakage gap explained by lesion size? spline + HC3, TOST against
    ``margin``; needs labels).
    """
    from dermcam import leakage as lk
    from dermcam.localisation import uniform_guard

    out: dict[str, Any] = {"guard": uniform_guard(table, n_boot=n_boot, seed=seed)}
    if "label" in table.columns:
        out["by_class"] = lk.summarise(table, ("leakage", "excess_leakage", "pixel_auroc"),
                                       by=("label",), n_boot=n_boot, seed=seed)
        out["size_confound"] = lk.size_confound(table, "leakage", margin=margin,
                                                n_boot=n_boot, seed=seed)
    return out


def _as_input(images):
    """``(N, 3, H, W)`` float tensor: uint8 ``(N, H, W, 3)`` normalised the way dermcam
    normalises its own inputs; a float tensor passed through."""
    import torch

    from dermcam.augment import preprocess

    if isinstance(images, torch.Tensor) and images.is_floating_point():
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"a float image tensor must be (N, 3, H, W), got "
                             f"{tuple(images.shape)}")
        return images
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) uint8 RGB or an (N, 3, H, W) float "
                         f"tensor, got {arr.dtype} of shape {arr.shape}")
    return preprocess(torch.from_numpy(np.ascontiguousarray(arr)))


def _check_two_logits(model, x1) -> None:
    import torch

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x1)
    finally:
        model.train(was)
    if out.ndim != 2 or out.shape[1] != 2:
        raise DermcamError(f"the model must return two logits per image [benign, malignant], "
                           f"got output of shape {tuple(out.shape)}; wrap a one-logit model "
                           "as torch.cat([-z, z], 1) / 2")
