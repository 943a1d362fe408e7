"""The run directory: one folder per study, each stage reading the previous one's files.

::

    RUN_DIR/manifest.json             schema version, versions, config, seed, data, status
    RUN_DIR/models/<name>/model.pt    best checkpoint (state dict + model card), weights_only-safe
    RUN_DIR/models/<name>/history.csv per-epoch metrics
    RUN_DIR/predictions.csv, metrics.json, metrics.csv, figures/   (evaluate)
    RUN_DIR/attention/, attention.csv, attention_summary.json      (explain)
    RUN_DIR/report.html                                             (report)
    RUN_DIR/external/<name>/          predictions, metrics, figures on another data set
"""

from __future__ import annotations

import datetime as _dt
import platform
import shutil
from pathlib import Path
from typing import Any

from dermcam import __version__
from dermcam.errors import DermcamError
from dermcam.io import MANIFEST, SCHEMA_VERSION, read_json, write_json

STATUS_COMPLETE = "complete"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"dermcam": __version__, "python": platform.python_version()}
    # module name as recorded -> distribution name on PyPI
    for mod, dist in (("torch", "torch"), ("torchvision", "torchvision"),
                      ("lightning", "lightning"), ("numpy", "numpy"), ("sklearn", "scikit-learn"),
                      ("pytorch_grad_cam", "grad-cam")):
        try:  # the module's own string where it has one (torch's names its CUDA build)
            out[mod] = getattr(__import__(mod), "__version__", None) or version(dist)
        except (ImportError, PackageNotFoundError):
            pass
    return out


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def prepare_run_dir(out: Path, overwrite: bool) -> None:
    """Create ``out`` for a new run; refuse a folder holding another run unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DermcamError("output path exists and is not a folder", out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            what = "another run" if (out / MANIFEST).exists() else "other files"
            raise DermcamError(f"output folder already holds {what}; choose a new folder or "
                               "pass --overwrite", out)
        if (out / MANIFEST).exists():
            for child in ("models", "figures", "attention", "probe", "report_files",
                          "external"):
                shutil.rmtree(out / child, ignore_errors=True)
            for f in out.glob("*"):
                if f.is_file():
                    f.unlink()
        else:
            raise DermcamError("--overwrite only replaces a dermcam run folder; this one holds "
                               "other files", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".dermcam-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DermcamError(f"output folder is not writable ({exc.strerror})", out) from exc


def read_manifest(run_dir: str | Path, require: str | None = None,
                  settled: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a run's manifest, refusing (one line) what a later stage must not read.

    ``require``: the named stage must have completed. ``settled``: these stages may be
    absent or complete, but not still running (or interrupted) or failed, since their
    files on disk may then be stale or missing.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DermcamError("run folder not found", run_dir)
    path = run_dir / MANIFEST
    if not path.exists():
        raise DermcamError("not a dermcam run folder (no manifest.json); create one with "
                           "'dermcam train'", run_dir)
    m = read_json(path)
    if not isinstance(m, dict) or "schema_version" not in m:
        raise DermcamError("manifest.json is not a dermcam manifest", path)
    if m["schema_version"] != SCHEMA_VERSION:
        raise DermcamError(f"run written by an incompatible dermcam (schema "
                           f"{m['schema_version']}, this dermcam reads {SCHEMA_VERSION}); "
                           "re-run 'dermcam train'", path)
    stages = m.get("stages") if isinstance(m.get("stages"), dict) else {}
    for stage in ([require] if require else []) + list(settled):
        entry = stages.get(stage) if isinstance(stages.get(stage), dict) else {}
        status = entry.get("status", "missing")
        if status == STATUS_COMPLETE or (status == "missing" and stage != require):
            continue
        raise DermcamError(f"run is incomplete: {_stage_problem(stage, entry, run_dir)}",
                           run_dir)
    return m


def _stage_problem(stage: str, entry: dict[str, Any], run_dir: Path) -> str:
    """Why a stage is not usable, and what to run, in one line."""
    status = entry.get("status", "missing")
    again = (f"'dermcam train DATA --out {run_dir} --overwrite'" if stage == "train"
             else f"'dermcam {stage} {run_dir}'")
    if status == "missing":
        return f"stage '{stage}' has not run; run {again} first"
    if status == "failed":
        why = str(entry.get("error") or "no reason recorded").replace("\n", " ")
        return f"stage '{stage}' failed ({why}); fix that and run {again}"
    if status == "running":
        resume = (f"'dermcam train DATA --out {run_dir} --resume'" if stage == "train"
                  else again)
        return (f"stage '{stage}' is still running or was interrupted (started "
                f"{entry.get('at', 'at an unknown time')}); wait for it to finish, or "
                f"resume it with {resume}")
    return f"stage '{stage}' is {status}; run {again}"


def write_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> None:
    manifest["schema_version"] = SCHEMA_VERSION
    manifest["updated"] = now()
    write_json(Path(run_dir) / MANIFEST, manifest)


def set_stage(run_dir: str | Path, stage: str, status: str, **info: Any) -> dict[str, Any]:
    m = read_manifest(run_dir)
    entry = m.setdefault("stages", {}).setdefault(stage, {})
    entry.update(info)
    if status != "failed":
        entry.pop("error", None)  # a failure's reason, once the stage runs again
    entry["status"] = status
    entry["at"] = now()
    write_manifest(run_dir, m)
    return m
