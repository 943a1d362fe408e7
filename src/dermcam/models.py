"""Model factory: name -> torchvision (or ``timm:<arch>``) classifier with a 2-class head.

The registry names each architecture's Grad-CAM layer; models trained elsewhere are made to
take dermcam's inputs and return two logits ``[benign, malignant]`` by :func:`attach_io`."""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from dermcam.errors import DermcamError, first_line
from dermcam.weight_files import fit_weights, load_state_file, read_weights, verify_weights_file

log = logging.getLogger(__name__)

NUM_CLASSES = 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

@dataclass(frozen=True)
class ModelSpec:
    """One architecture: its Grad-CAM layer (the last conv block), the candidate layers the
    localisation benchmark scores (shallow to deep) and the Linear head to replace."""

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


TIMM_PREFIX = "timm:"


def display_name(name: str) -> str:
    spec = REGISTRY.get(name)
    return spec.display_name if spec else name


def layer_grid(model, layers, image_size: int) -> dict[str, tuple[int, int]]:
    """Spatial size ``(h, w)`` of each named layer's output at ``image_size`` (one dry run)."""
    import torch

    from dermcam.attribution import layer_reshape_transform
    sizes: dict[str, tuple[int, int]] = {}
    handles = []
    for name in layers:
        def hook(_m, _i, out, name=name, grid=layer_reshape_transform(model, name)):
            t = out[0] if isinstance(out, (tuple, list)) else out
            t = grid(t) if grid is not None else t  # tokens, NHWC -> (N, C, h, w)
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


