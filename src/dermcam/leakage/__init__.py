"""Localisation metrics for CAM heatmaps against lesion masks, and their statistics.

Pure functions on arrays and per-image tables: no I/O, no plotting, no torch. One
concern per module, everything public re-exported here (``from dermcam import leakage
as lk; lk.size_confound(...)``):

- :mod:`~dermcam.leakage.metrics`: the per-image metrics (``cams (N, H, W)``,
  ``masks (N, H, W)`` -> ``(N,)``), NaN plus a reason where undefined, their registry
  :data:`METRICS` with score directions and chance levels, :func:`score_batch`;
- :mod:`~dermcam.leakage.compare`: statistics on a per-image table (one row per image
  x model x method): :func:`summarise`, :func:`compare_classes`,
  :func:`compare_classes_by_target`, :func:`missing_at_chance`;
- :mod:`~dermcam.leakage.confound`: is a class difference explained by lesion size?
  :func:`size_confound` (OLS, area spline, TOST), :func:`size_confounds`,
  :func:`adjust_confound`;
- :mod:`~dermcam.leakage.artifacts`: :func:`presence_comparison`,
  :func:`artifact_summary`;
- :mod:`~dermcam.leakage.checks`: the column and label checks they share, and the
  round-off rule: values that differ only by floating-point round-off
  (:func:`round_off_tol`) are constant: no test, no p-value.
"""

from __future__ import annotations

from dermcam.leakage import artifacts, checks, compare, confound, metrics
from dermcam.leakage.artifacts import artifact_summary, presence_comparison
from dermcam.leakage.checks import (
    EXACT_ATOL,
    EXACT_RTOL,
    LABEL_NAMES,
    TARGET_NAMES,
    round_off_tol,
)
from dermcam.leakage.compare import (
    CHANCE_TEXT,
    bootstrap_mean_ci,
    compare_classes,
    compare_classes_by_target,
    missing_at_chance,
    summarise,
)
from dermcam.leakage.confound import (
    CONFOUND_METRICS,
    CONFOUND_PER_IMAGE,
    VERDICTS,
    adjust_confound,
    ols_fit,
    size_confound,
    size_confounds,
)
from dermcam.leakage.metrics import (
    CHANCE,
    METRICS,
    REASONS,
    UNDEFINED_WHEN,
    Metric,
    artifact_mass,
    chance_leakage,
    excess_leakage,
    inside_score,
    leakage,
    lesion_area,
    localisation_gain,
    outside_score,
    pixel_auroc,
    pointing_game,
    rank_accuracy,
    score_batch,
)

__all__ = [
    "REASONS",
    "UNDEFINED_WHEN",
    "METRICS",
    "CHANCE",
    "Metric",
    "leakage",
    "inside_score",
    "outside_score",
    "lesion_area",
    "chance_leakage",
    "excess_leakage",
    "localisation_gain",
    "pixel_auroc",
    "rank_accuracy",
    "pointing_game",
    "artifact_mass",
    "score_batch",
    "bootstrap_mean_ci",
    "summarise",
    "compare_classes",
    "compare_classes_by_target",
    "missing_at_chance",
    "CHANCE_TEXT",
    "LABEL_NAMES",
    "TARGET_NAMES",
    "ols_fit",
    "size_confound",
    "size_confounds",
    "CONFOUND_METRICS",
    "CONFOUND_PER_IMAGE",
    "VERDICTS",
    "EXACT_RTOL",
    "EXACT_ATOL",
    "round_off_tol",
    "artifact_summary",
    "presence_comparison",
    "adjust_confound",
    "artifacts",
    "checks",
    "compare",
    "confound",
    "metrics",
]
