"""Heatmaps through pytorch-grad-cam, batched, with the backward pass stopped early.

The CAM methods are pytorch-grad-cam's own (``get_cam_image`` of its classes);
this module only decides how the forward and backward passes run:

* **batched**: a whole batch of images goes through one forward and one backward;
* **backward stopped at the target layer** (``fast=True``, the default): every
  parameter is frozen for the duration and a forward hook re-roots the graph at
  the hooked activation (it returns the activation detached, with
  ``requires_grad``). Grad-CAM needs gradients only down to that layer, so the
  backward pass covers just the classifier head instead of the whole network.
  The heatmaps are identical to the full-backward ones (tested), also when the
  layer is followed by an in-place op (AlexNet's and VGG's ``ReLU(inplace=True)``):
  the hook returns a copy of the new leaf, never the leaf itself.

Target layers: :func:`default_target_layer` picks one for any torchvision
classifier: the last ``Conv2d`` that runs in the forward pass for CNNs, the last
block's input norm for ViT (the class token reads the patch tokens only through
that block's attention), the final norm for Swin, the last block for MaxViT.
timm models: a ViT / DeiT's last block's ``norm1``, a Swin's last stage.
Token layers need a pytorch-grad-cam ``reshape_transform`` to ``(N, C, h, w)``
(:func:`layer_reshape_transform`, which :class:`CamExplainer` applies by default).

EigenCAM orientation: the first principal component's sign is arbitrary (LAPACK
picks it, and it changes with the activations' memory layout, e.g. channels-last),
so pytorch-grad-cam's EigenCAM can return the inverted map. dermcam orients each
raw projection, before ReLU and min-max, to correlate positively with the hooked
layer's channel-mean activation (:func:`orient_eigencam`); its maps equal
pytorch-grad-cam's up to that sign (tested).

Heatmap direction: high = attended (tests fix this). Normalisation:
``"minmax"`` (the reference study's and pytorch-grad-cam's: ReLU, then per-image
min-max to [0, 1] and bilinear resize, exactly as ``cam(input_tensor, targets)``
returns it) or ``"raw"`` (ReLU'd map, resized, not
rescaled, so magnitudes compare across images).

Shape contracts: ``x (N, 3, H, W)`` normalised input -> heatmaps ``(N, S, S)``
float32 at the analysis size ``S`` and logits ``(N, C)``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dermcam.calibration import calibrated_prob
from dermcam.errors import DermcamError

log = logging.getLogger(__name__)


#: The CAM methods dermcam offers: name -> pytorch-grad-cam class, the one registry (the
#: CLI's choices, the localisation benchmark's candidates and every lookup come from it).
#: The classes are imported when first used (:func:`cam_class`), keeping import light.
CAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM",
               "layercam": "LayerCAM", "eigencam": "EigenCAM", "xgradcam": "XGradCAM"}
METHODS = tuple(CAM_METHODS)


def cam_class(method: str) -> type:
    """pytorch-grad-cam's class for a dermcam method name (DermcamError if unknown);
    EigenCAM's with the reduced SVD (:func:`eigen_projection`)."""
    import pytorch_grad_cam

    cls = getattr(pytorch_grad_cam, CAM_METHODS[check_method(method)])
    return _reduced_svd(cls) if method == "eigencam" else cls


