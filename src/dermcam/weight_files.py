"""Weights files: read safely (never unpickling code), whatever wrote them, and loaded strictly."""

from __future__ import annotations

import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path

from dermcam.errors import DermcamError, first_line


def verify_weights_file(path: str | Path) -> None:
    """Check a torchvision weights file against the SHA-256 prefix in its name, as
    torch.hub's ``check_hash`` would (a hand-copied file); no prefix: nothing to check.
    ``DERMCAM_TRUST_WEIGHTS=1`` skips it (one's own weights under torchvision's name)."""
    path = Path(path)
    m = re.search(r"-([a-f0-9]{6,})\.", path.name)
    if m is None or not path.exists() or os.environ.get("DERMCAM_TRUST_WEIGHTS") == "1":
        return
    got = sha256_of(path)
    if not got.startswith(m.group(1)):
        raise DermcamError(
            f"ImageNet weights file does not match torchvision's: its SHA-256 begins "
            f"{got[:len(m.group(1))]}, the name says {m.group(1)} (truncated or damaged copy, "
            f"or another file under that name); delete it and download or copy it again "
            "(DERMCAM_TRUST_WEIGHTS=1 accepts weights of your own making)",
            path)


def load_state_file(path: str | Path) -> dict:
    """Load a checkpoint or state dict with ``weights_only=True`` (no code is executed)."""
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


#: Key prefixes a wrapper adds to every key, stripped only where every key has one, in any
#: order and combination (``module._orig_mod.``, ``model._orig_mod.``, ``module.model.``).
WRAPPER_PREFIXES = {"module.": "DDP", "_orig_mod.": "torch.compile", "model.": "wrapper"}
#: Top-level keys only PyTorch Lightning writes into its checkpoints.
LIGHTNING_KEYS = ("pytorch-lightning_version", "epoch", "global_step", "loops", "callbacks",
                  "optimizer_states", "lr_schedulers", "hyper_parameters")

_SAVE_STATE_DICT = "save the weights with torch.save(model.state_dict(), PATH)"


