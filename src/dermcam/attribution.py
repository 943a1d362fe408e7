"""Batched CAM heatmaps through pytorch-grad-cam, with the backward pass stopped early.

The CAM methods are pytorch-grad-cam's own; here a whole batch runs one forward and one
backward, and with ``fast=True`` a hook re-roots the graph at the hooked layer so backward
covers only the head (heatmaps identical to the full backward, tested). EigenCAM's arbitrary
SVD sign is oriented to the channel-mean activation (:func:`orient_eigencam`). High =
attended. ``x (N, 3, H, W)`` -> heatmaps ``(N, S, S)`` float32; docs/ has the details."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dermcam.calibration import calibrated_prob
from dermcam.errors import DermcamError

#: The one registry of CAM methods: name -> pytorch-grad-cam class (imported at first use).
CAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM",
               "layercam": "LayerCAM", "eigencam": "EigenCAM", "xgradcam": "XGradCAM"}
METHODS = tuple(CAM_METHODS)


def cam_class(method: str) -> type:
    """pytorch-grad-cam's class for a method name; EigenCAM's with the reduced SVD."""
    import pytorch_grad_cam
    cls = getattr(pytorch_grad_cam, CAM_METHODS[check_method(method)])
    return _reduced_svd(cls) if method == "eigencam" else cls


def eigen_projection(activations: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``get_2d_projection`` with the reduced SVD: the same first
    component without the full SVD's ``(h*w) x (h*w)`` U (0.45 s per image at ResNet18's layer1)."""
    acts = np.nan_to_num(np.asarray(activations, np.float32), nan=0.0)
    out = []
    for a in acts:
        flat = a.reshape(a.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        vt = np.linalg.svd(flat, full_matrices=False)[2]
        out.append((flat @ vt[0]).reshape(a.shape[1:]))
    return np.float32(out)


@functools.cache
def _reduced_svd(eigencam: type) -> type:
    class ReducedSvdEigenCAM(eigencam):
        def get_cam_image(self, input_tensor, target_layer, targets, activations, grads,
                          eigen_smooth):
            return eigen_projection(activations)

    return ReducedSvdEigenCAM
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
    if not torch.is_grad_enabled():
        return None  # gradient-free method (EigenCAM): nothing to re-root
    # A new leaf: backward stops here instead of running through the backbone. A copy of
    # it, not the leaf, is returned: the next op may be in place (AlexNet's, VGG's ReLU),
    # which autograd refuses on a leaf; the copy also reproduces pytorch-grad-cam's own
    # activations and gradients around such an op (tested against fast=False on CPU).
    return output.detach().requires_grad_(True).clone()


def orient_eigencam(projections: np.ndarray, activations: np.ndarray) -> np.ndarray:
    """Flip each EigenCAM map whose correlation with the channel-mean activation is negative.

    ``projections (N, h, w)`` (before ReLU), ``activations (N, C, h, w)`` -> ``(N, h, w)``; an
    uncorrelated (e.g. constant) map is left as it is."""
    projections = np.asarray(projections)
    activations = np.asarray(activations)
    if activations.ndim != 4 or projections.shape != (activations.shape[0],
                                                      *activations.shape[2:]):
        raise ValueError(f"expected projections (N, h, w) and activations (N, C, h, w), got "
                         f"shapes {projections.shape} and {activations.shape}")
    n = len(projections)
    # NaN -> 0 as pytorch-grad-cam's get_2d_projection does before its SVD.
    mean = np.nan_to_num(activations.astype(np.float64)).mean(1).reshape(n, -1)
    proj = projections.astype(np.float64).reshape(n, -1)
    cov = ((proj - proj.mean(1, keepdims=True)) * (mean - mean.mean(1, keepdims=True))).sum(1)
    sign = np.where(cov < 0, -1.0, 1.0).astype(projections.dtype)
    return projections * sign[:, None, None]


def vit_reshape_transform(tokens: torch.Tensor) -> torch.Tensor:
    """torchvision ViT tokens ``(N, 1 + h*w, C)`` -> ``(N, C, h, w)``, class token dropped."""
    return token_reshape_transform(tokens, prefix=1)


def token_reshape_transform(tokens: torch.Tensor, prefix: int = 1,
                            grid: tuple[int, int] | None = None) -> torch.Tensor:
    """ViT-style tokens ``(N, prefix + h*w, C)`` -> ``(N, C, h, w)``, prefix tokens dropped;
    ``(h, w)`` is ``grid`` where it matches the patch count, else square."""
    if tokens.ndim != 3:
        raise ValueError(f"expected tokens (N, {prefix} + h*w, C), got shape "
                         f"{tuple(tokens.shape)}")
    n, length, c = tokens.shape
    patches = length - prefix
    if grid is not None and patches > 0 and grid[0] * grid[1] == patches:
        h, w = int(grid[0]), int(grid[1])
    else:
        h = w = math.isqrt(patches) if patches > 0 else 0
        if h == 0 or h * w != patches:
            raise ValueError(f"expected {prefix} prefix token(s) + a square grid of patch "
                             f"tokens, got shape {tuple(tokens.shape)}")
    return tokens[:, prefix:, :].reshape(n, h, w, c).permute(0, 3, 1, 2)


def nhwc_reshape_transform(x: torch.Tensor) -> torch.Tensor:
    """Swin feature maps ``(N, h, w, C)`` -> ``(N, C, h, w)``."""
    if x.ndim != 4:
        raise ValueError(f"expected (N, h, w, C) feature maps, got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2)


def timm_kind(model) -> str | None:
    """``"vit"``, ``"swin"``, ``"other"`` for a timm model; None for one not from timm."""
    if not type(model).__module__.startswith("timm."):
        return None
    names = {c.__name__ for c in type(model).__mro__ if c.__module__.startswith("timm.")}
    if names & {"VisionTransformer", "Eva", "Beit"} and hasattr(model, "num_prefix_tokens") \
            and hasattr(model, "blocks"):
        return "vit"
    if names & {"SwinTransformer", "SwinTransformerV2"} and hasattr(model, "layers"):
        return "swin"
    return "other"


def layer_reshape_transform(model: torch.nn.Module, layer_name: str) -> Callable | None:
    """The ``reshape_transform`` pytorch-grad-cam needs for ``layer_name``, or None.

    ViT layers emit tokens (timm: after ``num_prefix_tokens`` prefix tokens), Swin's stages
    and norms NHWC maps; every other layer is already ``(N, C, h, w)``."""
    from torchvision.models import SwinTransformer, VisionTransformer

    def under(prefix: str) -> bool:
        return layer_name == prefix or layer_name.startswith(prefix + ".")

    kind = timm_kind(model)
    if kind == "vit" and (under("blocks") or layer_name == "norm"):
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        return functools.partial(token_reshape_transform,
                                 prefix=int(model.num_prefix_tokens),
                                 grid=tuple(grid) if grid is not None else None)
    if kind == "swin" and (under("layers") or under("norm") or layer_name == "patch_embed"
                           or under("patch_embed.norm")):
        return nhwc_reshape_transform

    if isinstance(model, VisionTransformer) and under("encoder"):
        return vit_reshape_transform
    if isinstance(model, SwinTransformer) and (
            under("norm") or (under("features") and not under("features.0.0"))):
        return nhwc_reshape_transform
    return None


def default_target_layer(model: torch.nn.Module) -> tuple[str, Callable | None]:
    """``(layer name, reshape_transform or None)``: where Grad-CAM hooks ``model``.

    ViT: the last block's input norm (the head reads only the class token of the last output);
    Swin: the final norm; MaxViT: the last block; else the last ``Conv2d`` outside auxiliary
    classifiers, which do not run in eval mode."""
    from torchvision.models import MaxVit, SwinTransformer, VisionTransformer
    from torchvision.models.googlenet import InceptionAux as GoogLeNetAux
    from torchvision.models.inception import InceptionAux
    kind = timm_kind(model)
    if kind == "vit":
        name = f"blocks.{len(model.blocks) - 1}.norm1"
    elif kind == "swin":
        name = f"layers.{len(model.layers) - 1}"
    elif isinstance(model, VisionTransformer):
        last = list(model.encoder.layers.named_children())[-1][0]
        name = f"encoder.layers.{last}.ln_1"
    elif isinstance(model, SwinTransformer):
        name = "norm"
    elif isinstance(model, MaxVit):
        name = f"blocks.{len(model.blocks) - 1}"
    else:
        aux = [n for n, m in model.named_modules() if isinstance(m, InceptionAux | GoogLeNetAux)]
        names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)
                 and not any(n.startswith(a + ".") for a in aux)]
        if not names:
            raise DermcamError(f"model {type(model).__name__} has no Conv2d layer for Grad-CAM")
        name = names[-1]
    return name, layer_reshape_transform(model, name)


