"""Checkpoints: the one home of dermcam's ``model.pt`` format.

``save_checkpoint`` writes it (atomically, tensors and plain values only),
``load_checkpoint`` reads it back (``torch.load(weights_only=True)``: no code is
executed), ``update_checkpoint`` sets top-level fields of a saved one in place (explain
records its CAM choice so) and ``update_model_card`` merges into its model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermcam.errors import DermcamError

CHECKPOINT_FORMAT = "dermcam-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, model, info, extra: dict[str, Any]) -> Path:
    """Write a dermcam checkpoint atomically (tensors and plain values only)."""
    import torch

    from dermcam.io import atomic_path

    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": info.name,
               "target_layer": info.target_layer, "weights_source": info.weights_source,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    payload.update(extra)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path):
    """Load a dermcam checkpoint safely; returns ``(model, info, payload)``.

    The model carries the checkpoint's ``temperature`` (:func:`dermcam.calibration.
    temperature_of`), which :func:`dermcam.inference.predict_proba` and the CAM explainer
    apply."""
    from dermcam.calibration import set_temperature
    from dermcam.models import build_model, load_state_file, load_weights_into

    payload = load_state_file(path)  # torch.load(..., weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise DermcamError("not a dermcam checkpoint (use --weights PATH for plain state dicts)",
                           path)
    model, info = build_model(payload["arch"], weights="none")
    load_weights_into(model, payload["arch"], payload, path)
    info.weights_source = payload.get("weights_source", info.weights_source)
    try:  # checkpoints from before calibration (#16) hold none: T = 1, b = 0
        set_temperature(model, payload.get("temperature", 1.0),
                        payload.get("calibration_bias", 0.0))
    except ValueError as exc:
        raise DermcamError(f"bad temperature in the checkpoint ({exc})", path) from None
    model.eval()
    return model, info, payload


def update_checkpoint(path: str | Path, fields: dict[str, Any]) -> bool:
    """Set the top-level ``fields`` of the checkpoint at ``path`` (e.g. ``{"cam": ...}``,
    the CAM method and layer explain chose). Rewritten atomically, plain values and
    tensors only, so the file still loads with ``weights_only=True``; not rewritten when
    every field already holds its value. Returns whether the file was rewritten."""
    import torch

    from dermcam.io import atomic_path
    from dermcam.models import load_state_file

    payload = load_state_file(path)
    if all(k in payload and payload[k] == v for k, v in fields.items()):
        return False
    payload.update(fields)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return True


def update_model_card(path: str | Path, fields: dict[str, Any]) -> None:
    """Merge ``fields`` into the model card of the checkpoint at ``path`` ('dermcam
    predict' shows the card), through :func:`update_checkpoint`."""
    from dermcam.models import load_state_file

    card = load_state_file(path).get("model_card") or {}
    update_checkpoint(path, {"model_card": {**card, **fields}})
