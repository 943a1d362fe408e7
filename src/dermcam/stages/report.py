"""The report stage: the run's HTML page (:mod:`dermcam.report`), recorded in the manifest."""

from __future__ import annotations

from pathlib import Path

from dermcam import run as runmod
from dermcam.report.html import build_report


def run_report(run_dir: runmod.Run | str | Path, out: str | Path | None = None) -> Path:
    """:func:`build_report`, recorded in the manifest. Training must be complete; evaluate and
    explain may be absent but not running or failed (their files would be stale or partial)."""
    run = runmod.Run.of(run_dir, require="train", settled=("evaluate", "explain"))
    with run.stage("report") as record:
        path = build_report(run.dir, out)
        record["path"] = str(path)
    return path