def _set_submodule(model, dotted: str, module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def head_name(model) -> str:
    """The classifier head: timm's ``get_classifier()``, else the last Linear layer
    (SqueezeNet: its 1x1 Conv2d classifier)."""
    import torch.nn as nn

    from dermcam.attribution import timm_kind
    if timm_kind(model) and hasattr(model, "get_classifier"):
        clf = model.get_classifier()
        found = [n for n, m in model.named_modules() if m is clf and n]
        if found and isinstance(getattr(clf, "weight", None), nn.Parameter):
            return found[0]
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
    if name.startswith(TIMM_PREFIX):
        return _check_timm_name(name)
    if name in REGISTRY or name in tvm.list_models(module=tvm):
        return name
    raise DermcamError(
        f"unknown model {name!r}; choose one of {', '.join(REGISTRY)} "
        "or another torchvision classification model (see 'dermcam models')")


def _check_timm_name(name: str) -> str:
    arch = name[len(TIMM_PREFIX):]
    try:
        import timm
    except ImportError as exc:
        raise DermcamError(f"model {name!r} needs timm, which is not installed: "
                           "pip install timm") from exc
    if arch and timm.is_model(arch):
        return name
    m = re.match(r"[A-Za-z]+", arch)
    pattern = m.group(0).lower() if m else "vit"
    raise DermcamError(
        f"unknown timm model {arch!r}; list the names with python -c \"import timm; "
        f"print(timm.list_models('*{pattern}*'))\" and give one as timm:<name>")


def _evenly_spaced(n: int, k: int = 4) -> list[int]:
    """``k`` block indices evenly spaced over ``range(n)``, ending at the last."""
    return sorted({max(n - 1 - (k - 1 - j) * n // k, 0) for j in range(k)}) if n else []


@functools.cache
def _registry_fingerprint(name: str) -> tuple:
    import torch
    from torchvision.models import get_model
    with torch.device("meta"):  # structure only: no memory, no initialisation cost
        model = get_model(name, weights=None)
    return _fingerprint(model)


def _fingerprint(model) -> tuple:
    return (type(model).__name__,
            tuple((n, type(m).__name__) for n, m in model.named_modules()))


def _registry_spec(model) -> ModelSpec | None:
    """The registry entry whose torchvision architecture ``model`` is (any head size)."""
    if not type(model).__module__.startswith("torchvision."):
        return None
    name = {"ResNet": "resnet18", "EfficientNet": "efficientnet_b0",
            "MobileNetV2": "mobilenet_v2"}.get(type(model).__name__)
    return REGISTRY[name] if name and _fingerprint(model) == _registry_fingerprint(name) else None


def candidate_layers(model) -> tuple[str, ...]:
    """The layers worth explaining, shallow to deep; the last is the default CAM layer.

    Registry: its :class:`ModelSpec`; timm CNNs: the last 4 of ``feature_info``; ViT / DeiT: the
    input norm of 4 evenly spaced blocks; Swin: the stages; else :func:`default_target_layer`'s."""
    import torch.nn as nn
    from torchvision.models import SwinTransformer, VisionTransformer
    from torchvision.models.swin_transformer import SwinTransformerBlock, SwinTransformerBlockV2

    from dermcam.attribution import default_target_layer, timm_kind
    spec = _registry_spec(model)
    if spec is not None:
        return spec.candidate_layers
    kind = timm_kind(model)
    modules = dict(model.named_modules())
    if kind == "vit":
        return tuple(f"blocks.{i}.norm1" for i in _evenly_spaced(len(model.blocks)))
    if kind == "swin":
        return tuple(f"layers.{n}" for n, _ in model.layers.named_children())
    if kind == "other" and not hasattr(model, "num_prefix_tokens"):
        info = getattr(model, "feature_info", None)
        names = [f.get("module") for f in info] if isinstance(info, list) else []
        names = [n for n in names if n and n in modules]
        if names:
            return tuple(names[-4:])
    if isinstance(model, VisionTransformer):
        blocks = [n for n, _ in model.encoder.layers.named_children()]
        return tuple(f"encoder.layers.{blocks[i]}.ln_1" for i in _evenly_spaced(len(blocks)))
    if isinstance(model, SwinTransformer):
        stages = [f"features.{n}" for n, m in model.features.named_children()
                  if isinstance(m, nn.Sequential) and any(
                      isinstance(c, SwinTransformerBlock | SwinTransformerBlockV2)
                      for c in m.children())]
        if stages:
            return tuple(stages)
    return (default_target_layer(model)[0],)


def known_models(image_size: int) -> list[dict]:
    """The registry for ``dermcam models``: names, CAM layer, each candidate layer's grid
    at ``image_size`` and where ImageNet weights would be read from (None when cached)."""
    return [{"name": name, "display_name": spec.display_name, "cam_layer": spec.cam_layer,
             "grid": layer_grid(build_model(name, weights="none")[0], spec.candidate_layers,
                                image_size),
             "weights": None if imagenet_available(name) else imagenet_weights_path(name)}
            for name, spec in REGISTRY.items()]


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
    cached = path.exists()
    if not cached:
        log.info("ImageNet weights for %s not cached at %s; downloading", name, path)
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


def build_model(name: str, weights: str = "none", num_classes: int = NUM_CLASSES,
                image_size: int | None = None):
    """``(model, ModelInfo)``: ``name`` with a ``num_classes`` head.

    ``weights``: ``"imagenet"`` (torchvision's cache; a clear error, never a silent fallback,
    when not cached nor downloadable), ``"none"`` or a state dict / checkpoint file.
    ``timm:<arch>`` is built at ``image_size`` where it takes ``img_size`` (ViT, Swin)."""
    import torch.nn as nn
    from torchvision.models import get_model
    name = check_model_name(name)
    if name.startswith(TIMM_PREFIX):
        return _build_timm(name, weights, num_classes, image_size)
    spec = REGISTRY.get(name)
    source, file_state = "none (random init)", None
    if weights == "imagenet":
        wenum, state = _load_imagenet(name)
        model = get_model(name, weights=None)
        model.load_state_dict(state)
        source = f"imagenet:{wenum}"
    else:
        if weights not in ("none", "", None):
            file_state = load_state_file(weights)
            source = f"file:{Path(weights).resolve()}"
        model = get_model(name, weights=None)
    head = spec.head if spec else head_name(model)
    old = model.get_submodule(head)
    conv = isinstance(old, nn.Conv2d)  # SqueezeNet: a 1x1 convolution scores the classes
    if (old.out_channels if conv else old.out_features) != num_classes:
        _set_submodule(model, head, nn.Conv2d(old.in_channels, num_classes, 1) if conv
                       else nn.Linear(old.in_features, num_classes))
    if file_state is not None:
        load_weights_into(model, name, file_state, weights, head)
    layers = spec.candidate_layers if spec else candidate_layers(model)
    return model, ModelInfo(name, display_name(name), spec.cam_layer if spec else layers[-1],
                            source, layers)


def _build_timm(name: str, weights, num_classes: int, image_size: int | None):
    import timm
    arch = name[len(TIMM_PREFIX):]
    if weights == "imagenet":
        raise DermcamError(f"dermcam builds {name} without downloading weights; save the "
                           "trained model's state_dict to a file and give that file")
    kwargs = {"pretrained": False, "num_classes": int(num_classes)}
    model = None
    if image_size is not None:
        try:
            cfg = timm.get_pretrained_cfg(arch)
        except Exception:  # no pretrained config: try the size
            cfg = None
        default = tuple(cfg.input_size[-2:]) if cfg is not None and cfg.input_size else None
        if default != (int(image_size), int(image_size)):
            try:
                model = timm.create_model(arch, img_size=int(image_size), **kwargs)
            except TypeError:  # a CNN: any input size, no img_size argument
                model = None
            except Exception as exc:  # e.g. a size the windows or patches do not divide
                raise DermcamError(f"timm cannot build {arch} for {image_size} px images "
                                   f"({first_line(exc)}); choose another image size") from exc
    if model is None:
        model = timm.create_model(arch, **kwargs)
    source = "none (random init)"
    if weights not in ("none", "", None):
        state, _form, _script = read_weights(weights)
        fit_weights(model, state, name, weights)
        source = f"file:{Path(weights).resolve()}"
    layers = candidate_layers(model)
    return model, ModelInfo(name, name, layers[-1], source, layers)


def state_dict_of(obj: dict):
    """The state dict in ``obj`` (a dermcam checkpoint's ``state_dict``, or ``obj`` itself),
    with the ``module.`` prefix ``torch.nn.DataParallel`` adds to every key removed."""
    state = obj.get("state_dict", obj)
    if isinstance(state, dict) and state and all(str(k).startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights_into(model, name: str, obj: dict, path, head: str | None = None) -> None:
    """Load a state dict or dermcam checkpoint into ``model``, checking the architecture."""
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


# --- models trained elsewhere ("bring your own model") -----------------------------------

def head_outputs(model, state: dict) -> int:
    """The number of outputs of ``model``'s head in ``state``; a one-line error if absent."""
    head = head_name(model)
    w = state.get(f"{head}.weight")
    if w is None or not hasattr(w, "shape") or len(w.shape) < 1:
        raise DermcamError(f"the weights hold no classifier head ({head}.weight): save the "
                           "whole trained classifier's state_dict, head included")
    return int(w.shape[0])


#: Attribute of a model made to fit dermcam's contract by :func:`attach_io` (a plain dict).
IO_ATTR = "dermcam_io"


def attach_io(model, outputs: int, malignant: tuple[int, ...] = (1,),
              mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Make ``model`` take ImageNet-normalised input and return ``[benign, malignant]``.

    In place, through hooks on the root module: the input is re-normalised to the model's own
    ``mean``/``std``; ``outputs`` logits map to two: 1 -> ``[0, z]`` (``[0, -z]`` for
    ``malignant=(0,)``), 2 -> as they are (swapped for ``(0,)``), more ->
    ``[log P(not S), log P(S)]`` over the ``malignant`` classes ``S``. Settings live in the
    plain dict ``model.dermcam_io`` so they survive ``deepcopy`` and ``to``."""
    outputs = int(outputs)
    if outputs < 1:
        raise DermcamError(f"the model must have at least one output, got {outputs}")
    try:
        mal = [int(i) for i in malignant]
    except (TypeError, ValueError):
        raise DermcamError(f"malignant classes must be integers, got {malignant!r}") from None
    if not mal:
        raise DermcamError("name at least one malignant class (e.g. --malignant 1)")
    if len(set(mal)) != len(mal):
        raise DermcamError(f"malignant classes repeat: {mal}; name each once")
    if outputs == 1 and mal not in ([0], [1]):
        raise DermcamError(f"a one-output model's malignant class is 1 (sigmoid's "
                           f"positive class) or 0, got {mal}")
    bad = [i for i in mal if not 0 <= i < outputs] if outputs > 1 else []
    if bad:
        raise DermcamError(f"malignant class {bad[0]} is not an output of a {outputs}-"
                           f"output model; choose classes 0..{outputs - 1}")
    if outputs > 1 and len(mal) == outputs:
        raise DermcamError(f"every one of the {outputs} outputs is named malignant; "
                           "leave at least one benign class")
    mean = [float(v) for v in mean]
    std = [float(v) for v in std]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise DermcamError(f"mean and std must be 3 numbers each, std > 0; got mean {mean}, "
                           f"std {std}")
    for hooks, fn in ((model._forward_pre_hooks, _io_pre_hook),
                      (model._forward_hooks, _io_post_hook)):
        for key in [k for k, h in hooks.items() if h is fn]:
            del hooks[key]
    setattr(model, IO_ATTR, {"outputs": outputs, "malignant": mal, "mean": mean, "std": std})
    if mean != [float(v) for v in IMAGENET_MEAN] or std != [float(v) for v in IMAGENET_STD]:
        model.register_forward_pre_hook(_io_pre_hook)
    if not (outputs == 2 and mal == [1]):
        model.register_forward_hook(_io_post_hook)
    return model


def _io_pre_hook(module, args):
    """ImageNet-normalised input -> normalised with the model's own mean and std."""
    io = getattr(module, IO_ATTR)
    x, *rest = args
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m_in, s_in = x.new_tensor(IMAGENET_MEAN).view(shape), x.new_tensor(IMAGENET_STD).view(shape)
    m, s = x.new_tensor(io["mean"]).view(shape), x.new_tensor(io["std"]).view(shape)
    return (((x * s_in + m_in) - m) / s, *rest)


def _io_post_hook(module, args, out):
    """The model's logits -> two, ``[benign, malignant]`` (see :func:`attach_io`)."""
    import torch
    io = getattr(module, IO_ATTR)
    k, mal, z = io["outputs"], io["malignant"], out
    if k == 1:
        z = z.reshape(len(z), 1)
        # the malignant logit carries the signal (heatmaps explain it): z, or -z for (0,)
        return torch.cat([torch.zeros_like(z), z if mal == [1] else -z], 1)
    if k == 2:
        return z[:, [1, 0]] if mal == [0] else z
    logp = torch.log_softmax(z, 1)
    rest = [i for i in range(k) if i not in mal]
    return torch.stack([torch.logsumexp(logp[:, rest], 1), torch.logsumexp(logp[:, mal], 1)],
                       1)
