"""Checkpoints: the one home of dermcam's ``model.pt`` format (tensors and plain values, read
with ``weights_only=True``). Optional fields for models trained elsewhere: ``num_outputs``,
``io`` (:func:`dermcam.models.attach_io`'s arguments), ``image_size`` and ``source``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermcam.calibration import set_temperature
from dermcam.errors import DermcamError
from dermcam.io import atomic_path
from dermcam.models import TIMM_PREFIX, attach_io, build_model, load_weights_into, state_dict_of
from dermcam.weight_files import fit_weights, load_state_file

CHECKPOINT_FORMAT = "dermcam-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, model, info, extra: dict[str, Any]) -> Path:
    """Write a dermcam checkpoint atomically (tensors and plain values only)."""
    import torch
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": info.name,
               "target_layer": info.target_layer, "weights_source": info.weights_source,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    payload.update(extra)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path):
    """Load a dermcam checkpoint safely; returns ``(model, info, payload)``, the model
    carrying the checkpoint's calibration (and ``io`` hooks, where recorded)."""
    payload = load_state_file(path)  # torch.load(..., weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise DermcamError("not a dermcam checkpoint (use --weights PATH for plain state dicts)",
                           path)
    arch = payload["arch"]
    extra = {}
    if "num_outputs" in payload:
        extra["num_classes"] = int(payload["num_outputs"])
    if str(arch).startswith(TIMM_PREFIX) and payload.get("image_size") is not None:
        extra["image_size"] = int(payload["image_size"])
    model, info = build_model(arch, weights="none", **extra)
    if "num_outputs" in payload:
        fit_weights(model, state_dict_of(payload), arch, path)
    else:
        load_weights_into(model, arch, payload, path)
    if payload.get("io") is not None:
        try:
            attach_io(model, **payload["io"])
        except DermcamError as exc:
            raise DermcamError(f"bad 'io' in the checkpoint ({exc})", path) from None
    info.weights_source = payload.get("weights_source", info.weights_source)
    try:  # checkpoints from before calibration (#16) hold none: T = 1, b = 0
        set_temperature(model, payload.get("temperature", 1.0),
                        payload.get("calibration_bias", 0.0))
    except ValueError as exc:
        raise DermcamError(f"bad temperature in the checkpoint ({exc})", path) from None
    model.eval()
    return model, info, payload


def update_checkpoint(path: str | Path, fields: dict[str, Any]) -> bool:
    """Set top-level ``fields`` of a saved checkpoint atomically (still ``weights_only``-safe);
    returns whether it was rewritten (not when every field already holds its value)."""
    import torch
    payload = load_state_file(path)
    if all(k in payload and payload[k] == v for k, v in fields.items()):
        return False
    payload.update(fields)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return True


def update_model_card(path: str | Path, fields: dict[str, Any]) -> None:
    """Merge ``fields`` into the checkpoint's model card."""
    card = load_state_file(path).get("model_card") or {}
    update_checkpoint(path, {"model_card": {**card, **fields}})
