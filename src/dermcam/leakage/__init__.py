"""Localisation metrics for CAM heatmaps against lesion masks, and their statistics: pure
functions, each module's public names re-exported here (``from dermcam import leakage as lk``):
per-image :mod:`~dermcam.leakage.metrics`, class comparisons and summaries
(:mod:`~dermcam.leakage.compare`), the size confound (:mod:`~dermcam.leakage.confound`),
artifact presence (:mod:`~dermcam.leakage.artifacts`) and shared checks
(:mod:`~dermcam.leakage.checks`: values that differ only by round-off are constant).
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
