"""One factory: model name -> torchvision classifier with a 2-class head.

The registry knows, for every supported architecture, which layer Grad-CAM
should hook (the last convolutional block) and how the weights were obtained.
Any other torchvision classification model can be built by name too; its CAM
layer defaults to the last ``Conv2d``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from dermcam.errors import DermcamError

log = logging.getLogger(__name__)

NUM_CLASSES = 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

@dataclass(frozen=True)
class ModelSpec:
    """What dermcam knows about one architecture (cf. timm's pretrained configs).

    ``cam_layer`` is the study's Grad-CAM layer (the last convolutional block);
    ``candidate_layers`` are the depths the localisation benchmark scores, shallow to
    deep, each a module name (``model.get_submodule``); ``head`` is the Linear layer
    replaced by a 2-class one.
    """

    name: str
    display_name: str
    cam_layer: str
    candidate_layers: tuple[str, ...]
    head: str


#: The architectures dermcam was built and validated for; the CLI's default triple.
REGISTRY: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("resnet18", "ResNet18", "layer4", ("layer1", "layer2", "layer3", "layer4"), "fc"),
    ModelSpec("efficientnet_b0", "EfficientNet-B0", "features.8",
              ("features.2", "features.3", "features.4", "features.5", "features.6",
               "features.8"), "classifier.1"),
    ModelSpec("mobilenet_v2", "MobileNet-V2", "features.18",
              ("features.3", "features.6", "features.10", "features.13", "features.17",
               "features.18"), "classifier.1"),
)}
DEFAULT_MODELS = tuple(REGISTRY)


@dataclass
class ModelInfo:
    name: str
    display_name: str
    target_layer: str
    weights_source: str  # "imagenet:<enum>" | "none (random init)" | "file:<path>"
    candidate_layers: tuple[str, ...] = ()


def display_name(name: str) -> str:
    spec = REGISTRY.get(name)
    return spec.display_name if spec else name


def layer_grid(model, layers, image_size: int) -> dict[str, tuple[int, int]]:
    """Spatial size ``(h, w)`` of each named layer's output at ``image_size`` (one dry run)."""
    import torch

    sizes: dict[str, tuple[int, int]] = {}
    handles = []
    for name in layers:
        def hook(_m, _i, out, name=name):
            t = out[0] if isinstance(out, (tuple, list)) else out
            sizes[name] = tuple(int(v) for v in t.shape[-2:]) if t.ndim == 4 else (0, 0)
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sizes


def available_models() -> list[str]:
    from torchvision import models as tvm

    return sorted(set(REGISTRY) | set(tvm.list_models(module=tvm)))


def _get_submodule(model, dotted: str):
    return model.get_submodule(dotted)


def _set_submodule(model, dotted: str, module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def head_name(model) -> str:
    """The classifier head: the last Linear layer, or SqueezeNet's 1x1 Conv2d classifier."""
    import torch.nn as nn

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        convs = [n for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d) and n.startswith("classifier.")]
        if convs:
            return convs[-1]
        raise DermcamError(f"model {type(model).__name__} has no Linear head to replace")
    return names[-1]


def check_model_name(name: str) -> str:
    from torchvision import models as tvm

    if name in REGISTRY:
        return name
    if name in tvm.list_models(module=tvm):
        return name
    raise DermcamError(
        f"unknown model {name!r}; choose one of {', '.join(REGISTRY)} "
        "or another torchvision classification model (see 'dermcam models')")


def imagenet_weights_path(name: str) -> Path:
    """Where torchvision's weights API caches ``name``'s default ImageNet weights."""
    import torch
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    filename = os.path.basename(weights.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def imagenet_available(name: str) -> bool:
    try:
        return imagenet_weights_path(name).exists()
    except Exception:
        return False


def _load_imagenet(name: str):
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    path = imagenet_weights_path(name)
    if not path.exists():
        log.info("ImageNet weights for %s not cached at %s; downloading", name, path)
    cached = path.exists()
    try:
        if cached:  # a hand-copied file is checked before torch unpickles it
            verify_weights_file(path)
        state = weights.get_state_dict(progress=False, check_hash=False)
    except DermcamError:
        raise
    except Exception as exc:
        raise DermcamError(
            f"ImageNet weights for {name} are not cached at {path} and could not be downloaded "
            f"({type(exc).__name__}). Fix: on a machine with internet run "
            f"python -c \"import torchvision; torchvision.models.get_model_weights('{name}')"
            f".DEFAULT.get_state_dict()\" and copy {path.name} into {path.parent} "
            "(or set TORCH_HOME), or train from scratch with --weights none") from exc
    if not cached:
        verify_weights_file(path)  # a fresh download too, checked the same way
    return weights, state


def verify_weights_file(path: str | Path) -> None:
    """Check a torchvision weights file against the hash prefix in its name.

    torchvision names its files ``<arch>-<first hex digits of the SHA-256>.pth``;
    torch.hub's ``check_hash`` compares that prefix with the file's digest, which is what
    this does for a file that was copied by hand. No prefix in the name: nothing to check.
    ``DERMCAM_TRUST_WEIGHTS=1`` skips the check, for weights of one's own making saved
    under torchvision's name (the test suite's stand-ins for ImageNet weights).
    """
    import hashlib
    import re

    path = Path(path)
    m = re.search(r"-([a-f0-9]{6,})\.", path.name)
    if m is None or not path.exists() or os.environ.get("DERMCAM_TRUST_WEIGHTS") == "1":
        return
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    got = digest.hexdigest()
    if not got.startswith(m.group(1)):
        raise DermcamError(
            f"ImageNet weights file does not match torchvision's: its SHA-256 begins "
            f"{got[:len(m.group(1))]}, the name says {m.group(1)} (truncated or damaged copy, "
            f"or another file under that name); delete it and download or copy it again "
            "(DERMCAM_TRUST_WEIGHTS=1 accepts weights of your own making)",
            path)


def load_state_file(path: str | Path) -> dict:
    """Load a checkpoint or state dict safely (``weights_only=True``: no code is executed)."""
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise DermcamError("weights file not found", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DermcamError(
            "refused: the file holds Python objects other than tensors "
            "(loaded with weights_only=True, nothing was executed)", path) from exc
    except Exception as exc:
        raise DermcamError(f"not a readable PyTorch weights file ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:120]})", path) from exc
    if not isinstance(obj, dict):
        raise DermcamError("expected a state dict or a dermcam checkpoint", path)
    return obj


def build_model(name: str, weights: str = "none", num_classes: int = NUM_CLASSES):
    """Build ``name`` with a ``num_classes`` head.

    ``weights``: ``"imagenet"`` (torchvision's weights API and its TORCH_HOME
    cache; a clear error when they are neither cached nor downloadable; never a
    silent fallback), ``"none"`` (random init) or a path to a state dict or a
    dermcam checkpoint. Returns ``(model, ModelInfo)``.
    """
    import torch.nn as nn
    from torchvision.models import get_model

    name = check_model_name(name)
    spec = REGISTRY.get(name)
    disp, target, head = (spec.display_name, spec.cam_layer, spec.head) if spec else \
        (name, None, None)
    source = "none (random init)"
    file_state = None
    if weights == "imagenet":
        wenum, state = _load_imagenet(name)
        model = get_model(name, weights=None)
        model.load_state_dict(state)
        source = f"imagenet:{wenum}"
    elif weights in ("none", "", None):
        model = get_model(name, weights=None)
    else:
        file_state = load_state_file(weights)
        model = get_model(name, weights=None)
        source = f"file:{Path(weights).resolve()}"
    from dermcam.attribution import default_target_layer

    head = head or head_name(model)
    target = target or default_target_layer(model)[0]
    old = _get_submodule(model, head)
    if isinstance(old, nn.Conv2d):  # SqueezeNet: a 1x1 convolution scores the classes
        if old.out_channels != num_classes:
            _set_submodule(model, head, nn.Conv2d(old.in_channels, num_classes, 1))
    elif old.out_features != num_classes:
        _set_submodule(model, head, nn.Linear(old.in_features, num_classes))
    if file_state is not None:
        load_weights_into(model, name, file_state, weights, head)
    return model, ModelInfo(name, disp, target, source,
                            spec.candidate_layers if spec else (target,))


def state_dict_of(obj: dict):
    """The state dict in ``obj`` (a dermcam checkpoint's ``state_dict``, or ``obj`` itself),
    with the ``module.`` prefix ``torch.nn.DataParallel`` adds to every key removed."""
    state = obj.get("state_dict", obj)
    if isinstance(state, dict) and state and all(str(k).startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights_into(model, name: str, obj: dict, path, head: str | None = None) -> None:
    """Load a state dict (or dermcam checkpoint dict) into ``model``, checking the
    architecture; keys saved from ``DataParallel`` (``module.`` prefix) are accepted."""
    state = state_dict_of(obj)
    arch = obj.get("arch")
    if arch is not None and arch != name:
        raise DermcamError(f"checkpoint is for architecture {arch!r}, not {name!r}", path)
    if not isinstance(state, dict) or not state:
        raise DermcamError("checkpoint holds no state dict", path)
    own = model.state_dict()
    head = head or head_name(model)
    # An ImageNet (1000-class) state dict fits everything but the head: keep our head.
    state = {k: v for k, v in state.items()
             if not (k.startswith(head + ".") and k in own and v.shape != own[k].shape)}
    missing = [k for k in own if k not in state and not k.startswith(head + ".")]
    unexpected = [k for k in state if k not in own]
    shape_bad = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shape_bad:
        raise DermcamError(
            f"weights do not fit {name} (missing {len(missing)}, unexpected {len(unexpected)}, "
            f"wrong shape {len(shape_bad)} tensors): checkpoint for another architecture?", path)
    model.load_state_dict(state, strict=False)
