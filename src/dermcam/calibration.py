"""Temperature scaling of the malignant probability, and calibration scores (#16 item 4).

A weighted loss or a balanced sampler shifts and stretches a classifier's probabilities;
temperature scaling (Guo et al. 2017) divides the logits by one number ``T > 0`` fitted
on the validation split by minimising the negative log-likelihood, so
``p = softmax(z / T)[:, 1] = sigmoid((z1 - z0) / T)``. ``T`` changes no ranking (AUC,
arg-max) but moves every probability, so the decision threshold is chosen afterwards, on
the calibrated probabilities.

Pure functions on arrays:

- :func:`fit_temperature` ``(N, 2)`` logits or ``(N,)`` logit differences and ``(N,)``
  0/1 labels -> ``T`` (scipy's bounded scalar minimiser on ``log T``);
- :func:`apply_temperature` -> ``(N,)`` malignant probabilities;
- :func:`nll`, :func:`brier` -> float, lower is better; ECE is
  :func:`dermcam.evaluation.expected_calibration_error`;
- :func:`calibration_scores` the three before and after, :func:`calibration_summary`
  the same per model with bootstrap CIs from a predictions table (what evaluate reports).

The fitted ``T`` lives in the checkpoint (``temperature``; older checkpoints read as 1)
and on the loaded model as the attribute :data:`ATTR` (:func:`set_temperature`,
:func:`temperature_of`), so every stage that turns logits into probabilities
(evaluate, explain, probe, predict) applies it the same way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["ATTR", "CALIBRATIONS", "T_BOUNDS", "fit_temperature", "apply_temperature",
           "logit_diff", "nll", "brier", "calibration_scores", "calibration_summary",
           "set_temperature", "temperature_of"]

#: ``--calibration`` choices.
CALIBRATIONS = ("temperature", "none")
#: The search interval of ``T``: a fit at either end means the NLL had no interior minimum.
T_BOUNDS = (1e-2, 1e2)
#: Attribute of a loaded model holding its temperature (a plain float; absent = 1).
ATTR = "dermcam_temperature"


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


def _nll(d: np.ndarray, y: np.ndarray, t: float) -> float:
    z = d / t
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


def fit_temperature(logits: Any, labels: Any) -> float:
    """The ``T`` minimising the NLL of ``sigmoid((z1 - z0) / T)``; see the module docstring.

    ``logits``: ``(N, 2)`` or ``(N,)`` differences; ``labels``: ``(N,)`` 0/1 with both
    classes (``ValueError`` otherwise: one class makes the NLL fall towards ``T = 0`` or
    ``inf``). Minimised over ``log T`` in :data:`T_BOUNDS` (bounded Brent).
    """
    from scipy.optimize import minimize_scalar

    d = logit_diff(logits)
    y = _labels(labels, d.size)
    if not np.isfinite(d).all():
        raise ValueError("logits must be finite")
    if y.min() == y.max():
        raise ValueError("fitting a temperature needs both classes in the labels")
    lo, hi = (math.log(b) for b in T_BOUNDS)
    res = minimize_scalar(lambda s: _nll(d, y, math.exp(s)), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """``(N, 2)`` logits or ``(N,)`` differences -> ``(N,)`` ``sigmoid((z1 - z0) / T)``."""
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    z = logit_diff(logits) / t
    return np.exp(-np.logaddexp(0.0, -z))  # sigmoid without overflow


def calibration_scores(labels: Any, prob: Any, n_bins: int = 10) -> dict[str, float]:
    """``{"nll", "ece", "brier"}`` of ``(N,)`` probabilities."""
    from dermcam.evaluation import expected_calibration_error

    return {"nll": nll(labels, prob), "ece": expected_calibration_error(labels, prob, n_bins),
            "brier": brier(labels, prob)}


def set_temperature(model, temperature: float):
    """Record ``temperature`` on ``model`` (see :data:`ATTR`); returns the model."""
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    setattr(model, ATTR, t)
    return model


def temperature_of(model) -> float:
    """The temperature recorded on ``model``; 1 (no scaling) when none was."""
    return float(getattr(model, ATTR, 1.0))


def _boot_scores(y: np.ndarray, p: np.ndarray, w: np.ndarray, n_bins: int
                 ) -> dict[str, np.ndarray]:
    """ECE and Brier on every resample: ``w (B, N)`` multiplicities -> ``(B,)`` each."""
    from dermcam.evaluation import _bin_ids

    tot = w.sum(axis=1)
    onehot = np.zeros((p.size, n_bins))
    onehot[np.arange(p.size), _bin_ids(p, n_bins)] = 1.0
    gap = w @ (onehot * (y - p)[:, None])
    return {"ece": np.abs(gap).sum(axis=1) / tot, "brier": w @ ((p - y) ** 2) / tot}


def calibration_summary(predictions, temperatures: dict[str, float] | None = None,
                        n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                        n_bins: int = 10) -> dict[str, Any]:
    """ECE and Brier before and after temperature scaling, per model, with CIs.

    ``predictions``: long table ``model, label, prob_malignant`` and
    ``prob_malignant_uncalibrated`` (plus ``group`` for cluster resampling;
    ``temperature`` read from a column of that name unless ``temperatures`` gives it). Returns
    ``{model: {"temperature", "before": {"ece", "brier"}, "after": {...}, "change":
    {...}, "reliability_before"}}``, each score ``{"value", "lo", "hi"}`` (percentile
    bootstrap, stratified by class, whole clusters with ``group``; the change is
    ``after - before`` on the same resamples). Models without the uncalibrated column
    are left out.
    """
    from dermcam.evaluation import reliability_curve
    from dermcam.stats import percentile_interval, resampling_weights

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

        def ci(value: float, boot: np.ndarray, what: str) -> dict[str, float]:
            lo, hi = percentile_interval(boot, alpha, what=what)
            return {"value": float(value), "lo": lo, "hi": hi}

        t = (temperatures or {}).get(model)
        if t is None and "temperature" in df.columns:
            t = df["temperature"].iloc[0]
        entry: dict[str, Any] = {
            "temperature": math.nan if t is None else float(t),
            "before": {k: ci(b_pt[k], b_boot[k], f"{model} {k}") for k in ("ece", "brier")},
            "after": {k: ci(a_pt[k], a_boot[k], f"{model} {k}") for k in ("ece", "brier")},
            "change": {k: ci(a_pt[k] - b_pt[k], a_boot[k] - b_boot[k], f"{model} d{k}")
                       for k in ("ece", "brier")},
            "reliability_before": {k: v.tolist() for k, v in
                                   reliability_curve(y, before, n_bins).items()},
        }
        out[str(model)] = entry
    return out
