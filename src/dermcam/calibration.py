"""Platt and temperature scaling of the malignant probability, and calibration scores.

Platt scaling (the default), ``sigmoid((z1 - z0) / T + b)``, also fits the logit offset of a
class-weighted loss, which temperature scaling alone answers with ``T -> inf`` (docs/training.md).
``T`` and ``b`` live in the checkpoint and on the loaded model (:data:`ATTR`, :data:`BIAS_ATTR`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["ATTR", "BIAS_ATTR", "CALIBRATIONS", "T_BOUNDS", "fit_temperature", "fit_platt",
           "fit_calibration", "apply_temperature", "calibrated_prob", "logit_diff", "nll",
           "brier", "calibration_scores", "calibration_summary", "set_temperature",
           "temperature_of", "bias_of"]

#: ``--calibration`` choices; the first is the default.
CALIBRATIONS = ("platt", "temperature", "none")
#: The search interval of ``T``: a fit at either end means the NLL had no interior minimum.
T_BOUNDS = (1e-2, 1e2)
#: Attribute of a loaded model holding its temperature (a plain float; absent = 1).
ATTR = "dermcam_temperature"
#: Attribute of a loaded model holding its calibration bias ``b`` (absent = 0).
BIAS_ATTR = "dermcam_calibration_bias"


def logit_diff(logits: Any) -> np.ndarray:
    """``(N, 2)`` logits -> ``(N,)`` ``z1 - z0``; ``(N,)`` is taken as already a difference."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2 and z.shape[1] == 2:
        return z[:, 1] - z[:, 0]
    if z.ndim == 1:
        return z
    raise ValueError(f"expected logits (N, 2) or logit differences (N,), got shape {z.shape}")