class CamExplainer:
    """Context manager computing batched CAMs for one model, layer and method; on exit it
    restores hooks, ``requires_grad`` and the train/eval mode."""

    def __init__(self, model: torch.nn.Module, target_layer: str, method: str = "gradcam",
                 fast: bool = True, channels_last: bool | None = None,
                 reshape_transform: Callable | None = None):
        self.model = model
        self.reshape_transform = reshape_transform  # None: layer_reshape_transform's
        # NHWC runs depthwise convolutions ~30 % faster on CPU; None: any depthwise conv
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
            # prepended, so pytorch-grad-cam's hooks see the re-rooted output
            self._handles.append(layer.register_forward_hook(_reroot_hook, prepend=True))
        reshape = self.reshape_transform or layer_reshape_transform(self.model, self.layer_name)
        self._cam = cam_class(self.method)(model=self.model, target_layers=[layer],
                                            reshape_transform=reshape)
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
        """Heatmaps for ``x (N, 3, H, W)``; ``target`` is a mode or ``(N,)`` classes
        (``"predicted"``: the class decided at ``threshold``, else the arg-max)."""
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
        param = next(self.model.parameters(), None)
        if param is not None:  # the batch goes where the model is (--device)
            x = x.to(param.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        needs_grad = cam.uses_gradients
        with torch.enable_grad() if needs_grad else torch.no_grad():
            outputs = cam.activations_and_grads(x)
            if not cam.activations_and_grads.activations:
                raise DermcamError(f"layer {self.layer_name!r} did not run in the forward "
                                   "pass (an auxiliary head?); hook one that does")
            probs = calibrated_prob(self.model, outputs.detach().float()).cpu().numpy()
            if not isinstance(target, str):
                classes = np.asarray(target, dtype=np.int64)
            elif target == "predicted":  # the calibrated arg-max, or at ``threshold``
                classes = (probs >= (0.5 if threshold is None else threshold)).astype(np.int64)
            elif target == "true" and labels is not None:
                classes = np.asarray(labels, dtype=np.int64)
            elif target == "malignant":
                classes = np.ones(len(x), np.int64)
            elif target == "true":
                raise ValueError("target='true' needs labels")
            else:
                raise DermcamError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
            targets = [ClassifierOutputTarget(int(c)) for c in classes]
            if needs_grad:
                self.model.zero_grad(set_to_none=True)
                idx = torch.as_tensor(classes, device=outputs.device)
                outputs.gather(1, idx[:, None]).sum().backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = (cam.activations_and_grads.gradients[0].numpy()
                 if cam.activations_and_grads.gradients else None)
        raw = cam.get_cam_image(x, self._layer, targets, acts, grads, False)
        if self.method == "eigencam":
            raw = orient_eigencam(raw, acts)
        raw = np.maximum(raw, 0).astype(np.float32)
        cam.activations_and_grads.clear()
        return CamBatch(resize_heatmaps(raw, size, normalize), probs.astype(np.float32), classes)


def resize_heatmaps(raw: np.ndarray, size: int, normalize: str) -> np.ndarray:
    """``(N, h, w)`` ReLU'd maps -> ``(N, size, size)``; min-max first when asked (as grad-cam)."""
    from pytorch_grad_cam.utils.image import scale_cam_image
    if normalize == "minmax":
        # Exactly pytorch-grad-cam's single-layer output: min-max, resize, min-max again.
        return scale_cam_image(scale_cam_image(raw, (size, size))).astype(np.float32)
    import cv2
    return np.stack([cv2.resize(m, (size, size)) for m in raw]).astype(np.float32) \
        if len(raw) else np.zeros((0, size, size), np.float32)


def reference_cams(model, target_layer: str, x: torch.Tensor, classes, method: str = "gradcam",
                   reshape_transform: Callable | None = None) -> np.ndarray:
    """pytorch-grad-cam's own full-backward ``cam(x, targets)``, for tests and benchmarks
    (EigenCAM keeps the library's arbitrary sign)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    library = getattr(pytorch_grad_cam, CAM_METHODS[check_method(method)])  # not cam_class's
    was_training = model.training
    layer = model.get_submodule(target_layer)
    reshape = reshape_transform or layer_reshape_transform(model, target_layer)
    try:
        with library(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
            out = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        model.train(was_training)
    return out
