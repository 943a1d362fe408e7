"""Localisation metrics for CAM heatmaps against lesion masks, and their statistics.

Pure functions on arrays and per-image tables (no I/O, plotting or torch), one concern per
module, each module's public names re-exported here (``from dermcam import leakage as lk``):
:mod:`~dermcam.leakage.metrics` (per-image metrics, ``(N, H, W)`` x2 -> ``(N,)``),
:mod:`~dermcam.leakage.compare` (class comparisons and summaries of a per-image table),
:mod:`~dermcam.leakage.confound` (is a class difference explained by lesion size?),
:mod:`~dermcam.leakage.artifacts` (metrics by artifact presence) and
:mod:`~dermcam.leakage.checks` (shared checks, and the round-off rule: values that differ
only by round-off are constant, so no test and no p-value).
"""

from __future__ import annotations

from dermcam.leakage import artifacts, checks, compare, confound, metrics
from dermcam.leakage.artifacts import *  # noqa: F403
from dermcam.leakage.checks import EXACT_ATOL, EXACT_RTOL, LABEL_NAMES, TARGET_NAMES, round_off_tol
from dermcam.leakage.compare import *  # noqa: F403
from dermcam.leakage.confound import *  # noqa: F403
from dermcam.leakage.metrics import *  # noqa: F403

__all__ = [*metrics.__all__, *compare.__all__, "LABEL_NAMES", "TARGET_NAMES",
           *confound.__all__, "EXACT_RTOL", "EXACT_ATOL", "round_off_tol", *artifacts.__all__,
           "artifacts", "checks", "compare", "confound", "metrics"]