def _labels(labels: Any, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"expected labels of shape ({n},), got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y.astype(np.float64)


def _nll(d: np.ndarray, y: np.ndarray, t: float, b: float = 0.0) -> float:
    z = d / t + b
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def nll(labels: Any, prob: Any, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood (log loss) of ``(N,)`` probabilities; lower is better."""
    p = np.clip(np.asarray(prob, dtype=np.float64), eps, 1 - eps)
    y = _labels(labels, p.size)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def brier(labels: Any, prob: Any) -> float:
    """Brier score ``mean((p - y)^2)`` of ``(N,)`` probabilities; lower is better (0 best)."""
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"expected probabilities (N,), got shape {p.shape}")
    y = _labels(labels, p.size)
    return float(np.mean((p - y) ** 2)) if p.size else math.nan


def _fit_inputs(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    d = logit_diff(logits)
    y = _labels(labels, d.size)
    if not np.isfinite(d).all():
        raise ValueError("logits must be finite")
    if y.min() == y.max():
        raise ValueError("fitting a temperature needs both classes in the labels")
    return d, y


def fit_temperature(logits: Any, labels: Any) -> float:
    """The ``T`` minimising the NLL of ``sigmoid((z1 - z0) / T)``, by bounded Brent on
    ``log T`` in :data:`T_BOUNDS`; ``labels`` need both classes (one class drives the NLL to
    ``T = 0`` or ``inf``)."""
    from scipy.optimize import minimize_scalar

    d, y = _fit_inputs(logits, labels)
    lo, hi = (math.log(b) for b in T_BOUNDS)
    res = minimize_scalar(lambda s: _nll(d, y, math.exp(s)), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))


def fit_platt(logits: Any, labels: Any) -> tuple[float, float]:
    """``(T, b)`` minimising the NLL of ``sigmoid((z1 - z0) / T + b)`` (a positive slope, so
    rankings are kept): L-BFGS-B on ``(log T, b)`` from the temperature fit; the same minimum
    as a logistic regression on ``z1 - z0`` where its slope is positive."""
    from scipy.optimize import minimize

    d, y = _fit_inputs(logits, labels)
    lo, hi = (math.log(b) for b in T_BOUNDS)

    def f(v: np.ndarray) -> tuple[float, np.ndarray]:
        t = math.exp(v[0])
        z = d / t + v[1]
        r = np.exp(-np.logaddexp(0.0, -z)) - y  # dNLL/dz per row
        return (float(np.mean(np.logaddexp(0.0, z) - y * z)),
                np.array([float(np.mean(r * (-d / t))), float(np.mean(r))]))

    start = np.array([math.log(fit_temperature(d, y)), 0.0])
    res = minimize(f, start, jac=True, method="L-BFGS-B", bounds=[(lo, hi), (None, None)],
                   options={"ftol": 1e-13, "gtol": 1e-9, "maxiter": 1000})
    return float(math.exp(res.x[0])), float(res.x[1])


def fit_calibration(logits: Any, labels: Any, method: str) -> tuple[float, float]:
    """``(T, b)`` for ``method`` in :data:`CALIBRATIONS` (``"none"``: ``(1, 0)``)."""
    if method == "platt":
        return fit_platt(logits, labels)
    if method == "temperature":
        return fit_temperature(logits, labels), 0.0
    if method == "none":
        return 1.0, 0.0
    raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}, not {method!r}")


def _check(temperature: float, bias: float) -> tuple[float, float]:
    t, b = float(temperature), float(bias)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if not math.isfinite(b):
        raise ValueError(f"calibration bias must be a finite number, got {bias}")
    return t, b


def apply_temperature(logits: Any, temperature: float, bias: float = 0.0) -> np.ndarray:
    """``(N, 2)`` logits or ``(N,)`` differences -> ``(N,)`` ``sigmoid((z1 - z0) / T + b)``."""
    t, b = _check(temperature, bias)
    z = logit_diff(logits) / t + b
    return np.exp(-np.logaddexp(0.0, -z))  # sigmoid without overflow


def calibrated_prob(model, logits):
    """Torch ``(N, 2)`` logits of ``model`` -> ``(N,)`` calibrated malignant probability,
    with the model's recorded ``T`` and ``b`` (as :func:`apply_temperature`)."""
    import torch

    z = logits.float()
    return torch.sigmoid((z[:, 1] - z[:, 0]) / temperature_of(model) + bias_of(model))


def calibration_scores(labels: Any, prob: Any, n_bins: int = 10) -> dict[str, float]:
    """``{"nll", "ece", "brier"}`` of ``(N,)`` probabilities."""
    from dermcam.reliability import expected_calibration_error

    return {"nll": nll(labels, prob), "ece": expected_calibration_error(labels, prob, n_bins),
            "brier": brier(labels, prob)}


def set_temperature(model, temperature: float, bias: float = 0.0):
    """Record ``temperature`` and ``bias`` on ``model`` (:data:`ATTR`, :data:`BIAS_ATTR`);
    returns the model."""
    t, b = _check(temperature, bias)
    setattr(model, ATTR, t)
    setattr(model, BIAS_ATTR, b)
    return model


def temperature_of(model) -> float:
    """The temperature recorded on ``model``; 1 (no scaling) when none was."""
    return float(getattr(model, ATTR, 1.0))


def bias_of(model) -> float:
    """The calibration bias recorded on ``model``; 0 when none was."""
    return float(getattr(model, BIAS_ATTR, 0.0))


def _boot_scores(y: np.ndarray, p: np.ndarray, w: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """ECE and Brier on every resample: ``w (B, N)`` multiplicities -> ``(B,)`` each."""
    from dermcam.reliability import batch_ece

    return {"ece": batch_ece(w, y, p, n_bins), "brier": w @ ((p - y) ** 2) / w.sum(axis=1)}


def calibration_summary(predictions, temperatures: dict[str, float] | None = None,
                        n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                        n_bins: int = 10) -> dict[str, Any]:
    """ECE and Brier before and after calibration, per model, with bootstrap CIs (``change``
    = after - before on the same resamples); ``{}`` without ``prob_malignant_uncalibrated``."""
    from dermcam.reliability import reliability_curve
    from dermcam.stats import ci_entry, resampling_weights

    if "prob_malignant_uncalibrated" not in predictions.columns:
        return {}
    out: dict[str, Any] = {}
    for model, df in predictions.groupby("model", sort=False):
        y = df["label"].to_numpy(np.float64)
        before = df["prob_malignant_uncalibrated"].to_numpy(np.float64)
        after = df["prob_malignant"].to_numpy(np.float64)
        groups = df["group"].to_numpy() if "group" in df.columns else None
        w = resampling_weights(y.astype(int), n_boot, seed, groups=groups).astype(np.float64)
        b_boot, a_boot = _boot_scores(y, before, w, n_bins), _boot_scores(y, after, w, n_bins)
        b_pt, a_pt = calibration_scores(y, before, n_bins), calibration_scores(y, after, n_bins)
        t = (temperatures or {}).get(model)
        if t is None and "temperature" in df.columns:
            t = df["temperature"].iloc[0]
        out[str(model)] = {
            "temperature": math.nan if t is None else float(t),
            "bias": (float(df["calibration_bias"].iloc[0])
                     if "calibration_bias" in df.columns else 0.0),
            "before": {k: ci_entry(b_pt[k], b_boot[k], alpha, f"{model} {k}")
                       for k in ("ece", "brier")},
            "after": {k: ci_entry(a_pt[k], a_boot[k], alpha, f"{model} {k}")
                      for k in ("ece", "brier")},
            "change": {k: ci_entry(a_pt[k] - b_pt[k], a_boot[k] - b_boot[k], alpha,
                                   f"{model} d{k}") for k in ("ece", "brier")},
            "reliability_before": {k: v.tolist() for k, v in
                                   reliability_curve(y, before, n_bins).items()},
        }
    return out
