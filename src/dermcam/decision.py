"""What validation decides for a trained model: its calibration and decision threshold
(:func:`choose_threshold`, after training or on an imported model)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from dermcam import calibration as cal
from dermcam.inference import predict_logit_diff

__all__ = ["Decision", "calibration_record", "choose_threshold"]

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """What validation decides for a trained model: calibration and threshold."""
    temperature: float
    bias: float
    calibration: dict[str, Any]
    threshold: float
    val_auc: float


def calibration_record(val_logit: np.ndarray, yva: np.ndarray, method: str
                       ) -> tuple[float, float, dict[str, Any]]:
    """``(T, b, record)``: the calibration fitted on validation, with NLL, ECE and Brier
    before and after it (plain floats, for the checkpoint)."""
    t, b = cal.fit_calibration(val_logit, yva, method)
    record: dict[str, Any] = {
        "method": method, "fitted_on": "validation", "n": int(len(yva)),
        "temperature": t, "bias": b,
        "before": cal.calibration_scores(yva, cal.apply_temperature(val_logit, 1.0)),
        "after": cal.calibration_scores(yva, cal.apply_temperature(val_logit, t, b))}
    lo, hi = cal.T_BOUNDS
    if method != "none" and not lo * 1.01 < t < hi / 1.01:
        record["note"] = (f"T = {t:.3g} is at the edge of the search interval {cal.T_BOUNDS}: the "
                          "validation NLL has no interior minimum (perfectly separated, or "
                          "no signal on validation"
                          + (", or an offset only a bias can fit: try --calibration platt)"
                             if method == "temperature" else ")"))
        log.warning("%s scaling: %s", method, record["note"])
    return t, b, record


def choose_threshold(model, val_ds, yva: np.ndarray, method: str,
                     threshold: float | None = None) -> Decision:
    """Calibrate ``model`` on validation (set on it), then Youden's threshold (or the
    ``threshold`` given) and the AUC on the calibrated validation probabilities."""
    from sklearn.metrics import roc_auc_score

    from dermcam.evaluation import youden_threshold  # sklearn, scipy, pandas: at first use

    val_logit = predict_logit_diff(model, val_ds)
    temperature, bias, calibration = calibration_record(val_logit, yva, method)
    cal.set_temperature(model, temperature, bias)
    val_prob = cal.apply_temperature(val_logit, temperature, bias)
    if threshold is None:
        threshold = float(youden_threshold(yva, val_prob))  # on the calibrated probabilities
    return Decision(temperature, bias, calibration, threshold,
                    float(roc_auc_score(yva, val_prob)))
