"""The report stage: the run's HTML page (:mod:`dermcam.report`), recorded in the manifest."""

from __future__ import annotations

from pathlib import Path

from dermcam import run as runmod
from dermcam.report.html import build_report


def run_report(run_dir: runmod.Run | str | Path, out: str | Path | None = None) -> Path:
    """The report stage: :func:`build_report`, recorded in the manifest (running, then
    complete with the report's path, or failed with the error).

    Training must be complete; evaluate and explain may be absent (shown as missing) but
    not running or failed, whose files on disk would be stale or partial.
    """
    run = runmod.Run.of(run_dir, require="train", settled=("evaluate", "explain"))
    run_dir = run.dir
    with run.stage("report") as record:
        path = build_report(run.dir, out)
        record["path"] = str(path)
    return path
