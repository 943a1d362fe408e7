"""How the probes score images: each model loaded once in its inference precision."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dermcam import run as runmod
from dermcam.device import resolve_precision
from dermcam.errors import DermcamError

#: ``--precision`` of the probe's inference: float32 (as evaluate), bfloat16 autocast, or
#: ``auto`` (bfloat16 where native and faster, the rule training uses).
INFERENCE_PRECISIONS = ("32-true", "bf16-mixed", "auto")


def inference_precision(spec: str, name: str, device, image_size: int) -> str:
    """The precision model ``name`` is scored in: ``32-true`` or ``bf16-mixed``."""
    import torch

    from dermcam.inference import depthwise_net

    if spec not in INFERENCE_PRECISIONS:
        raise DermcamError(f"--precision must be one of {', '.join(INFERENCE_PRECISIONS)}, "
                           f"not {spec!r}")
    on_gpu = torch.device(device).type == "cuda"
    return resolve_precision(spec, "gpu" if on_gpu else "cpu", depthwise_net(name), image_size)


def load_models(run: runmod.Run, names: Sequence[str], device,
                precisions: dict[str, str] | None = None) -> list[tuple[str, Any, float]]:
    """``(name, model, threshold)`` per model in its ``precisions`` entry (float32 where absent)."""
    import torch

    from dermcam.inference import Bf16Inference, folded_for_inference, use_channels_last

    models = []
    for name in names:
        model, _info, payload = run.load_model(name)
        model.to(device)
        if (precisions or {}).get(name) == "bf16-mixed":
            model = Bf16Inference(model, torch.device(device).type)
        else:  # BatchNorm folded: the same probabilities up to rounding, faster
            model = folded_for_inference(model, channels_last=use_channels_last(name))
        models.append((name, model, float(payload["threshold"])))
    return models


def score_images(model, images: np.ndarray, batch_size: int = 64, device="cpu") -> np.ndarray:
    """Malignant probability of ``(N, S, S, 3) uint8`` images -> ``(N,)`` float64."""
    from dermcam.inference import predict_proba

    return predict_proba(model, images, batch_size=batch_size, device=device).astype(np.float64)
