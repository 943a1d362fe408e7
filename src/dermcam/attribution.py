"""Heatmaps through pytorch-grad-cam, batched, with the backward pass stopped early.

The CAM methods are pytorch-grad-cam's own (``get_cam_image`` of its classes);
this module only decides how the forward and backward passes run:

* **batched**: a whole batch of images goes through one forward and one backward;
* **backward stopped at the target layer** (``fast=True``, the default): every
  parameter is frozen for the duration and a forward hook re-roots the graph at
  the hooked activation (it returns the activation detached, with
  ``requires_grad``). Grad-CAM needs gradients only down to that layer, so the
  backward pass covers just the classifier head instead of the whole network.
  The heatmaps are identical to the full-backward ones (tested).

Heatmap direction: high = attended (tests fix this). Normalisation:
``"minmax"`` (the reference study's and pytorch-grad-cam's: ReLU, then per-image
min-max to [0, 1] and bilinear resize, exactly as ``cam(input_tensor, targets)``
returns it) or ``"raw"`` (ReLU'd map, resized, not
rescaled, so magnitudes compare across images).

Shape contracts: ``x (N, 3, H, W)`` normalised input -> heatmaps ``(N, S, S)``
float32 at the analysis size ``S`` and logits ``(N, C)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from dermcam.errors import DermcamError

log = logging.getLogger(__name__)


def _methods() -> dict[str, type]:
    from pytorch_grad_cam import (
        EigenCAM,
        GradCAM,
        GradCAMPlusPlus,
        HiResCAM,
        LayerCAM,
        XGradCAM,
    )

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM,
            "layercam": LayerCAM, "eigencam": EigenCAM, "xgradcam": XGradCAM}


#: CAM method names offered by dermcam (the registry the CLI's choices come from).
METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "eigencam", "xgradcam")
TARGETS = ("predicted", "true", "malignant")
NORMALIZATIONS = ("minmax", "raw")


def check_method(name: str) -> str:
    if name not in METHODS:
        raise DermcamError(f"unknown CAM method {name!r}; choose from {', '.join(METHODS)}")
    return name


@dataclass
class CamBatch:
    heatmaps: np.ndarray  # (N, S, S) float32
    probs: np.ndarray  # (N,) malignant probability
    targets: np.ndarray  # (N,) class the heatmap explains


def _reroot_hook(module, inputs, output):
    # A new leaf: backward stops here instead of running through the backbone.
    return output.detach().requires_grad_(True)


class CamExplainer:
    """Context manager computing batched CAMs for one model, layer and method.

    On exit it removes every hook, restores each parameter's ``requires_grad`` and
    the model's train/eval mode (pytorch-grad-cam switches models to eval).
    """

    def __init__(self, model: torch.nn.Module, target_layer: str, method: str = "gradcam",
                 fast: bool = True, channels_last: bool | None = None):
        self.model = model
        # NHWC runs depthwise convolutions (EfficientNet, MobileNet) ~30 % faster on CPU;
        # None = decide from the model (any depthwise convolution).
        if channels_last is None:
            channels_last = any(isinstance(m, torch.nn.Conv2d) and m.groups > 1
                                and m.groups == m.in_channels for m in model.modules())
        self.channels_last = channels_last
        self.layer_name = target_layer
        self.method = check_method(method)
        self.fast = fast
        self._cam = None
        self._handles: list = []
        self._saved_grad: list[bool] = []
        self._was_training = model.training

    def __enter__(self) -> CamExplainer:
        try:
            layer = self.model.get_submodule(self.layer_name)
        except AttributeError as exc:
            raise DermcamError(f"model has no layer {self.layer_name!r} to hook") from exc
        self._was_training = self.model.training
        self.model.eval()
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        params = list(self.model.parameters())
        self._saved_grad = [p.requires_grad for p in params]
        if self.fast:
            for p in params:
                p.requires_grad_(False)
            # Registered before pytorch-grad-cam's hooks (prepend), so theirs see the leaf.
            self._handles.append(layer.register_forward_hook(_reroot_hook, prepend=True))
        self._cam = _methods()[self.method](model=self.model, target_layers=[layer])
        self._layer = layer
        return self

    def __exit__(self, *exc) -> None:
        if self._cam is not None:
            self._cam.activations_and_grads.release()
            self._cam = None
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p, rg in zip(self.model.parameters(), self._saved_grad):
            p.requires_grad_(rg)
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)
        self.model.train(self._was_training)

    def compute(self, x: torch.Tensor, target: str | np.ndarray = "predicted",
                labels: np.ndarray | None = None, size: int | None = None,
                normalize: str = "minmax", threshold: float | None = None) -> CamBatch:
        """Heatmaps for a batch ``x (N, 3, H, W)``; ``target`` is a mode or ``(N,)`` classes.

        ``target="predicted"`` explains the model's decision: the arg-max class, or with
        ``threshold`` the class decided at that malignant-probability threshold.
        """
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        if self._cam is None:
            raise RuntimeError("use CamExplainer as a context manager")
        if x.ndim != 4:
            raise ValueError(f"expected (N, 3, H, W) input, got shape {tuple(x.shape)}")
        if normalize not in NORMALIZATIONS:
            raise DermcamError(f"unknown normalisation {normalize!r}; choose from "
                               f"{', '.join(NORMALIZATIONS)}")
        cam = self._cam
        size = size or x.shape[-1]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        needs_grad = cam.uses_gradients
        ctx = torch.enable_grad() if needs_grad else torch.no_grad()
        with ctx:
            outputs = cam.activations_and_grads(x)
            logits = outputs.detach().float()
            probs = torch.softmax(logits, 1)[:, 1].cpu().numpy()
            if isinstance(target, str):
                if target == "predicted" and threshold is not None:
                    classes = (probs >= threshold).astype(np.int64)
                elif target == "predicted":
                    classes = logits.argmax(1).cpu().numpy()
                elif target == "true":
                    if labels is None:
                        raise ValueError("target='true' needs labels")
                    classes = np.asarray(labels, dtype=np.int64)
                elif target == "malignant":
                    classes = np.ones(len(x), np.int64)
                else:
                    raise DermcamError(f"unknown target {target!r}; choose from "
                                       f"{', '.join(TARGETS)}")
            else:
                classes = np.asarray(target, dtype=np.int64)
            targets = [ClassifierOutputTarget(int(c)) for c in classes]
            if needs_grad:
                self.model.zero_grad(set_to_none=True)
                idx = torch.as_tensor(classes, device=outputs.device)
                loss = outputs.gather(1, idx[:, None]).sum()
                loss.backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = (cam.activations_and_grads.gradients[0].numpy()
                 if cam.activations_and_grads.gradients else None)
        raw = cam.get_cam_image(x, self._layer, targets, acts, grads, False)
        raw = np.maximum(raw, 0).astype(np.float32)
        cam.activations_and_grads.clear()
        heat = _resize(raw, size, normalize)
        return CamBatch(heat, probs.astype(np.float32), classes)


def _resize(raw: np.ndarray, size: int, normalize: str) -> np.ndarray:
    """``(N, h, w)`` ReLU'd maps -> ``(N, size, size)``; min-max first when asked (as grad-cam)."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    if normalize == "minmax":
        # Exactly pytorch-grad-cam's single-layer output: min-max, resize, min-max again.
        return scale_cam_image(scale_cam_image(raw, (size, size))).astype(np.float32)
    import cv2

    return np.stack([cv2.resize(m, (size, size)) for m in raw]).astype(np.float32) \
        if len(raw) else np.zeros((0, size, size), np.float32)


def reference_cams(model, target_layer: str, x: torch.Tensor, classes, method: str = "gradcam"
                   ) -> np.ndarray:
    """pytorch-grad-cam's own ``cam(input_tensor, targets)`` (full backward), for tests/benchmarks."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    was_training = model.training
    layer = model.get_submodule(target_layer)
    try:
        with _methods()[method](model=model, target_layers=[layer]) as cam:
            out = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        model.train(was_training)
    return out