def eigen_projection(activations: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``get_2d_projection`` (each image's activations, centred, on
    their first principal component) with the reduced SVD: the same component, without
    its full SVD's ``(h*w) x (h*w)`` matrix U (at 224 px ResNet18's layer1, 3136 x 3136
    per image: 0.45 s each on 2 cores). NaN activations count as 0, as there."""
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
    # A new leaf: backward stops here instead of running through the backbone. The
    # layer's output becomes a copy of that leaf, not the leaf itself, because the next
    # op may be in place (AlexNet features.10 -> ReLU(inplace=True), VGG, DenseNet's
    # F.relu(..., inplace=True)) and autograd refuses in-place ops on a leaf (or a view
    # of one) that requires grad.
    #
    # The copy also keeps pytorch-grad-cam's own behaviour (what reference_cams and
    # fast=False compute), which with an in-place op is this: its forward hooks run
    # after ours and see the copy. The activation it stores is `output.cpu().detach()`:
    # on CPU that shares the output's storage, so the in-place op overwrites it and the
    # CAM uses the *post-op* activation (ReLU'd for AlexNet); on CUDA `.cpu()` copies
    # at hook time, so the stored activation is the *pre-op* one. Its gradient hook is
    # registered before the op and so receives d(score)/d(pre-op output) on either
    # device. Returning the leaf's copy reproduces this exactly (tested on CPU against
    # fast=False, reference_cams and a closed-form case; the CUDA case is read from
    # grad-cam 1.5.7's activations_and_gradients.py, not tested here).
    leaf = output.detach().requires_grad_(True)
    return leaf.clone()


def orient_eigencam(projections: np.ndarray, activations: np.ndarray) -> np.ndarray:
    """Fix the arbitrary SVD sign of EigenCAM projections.

    ``projections (N, h, w)`` raw first-component projections (before ReLU),
    ``activations (N, C, h, w)`` the hooked layer's activations -> ``(N, h, w)``:
    each map, negated where it correlates negatively with the channel-mean
    activation ``activations.mean(1)``. A map uncorrelated with it (including a
    constant one) is left as it is.
    """
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
    if tokens.ndim != 3:
        raise ValueError(f"expected ViT tokens (N, 1 + h*w, C), got shape {tuple(tokens.shape)}")
    n, length, c = tokens.shape
    side = math.isqrt(length - 1) if length > 1 else 0
    if side == 0 or side * side != length - 1:
        raise ValueError(f"expected 1 class token + a square grid of patch tokens, got shape "
                         f"{tuple(tokens.shape)}")
    return tokens[:, 1:, :].reshape(n, side, side, c).permute(0, 3, 1, 2)


def token_reshape_transform(tokens: torch.Tensor, prefix: int = 1,
                            grid: tuple[int, int] | None = None) -> torch.Tensor:
    """ViT-style tokens ``(N, prefix + h*w, C)`` -> ``(N, C, h, w)``, the ``prefix`` tokens
    (class, distillation, register) dropped; ``(h, w)`` is ``grid`` where it matches the
    number of patch tokens, else square."""
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
    """``"vit"`` (token blocks with prefix tokens), ``"swin"`` (NHWC stages), ``"other"``
    for any other timm model, None for a model not from timm."""
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

    ViT encoder layers emit token sequences, Swin's stages and final norm NHWC maps;
    every other layer (any CNN's, Swin's patch-embedding conv, MaxViT's) is already
    ``(N, C, h, w)``. timm: a ViT / DeiT's blocks and final norm emit
    ``(N, prefix + h*w, C)`` tokens (``model.num_prefix_tokens`` class / distillation /
    register tokens first), a Swin's patch embedding, stages and final norm NHWC maps.
    """
    import functools

    from torchvision.models import SwinTransformer, VisionTransformer

    def under(prefix: str) -> bool:
        return layer_name == prefix or layer_name.startswith(prefix + ".")

    kind = timm_kind(model)
    if kind == "vit" and (under("blocks") or layer_name == "norm"):
        pe = getattr(model, "patch_embed", None)
        grid = getattr(pe, "grid_size", None)
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
    """``(layer name, reshape_transform or None)``: where Grad-CAM should hook ``model``.

    * ViT: the last encoder block's ``ln_1`` (the head reads only the class token of
      the last block's output, so the patch tokens there get no gradient);
    * Swin: the final ``norm`` (NHWC, just before the pooling);
    * MaxViT: the last block (NCHW);
    * timm ViT / DeiT: the last block's ``norm1``; timm Swin: the last stage (NHWC);
    * anything else: the last ``Conv2d``, skipping auxiliary classifiers (GoogLeNet's
      ``aux2``, Inception-v3's ``AuxLogits``) that do not run in eval mode.
    """
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
    """Context manager computing batched CAMs for one model, layer and method.

    On exit it removes every hook, restores each parameter's ``requires_grad`` and
    the model's train/eval mode (pytorch-grad-cam switches models to eval).
    ``reshape_transform`` (pytorch-grad-cam's: the layer's output -> ``(N, C, h, w)``)
    defaults to :func:`layer_reshape_transform`'s, so ViT / Swin token layers work as given.
    """

    def __init__(self, model: torch.nn.Module, target_layer: str, method: str = "gradcam",
                 fast: bool = True, channels_last: bool | None = None,
                 reshape_transform: Callable | None = None):
        self.model = model
        # pytorch-grad-cam's reshape_transform (activations and gradients -> (N, C, h, w));
        # None = derive it from the model and layer (token layers of ViT / Swin).
        self.reshape_transform = reshape_transform
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
            # Registered before pytorch-grad-cam's hooks (prepend), so theirs see the
            # re-rooted output (a copy of the new leaf, see _reroot_hook).
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
        param = next(self.model.parameters(), None)
        if param is not None:  # the batch goes where the model is (--device)
            x = x.to(param.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        needs_grad = cam.uses_gradients
        ctx = torch.enable_grad() if needs_grad else torch.no_grad()
        with ctx:
            outputs = cam.activations_and_grads(x)
            if not cam.activations_and_grads.activations:
                raise DermcamError(f"layer {self.layer_name!r} did not run in the forward "
                                   "pass (an auxiliary head?); hook one that does")
            logits = outputs.detach().float()
            # calibrated as everywhere else (the model's temperature and bias)
            probs = calibrated_prob(self.model, logits).cpu().numpy()
            if isinstance(target, str):
                if target == "predicted" and threshold is not None:
                    classes = (probs >= threshold).astype(np.int64)
                elif target == "predicted":  # the calibrated arg-max
                    classes = (probs >= 0.5).astype(np.int64)
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
        if self.method == "eigencam":
            raw = orient_eigencam(raw, acts)
        raw = np.maximum(raw, 0).astype(np.float32)
        cam.activations_and_grads.clear()
        heat = resize_heatmaps(raw, size, normalize)
        return CamBatch(heat, probs.astype(np.float32), classes)


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
    """pytorch-grad-cam's own ``cam(input_tensor, targets)`` (full backward), for tests/benchmarks.

    Unlike :class:`CamExplainer`, EigenCAM maps keep the library's arbitrary SVD sign.
    ``reshape_transform`` None = :func:`layer_reshape_transform`, as in CamExplainer.
    """
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
