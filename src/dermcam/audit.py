"""Audit any two-class torch classifier, without a dermcam run.

For users whose model comes from their own pipeline: a model, the name of the layer to
hook, images and lesion masks (arrays, or a data folder of any layout dermcam reads) ->
the attention table, one row per image, with the metrics ``dermcam explain`` writes to
attention.csv (leakage, chance and excess leakage, pixel AUROC, ...), as a pandas
DataFrame; :func:`audit_summary` adds the statistics (means with CIs per class, the
uniform-attention guard, the lesion-size confound test).

    from dermcam.audit import audit_images, audit_summary
    table = audit_images(model, "layer3", images, masks, labels)   # (N, H, W, 3) uint8
    audit_summary(table)["size_confound"]["verdict"]

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

__all__ = ["audit_images", "audit_folder", "audit_summary", "load_model", "write_audit"]


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
                 split: str = "test", cache_dir: str | None = None, limit: int | None = None,
                 **kwargs):
    """:func:`audit_images` on the masked images of a data folder of any layout dermcam
    reads (ISIC 2016/2017, HAM10000, PH2, the generic ``labels.csv``), resized to
    ``image_size`` through dermcam's decode cache; ``split``: test, train, or all;
    ``limit``: only the first N masked images of the split. ``kwargs`` go to
    :func:`audit_images`."""
    from dermcam.data import load_dataset
    from dermcam.data.cache import ImageCache

    ds = load_dataset(data)
    samples = ds.samples if split == "all" else ds.split(split)
    samples = [s for s in samples if s.mask_path is not None]
    if limit is not None:
        samples = samples[:max(int(limit), 0)]
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


def load_model(weights: str | Path, arch: str | None = None, layer: str | None = None,
               image_size: int = 224):
    """A two-class model trained elsewhere, from a file, ready for :func:`audit_images`.

    ``weights``: a plain state dict saved with ``torch.save`` (or a dermcam checkpoint),
    loaded with ``weights_only=True`` into torchvision's ``arch`` with a 2-class head; or a
    TorchScript file. TorchScript runs a compiled forward that takes no Python hooks, so
    Grad-CAM cannot reach its layers: its weights are loaded into torchvision's ``arch``
    instead, and the two models' outputs on one random ``image_size`` input must agree.
    The head must be in the file with two outputs, ``[benign, malignant]`` (never a
    random one). ``layer``: the module to hook, default ``arch``'s CAM layer (the
    registry's, else its last ``Conv2d``).

    Returns ``(model, layer, kind)``, ``kind`` "state dict" or "TorchScript". Every
    problem is a :class:`DermcamError` naming ``weights``.
    """
    import torch

    from dermcam.models import (
        REGISTRY,
        build_model,
        check_model_name,
        head_name,
        load_state_file,
        load_weights_into,
        state_dict_of,
    )

    path = Path(weights)
    if not path.exists():
        raise DermcamError("weights file not found", path)
    if not path.is_file():
        raise DermcamError("not a file (expected a state dict or a TorchScript file)", path)
    scripted = _is_torchscript(path)
    if not scripted and not _is_torch_save(path):
        raise DermcamError("neither a TorchScript file nor a PyTorch state dict saved with "
                           "torch.save", path)
    if arch is None:
        why = ("a TorchScript model takes no Python hooks, so Grad-CAM cannot reach its "
               "layers; " if scripted else "")
        raise DermcamError(f"{why}give --arch, the torchvision architecture the weights "
                           "belong to (e.g. resnet18; 'dermcam models' lists them)", path)
    try:
        arch = check_model_name(arch)
    except DermcamError as exc:
        raise DermcamError(str(exc), "--arch") from exc
    if scripted:
        script = _load_torchscript(path)
        obj = dict(script.state_dict())
    else:
        script = None
        obj = load_state_file(path)
    model, info = build_model(arch, "none")
    spec = REGISTRY.get(arch)
    head = spec.head if spec else head_name(model)
    state = state_dict_of(obj)
    load_weights_into(model, arch, obj, path, head)  # the body fits arch, or a clear error
    # load_weights_into keeps a random 2-class head where the file has none or another
    # one (ImageNet weights to fine-tune); an audit needs the model's own head.
    w = state.get(f"{head}.weight") if isinstance(state, dict) else None
    if not isinstance(w, torch.Tensor):
        raise DermcamError(f"holds no classifier head {head}.weight for {arch}: the model "
                           "must output two logits [benign, malignant]", path)
    if w.shape[0] != 2:
        raise DermcamError(f"the classifier head {head}.weight has {w.shape[0]} outputs; the "
                           "model must output two logits [benign, malignant]", path)
    layer = layer or info.target_layer
    names = dict(model.named_modules())
    if not layer or layer not in names:
        raise DermcamError(f"--layer {layer!r} is not a layer of {arch} (its CAM layer is "
                           f"{info.target_layer}; 'dermcam models' lists the candidates)", path)
    if script is not None:
        _check_same_outputs(script, model, image_size, path, arch)
    return model, layer, "TorchScript" if scripted else "state dict"


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip file holding ``<name>/constants.pkl`` and ``code/``."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    rest = [n.partition("/")[2] for n in names]
    return "constants.pkl" in rest and any(r.startswith("code/") for r in rest)


def _is_torch_save(path: Path) -> bool:
    """What ``torch.save`` writes: a zip archive with ``<name>/data.pkl``, or (before
    PyTorch 1.6, ``_use_new_zipfile_serialization=False``) a bare pickle stream."""
    import zipfile

    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                return any(n.partition("/")[2] == "data.pkl" for n in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    with open(path, "rb") as fh:
        return fh.read(1) == b"\x80"  # pickle protocol 2+


def _load_torchscript(path: Path):
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # torch 2.9+: "torch.jit.load is deprecated"
            warnings.filterwarnings("ignore", category=FutureWarning,
                                    message=r".*torch\.jit.*deprecated")
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise DermcamError(f"not a loadable TorchScript file ({type(exc).__name__}: "
                           f"{(str(exc).splitlines() or [''])[0][:120]})", path) from exc


def _check_same_outputs(script, model, image_size: int, path: Path, arch: str) -> None:
    """The TorchScript module and ``arch`` with its weights give the same logits."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, image_size, image_size, generator=gen)
    was, was_s = model.training, script.training
    model.eval()
    script.eval()
    try:
        with torch.no_grad():
            a = model(x)
            try:
                b = script(x)
            except Exception as exc:
                raise DermcamError(f"the TorchScript model failed on a {image_size} px input "
                                   f"({type(exc).__name__})", path) from exc
    finally:
        model.train(was)
        script.train(was_s)
    if not isinstance(b, torch.Tensor) or b.shape != a.shape:
        got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
        raise DermcamError(f"the TorchScript model returns {got}, torchvision {arch} with its "
                           f"weights {tuple(a.shape)}: not the plain {arch}", path)
    diff = float((a - b).abs().max())
    if not torch.allclose(a, b, rtol=1e-3, atol=1e-4):
        raise DermcamError(f"the TorchScript model's logits differ from torchvision {arch} "
                           f"with its weights (max |difference| {diff:.3g}): its forward is "
                           f"not the plain {arch} (preprocessing or a changed head inside?); "
                           "save the plain model's state_dict instead", path)


def write_audit(out: str | Path, table, summary: dict[str, Any],
                config: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write an audit into the folder ``out``: ``attention.csv`` (``table``),
    ``attention_summary.json`` (``summary`` of :func:`audit_summary`, strict JSON: tables
    as lists of records, NaN as null) and, last, ``manifest.json`` (``config``, versions,
    status complete). Each file is written to a temporary name and renamed into place.
    Returns the paths by name."""
    from dermcam.io import write_csv, write_json
    from dermcam.run import Outputs, now, versions

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DermcamError("output path exists and is not a folder", out)
    files = Outputs(out)
    paths = {"table": files.attention, "summary": files.attention_summary,
             "manifest": files.manifest}
    write_csv(paths["table"], table)
    write_json(paths["summary"], {k: _records(v) for k, v in summary.items()})
    write_json(paths["manifest"], {
        "schema_version": 1, "kind": "dermcam-audit", "created": now(), "status": "complete",
        "versions": versions(), "config": config or {}, "n_images": len(table)})
    return paths


def _records(v):
    """A DataFrame as a list of row dicts (JSON-safe); anything else as it is."""
    return v.to_dict(orient="records") if hasattr(v, "to_dict") and hasattr(v, "columns") \
        else v


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