def read_weights(path: str | Path) -> tuple[dict, str, object | None]:
    """``(state_dict, form, script)`` from a weights file trained anywhere, never unpickling code.
    Wrapper prefixes (DDP, ``torch.compile``, Lightning) are stripped where every key has one;
    ``form`` says what the file was; ``script`` is the module of a TorchScript file, else None."""
    import torch
    path = Path(path)
    if not path.exists():
        raise DermcamError("weights file not found", path)
    if not path.is_file():
        raise DermcamError("not a file (expected a weights file saved with torch.save)", path)
    entries = _zip_entries(path) if zipfile.is_zipfile(path) else None
    if entries and "constants.pkl" in entries and any(r.startswith("code/") for r in entries):
        script = _load_torchscript(path)  # TorchScript: <name>/constants.pkl and code/
        return _stripped(dict(script.state_dict()), "TorchScript", script)
    if _is_safetensors(path):
        from safetensors.torch import load_file
        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:
            raise DermcamError(f"not a readable safetensors file ({first_line(exc)})",
                               path) from exc
        return _stripped(state, "safetensors")
    # torch.save: a zip with <name>/data.pkl, or a pre-1.6 bare pickle stream (protocol 2+)
    if not ("data.pkl" in entries if entries is not None else _first_byte(path) == b"\x80"):
        raise DermcamError("not a PyTorch weights file (neither torch.save nor TorchScript "
                           "nor safetensors); " + _SAVE_STATE_DICT, path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _looks_like_lightning(path):
            raise DermcamError(
                "a Lightning checkpoint holding Python objects (in hyper_parameters?) that "
                "dermcam will not unpickle: save its weights alone with "
                "torch.save(checkpoint['state_dict'], PATH)", path) from exc
        raise DermcamError("holds a pickled Python object, not a state dict; dermcam never "
                           "unpickles code: " + _SAVE_STATE_DICT, path) from exc
    except Exception as exc:
        raise DermcamError(f"not a readable PyTorch weights file ({first_line(exc)})",
                           path) from exc
    if not isinstance(obj, dict):
        raise DermcamError(f"holds a {type(obj).__name__}, not a state dict: "
                           + _SAVE_STATE_DICT, path)
    if _all_tensors(obj):
        return _stripped(obj, "state dict")
    if obj.get("format") == "dermcam-checkpoint" and isinstance(obj.get("state_dict"), dict):
        return _stripped(obj["state_dict"], "dermcam checkpoint")
    if isinstance(obj.get("state_dict"), dict) and _all_tensors(obj["state_dict"]):
        return _stripped(obj["state_dict"], "Lightning checkpoint"
                         if any(k in obj for k in LIGHTNING_KEYS) else "checkpoint dict")
    for key in ("model_state_dict", "model", "net", "weights"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and _all_tensors(inner):
            return _stripped(inner, f"checkpoint dict ({key!r})")
    raise DermcamError("holds a dict without a state dict of tensors (no 'state_dict' entry); "
                       + _SAVE_STATE_DICT, path)


def _all_tensors(d: dict) -> bool:
    import torch
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                           for k, v in d.items())


def _stripped(state: dict, base: str, script=None) -> tuple[dict, str, object | None]:
    """``(state, form, script)``: :data:`WRAPPER_PREFIXES` stripped while every key has one,
    ``form`` naming ``base`` and the wrappers, outermost first."""
    labels: list[str] = []
    while state:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)),
                      None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
        labels.append(WRAPPER_PREFIXES[prefix])
    if base == "Lightning checkpoint":
        labels = [x for x in labels if x != "wrapper"]
    if labels:
        base = (f"{' + '.join(labels)} state dict" if base == "state dict"
                else f"{base} ({' + '.join(labels)})")
    return state, base, script


def _looks_like_lightning(path: Path) -> bool:
    """A Lightning checkpoint, judged from the pickle's bytes (nothing is unpickled)."""
    data = b""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pkl = [n for n in z.namelist() if n.partition("/")[2] == "data.pkl"]
                if pkl:
                    data = z.read(pkl[0])
        else:
            with open(path, "rb") as fh:
                data = fh.read(1 << 24)
    except (OSError, zipfile.BadZipFile):
        return False
    return b"pytorch-lightning_version" in data or (b"state_dict" in data
                                                   and b"global_step" in data)


def _is_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n <= path.stat().st_size - 8


def _zip_entries(path: Path) -> list[str]:
    """The names in a zip archive below its top folder (``[]`` for no readable zip)."""
    try:
        with zipfile.ZipFile(path) as z:
            return [n.partition("/")[2] for n in z.namelist()]
    except (zipfile.BadZipFile, OSError):
        return []


def _first_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(1)


def _load_torchscript(path: Path):
    import torch
    try:
        with warnings.catch_warnings():  # torch 2.9+: "torch.jit.load is deprecated"
            warnings.filterwarnings("ignore", category=FutureWarning,
                                    message=r".*torch\.jit.*deprecated")
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise DermcamError(f"not a loadable TorchScript file ({first_line(exc)})",
                           path) from exc


def fit_weights(model, state: dict, name: str, path) -> None:
    """Load ``state`` into ``model`` strictly; a mismatch is one error naming the counts and
    the first few missing, unexpected and wrongly shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        shapes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in bad]
        parts = [f"{what} {len(keys)} ({', '.join(keys[:3])}{' …' * (len(keys) > 3)})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("wrong shape", shapes)) if keys]
        raise DermcamError(f"weights do not fit {name}: {', '.join(parts)}", path)
    model.load_state_dict(state, strict=True)


def sha256_of(path: str | Path) -> str:
    import pooch
    return pooch.file_hash(str(path), alg="sha256")
