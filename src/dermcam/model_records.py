"""What a trained model's files say about it: the model card and payload stored in
``model.pt`` and its manifest entry, plain dicts built from the training's facts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dermcam import run as runmod
from dermcam.config import TrainConfig
from dermcam.decision import Decision

__all__ = ["checkpoint_payload", "model_card", "model_record"]


def model_card(info, cfg: TrainConfig, n_train: int, n_val: int,
               decision: Decision) -> dict[str, Any]:
    """The model card stored in model.pt ('dermcam predict' prints it)."""
    return {
        "architecture": info.display_name, "weights_source": info.weights_source,
        "trained_on": str(Path(cfg.data).resolve()), "image_size": cfg.image_size,
        "n_train": int(n_train), "n_val": int(n_val),
        "val_auc": decision.val_auc, "threshold": decision.threshold,
        "threshold_rule": "Youden J on validation",
        "temperature": decision.temperature, "calibration_bias": decision.bias,
        "calibration": decision.calibration["method"],
        "intended_use": "research on dermoscopy classification and attention auditing; "
                        "not validated for clinical use",
    }


def checkpoint_payload(cfg: TrainConfig, decision: Decision, best_epoch: int,
                       best_score: float, card: dict[str, Any]) -> dict[str, Any]:
    """What ``model.pt`` stores beside the weights, the ``card`` included."""
    return {"image_size": cfg.image_size, "threshold": decision.threshold,
            "best_epoch": best_epoch, "monitor": cfg.monitor, "best_score": best_score,
            "temperature": decision.temperature, "calibration_bias": decision.bias,
            "calibration": decision.calibration, "model_card": card}


def model_record(name: str, info, cfg: TrainConfig, trainer, decision: Decision,
                 best_epoch: int, best_score: float, precision: str, lr: float,
                 wall: float) -> dict[str, Any]:
    """The model's entry in the manifest's ``models`` (status added by the train stage)."""
    world = trainer.world_size
    return {"display_name": info.display_name, "weights_source": info.weights_source,
            "target_layer": info.target_layer, "best_epoch": best_epoch,
            "epochs_run": int(trainer.current_epoch), "monitor": cfg.monitor,
            "best_score": best_score, "val_auc": decision.val_auc, "threshold": decision.threshold,
            "temperature": decision.temperature, "calibration_bias": decision.bias,
            "global_batch_size": cfg.batch_size, "world_size": world,
            "per_process_batch_size": math.ceil(cfg.batch_size / world),
            "optimizer_steps": int(trainer.global_step), "precision": precision, "lr": lr,
            "calibration": decision.calibration, "wall_time_s": round(wall, 2),
            "checkpoint": f"{runmod.MODELS_DIR}/{name}/{runmod.MODEL_FILE}"}
