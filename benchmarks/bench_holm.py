"""Holm-adjusted p-values: statsmodels' ``multipletests(method="holm")`` against
:func:`dermcam.stats.adjust_pvalues`, per call, in a process that has loaded what a
dermcam stage loads (torch, Lightning, the stages).

statsmodels' Holm branch calls ``gc.collect()`` on every call, whose cost grows with the
objects the process holds; ``dermcam evaluate`` adjusts five families, ``explain`` more.
Prints the median of 7 calls of each, before and after loading the stages, and the ratio.

    python benchmarks/bench_holm.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from statsmodels.stats.multitest import multipletests

from dermcam.stats import adjust_pvalues

P = np.array([0.001, 0.2, 0.03, 0.04, 0.5])


def _ms(fn) -> float:
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _row(where: str) -> None:
    sm = _ms(lambda: multipletests(P, method="holm"))
    ours = _ms(lambda: adjust_pvalues(P, "holm"))
    print(f"{where:<32} statsmodels {sm:8.2f} ms   dermcam {ours:6.3f} ms   ratio {sm / ours:,.0f}")


def main() -> None:
    np.testing.assert_allclose(adjust_pvalues(P, "holm"), multipletests(P, method="holm")[1])
    _row("bare process")
    import dermcam.stages.evaluate  # noqa: F401  torch, sklearn, matplotlib
    import dermcam.stages.explain  # noqa: F401
    import dermcam.stages.probe  # noqa: F401
    import dermcam.stages.train  # noqa: F401  Lightning

    _row("after loading the stages")


if __name__ == "__main__":
    main()
