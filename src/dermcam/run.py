"""The run directory: one folder per study, each stage reading the previous one's files.

``manifest.json`` (config, versions, data, stage status), ``models/<name>/model.pt`` and
``history.csv`` (train), predictions and metrics (evaluate), ``attention/`` (explain),
``report.html`` (report), ``external/<name>/`` (another data set's audit)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import platform
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from dermcam import __version__
from dermcam.checkpoints import load_checkpoint
from dermcam.config import TrainConfig
from dermcam.errors import DermcamError
from dermcam.io import MANIFEST, SCHEMA_VERSION, read_json, write_json

log = logging.getLogger(__name__)

STATUS_COMPLETE = "complete"


def versions() -> dict[str, str]:
    out = {"dermcam": __version__, "python": platform.python_version()}
    for mod, dist in (("torch", "torch"), ("torchvision", "torchvision"),
                      ("lightning", "lightning"), ("numpy", "numpy"), ("sklearn", "scikit-learn"),
                      ("pytorch_grad_cam", "grad-cam")):
        try:  # the module's own string where it has one (torch's names its CUDA build)
            out[mod] = getattr(__import__(mod), "__version__", None) or version(dist)
        except (ImportError, PackageNotFoundError):
            pass
    return out


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


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
        if not (out / MANIFEST).exists():
            raise DermcamError("--overwrite only replaces a dermcam run folder; this one holds "
                               "other files", out)
        for child in (MODELS_DIR, FIGURES_DIR, HEATMAP_DIR, PROBE_DIR, "report_files",
                      EXTERNAL_DIR):
            shutil.rmtree(out / child, ignore_errors=True)
        for f in out.glob("*"):
            if f.is_file():
                f.unlink()
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
    ``require``: that stage must be complete; ``settled``: these may be absent or complete but
    not running or failed, since their files may then be stale or missing."""
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
    for stage in ([require] if require else []) + list(settled):
        entry = _mapping(_mapping(m.get("stages")).get(stage))
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


def set_stage(run_dir: str | Path, stage: str, status: str, run_status: str | None = None,
              **info: Any) -> dict[str, Any]:
    """Record ``stage`` as ``status`` with ``info`` and the time (``run_status``: the run's own
    status too) in one write; returns the manifest written."""
    m = read_manifest(run_dir)
    if run_status is not None:
        m["status"] = run_status
    entry = m.setdefault("stages", {}).setdefault(stage, {})
    entry.update(info)
    if status != "failed":
        entry.pop("error", None)  # a failure's reason, once the stage runs again
    entry["status"] = status
    entry["at"] = now()
    write_manifest(run_dir, m)
    return m


# The one place a run folder's file names are spelled; every stage asks for them here.

MODELS_DIR = "models"
MODEL_FILE = "model.pt"
HISTORY_FILE = "history.csv"
EXTERNAL_DIR = "external"
FIGURES_DIR = "figures"
HEATMAP_DIR = "attention"  # explain's heatmap batches, per model / method / layer
PROBE_DIR = "probe"  # probe's per-batch rows, for resuming
PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
METRICS_CSV = "metrics.csv"
ATTENTION = "attention.csv"
ATTENTION_SUMMARY = "attention_summary.json"
LOCALISATION = "localisation.json"
PROBE_CSV = "probe.csv"
PROBE_SUMMARY = "probe_summary.json"
REPORT = "report.html"
SHORTCUT_EXPERIMENT = "shortcut_experiment.json"
FINDINGS = "findings.json"
EXAMPLES_PNG = "examples.png"  # in figures/: explain's per-model examples, the report's picture
SHORTCUT_EXAMPLE_PNG = "shortcut_example.png"  # in figures/: the demo's planted-shortcut picture
LOG = "dermcam.log"  # every stage's detail tables, as the terminal shows them with --verbose
OVERLAY_DIR = "overlays"  # 'dermcam predict': one overlay PNG per image


class Outputs:
    """The files one audit writes under ``root`` (the run folder, or ``RUN/external/<name>/``;
    ``dermcam predict``'s own folder too); paths only."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Outputs({str(self.root)!r})"

    predictions = property(lambda self: self.root / PREDICTIONS)
    metrics = property(lambda self: self.root / METRICS)
    metrics_csv = property(lambda self: self.root / METRICS_CSV)
    attention = property(lambda self: self.root / ATTENTION)
    attention_summary = property(lambda self: self.root / ATTENTION_SUMMARY)
    localisation = property(lambda self: self.root / LOCALISATION)
    probe_csv = property(lambda self: self.root / PROBE_CSV)
    probe_summary = property(lambda self: self.root / PROBE_SUMMARY)
    figures = property(lambda self: self.root / FIGURES_DIR)
    heatmaps = property(lambda self: self.root / HEATMAP_DIR)
    probe_batches = property(lambda self: self.root / PROBE_DIR)
    manifest = property(lambda self: self.root / MANIFEST)
    overlays = property(lambda self: self.root / OVERLAY_DIR)

    def overlay(self, image_id: str) -> Path:
        return self.root / OVERLAY_DIR / f"{image_id}.png"


def recorded_kind(folder: str | Path) -> str | None:
    """The ``kind`` a folder's manifest.json records, or None where it cannot be read."""
    try:
        m = read_json(Path(folder) / MANIFEST)
    except DermcamError:
        return None
    return m.get("kind") if isinstance(m, dict) else None


class Run:
    """A typed handle on one run folder, opened once and passed to every stage.

    Paths by name, the :class:`TrainConfig`, the data set, decode cache and models loaded once,
    and ``with run.stage(name) as record:`` (running, then complete or failed). No other module
    spells a run-folder file name or indexes the manifest (tests check both)."""

    def __init__(self, run_dir: str | Path, manifest: dict[str, Any]):
        self.dir = Path(run_dir)
        self.manifest = manifest
        self._dataset = self._cache = None
        self._models: dict[str, tuple] = {}

    @classmethod
    def open(cls, run_dir: str | Path, require: str | None = None,
             settled: tuple[str, ...] = ()) -> Run:
        return cls(run_dir, read_manifest(run_dir, require=require, settled=settled))

    @classmethod
    def of(cls, run: Run | str | Path, require: str | None = None,
           settled: tuple[str, ...] = ()) -> Run:
        """A folder is opened; a :class:`Run` is kept (with what it loaded) and its manifest
        re-read under the same checks, since another stage may have written it."""
        if isinstance(run, cls):
            run.manifest = read_manifest(run.dir, require=require, settled=settled)
            return run
        return cls.open(run, require=require, settled=settled)

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    def refresh(self) -> Run:
        self.manifest = read_manifest(self.dir)
        return self

    @property
    def outputs(self) -> Outputs:
        """The files of the run's own audit (test split)."""
        return Outputs(self.dir)

    def external(self, name: str) -> Outputs:
        """The files of another data set's audit, ``external/<name>/``."""
        return Outputs(self.dir / EXTERNAL_DIR / name)

    @property
    def report(self) -> Path:
        return self.dir / REPORT

    def model_file(self, name: str) -> Path:
        return self.dir / MODELS_DIR / name / MODEL_FILE

    def history_file(self, name: str) -> Path:
        return self.dir / MODELS_DIR / name / HISTORY_FILE

    @property
    def config(self) -> TrainConfig:
        known = set(TrainConfig.__dataclass_fields__)
        return TrainConfig(**{k: v for k, v in self.manifest["config"].items() if k in known})

    @property
    def image_size(self) -> int:
        return int(self.manifest["config"]["image_size"])

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    @property
    def cache_dir(self) -> str | None:
        return self.manifest["config"].get("cache_dir")

    # The manifest's fields as recorded: a value (None where absent) or a mapping ({} where
    # absent or not one); seed and config above are the checked ones.
    status = property(lambda self: self.manifest.get("status"))
    created = property(lambda self: self.manifest.get("created"))
    updated = property(lambda self: self.manifest.get("updated"))
    recorded_seed = property(lambda self: self.manifest.get("seed"))
    recorded_config = property(lambda self: _mapping(self.manifest.get("config")))
    versions = property(lambda self: _mapping(self.manifest.get("versions")))
    data = property(lambda self: _mapping(self.manifest.get("data")))
    stages = property(lambda self: _mapping(self.manifest.get("stages")))

    @property
    def configured_models(self) -> list[str]:
        return list(self.recorded_config.get("models") or [])

    @property
    def data_root(self) -> Path:
        return Path(self.data["root"])

    def stage_entry(self, name: str) -> dict[str, Any]:
        return _mapping(self.stages.get(name))

    @property
    def trained_models(self) -> list[str]:
        """Models whose training completed, in the order asked for."""
        done = self.manifest.get("models", {})
        return [m for m in (self.manifest.get("config") or {}).get("models", [])
                if done.get(m, {}).get("status") == STATUS_COMPLETE]

    @property
    def model_records(self) -> dict[str, dict[str, Any]]:
        """``{model: record}`` of every model training recorded, in order."""
        recs = self.manifest.get("models")
        return {k: v for k, v in recs.items() if isinstance(v, dict)} \
            if isinstance(recs, dict) else {}

    def model_record(self, name: str) -> dict[str, Any]:
        return self.manifest.get("models", {}).get(name, {})

    @property
    def display_names(self) -> dict[str, str]:
        return {k: v.get("display_name", k) for k, v in self.manifest.get("models", {}).items()}

    @property
    def thresholds(self) -> dict[str, float]:
        """``{model: threshold chosen on validation}``."""
        return {k: v["threshold"] for k, v in self.manifest.get("models", {}).items()
                if "threshold" in v}

    def stage_setting(self, stage: str, key: str, default: Any = None) -> Any:
        """What ``stage`` recorded under ``key``, or ``default``."""
        return self.stage_entry(stage).get(key, default)

    @property
    def cache(self):
        if self._cache is None:
            from dermcam.data.cache import ImageCache
            self._cache = ImageCache(self.cache_dir,
                                     resize=self.recorded_config.get("resize", "squash"))
        return self._cache

    @property
    def dataset(self):
        """The training data set, with the run's artifact labels joined (opened once)."""
        if self._dataset is None:
            from dermcam.data import load_dataset
            self._dataset = load_dataset(self.data["root"],
                                         artifacts=self.data.get("artifacts"))
            if self._dataset.fingerprint() != self.data.get("fingerprint"):
                log.warning(
                    "data under %s changed since training (fingerprint differs)",
                    self._dataset.root)
        return self._dataset

    def test_samples(self, require_masks: bool = False, limit: int | None = None) -> list:
        samples = self.dataset.split("test")
        if require_masks:
            samples = [s for s in samples if s.mask_path is not None]
        return samples[:limit] if limit else samples

    def load_model(self, name: str):
        """``(model, info, payload)`` of a trained model (loaded once; callers move it)."""
        if name not in self._models:
            self._models[name] = load_checkpoint(self.model_file(name))
        return self._models[name]

    @classmethod
    def start(cls, run_dir: str | Path, cfg: TrainConfig, ds, train_samples, **train: Any
              ) -> Run:
        """A new run's first manifest (config, versions, data set, class counts); ``train``:
        more of the train stage's entry."""
        from dermcam.data.dataset import class_counts  # pandas: not at the CLI's start
        return cls.create(run_dir, {
            "kind": "dermcam-run", "created": now(), "status": "training",
            "config": asdict(cfg), "seed": cfg.seed, "versions": versions(),
            "data": {"root": str(Path(cfg.data).resolve()), "name": ds.name,
                     "layout": ds.layout, "fingerprint": ds.fingerprint(),
                     "has_masks": ds.has_masks, "notes": ds.notes,
                     "counts": {"train": class_counts(train_samples),
                                "test": class_counts(ds.split("test"))}},
            "models": {}, "stages": {"train": {"status": "running", "at": now(), **train}},
        })

    @classmethod
    def create(cls, run_dir: str | Path, manifest: dict[str, Any]) -> Run:
        write_manifest(run_dir, manifest)
        return cls(run_dir, manifest)

    def model_complete(self, name: str) -> bool:
        return self.model_record(name).get("status") == STATUS_COMPLETE

    def record_model(self, name: str, record: dict[str, Any]) -> None:
        """Record a trained model as complete (the manifest re-read first, losing nothing)."""
        m = read_manifest(self.dir)
        m.setdefault("models", {})[name] = {**record, "status": STATUS_COMPLETE}
        write_manifest(self.dir, m)
        self.manifest = m

    def record_artifacts(self, path: str | Path) -> None:
        """Record a per-image artifact-label file (``data.artifacts``) that later stages join
        (the manifest re-read first; an unchanged file is not written again)."""
        m = read_manifest(self.dir)
        if not isinstance(m.get("data"), dict):
            raise DermcamError("manifest.json records no data set", self.dir / MANIFEST)
        if m["data"].get("artifacts") != str(path):
            m["data"]["artifacts"] = str(path)
            write_manifest(self.dir, m)
        self.manifest = m

    def set_stage(self, stage: str, status: str, run_status: str | None = None,
                  **info: Any) -> None:
        """For a stage that is not one ``with`` block (training leaves an interrupted stage
        'running' so --resume can continue)."""
        self.manifest = set_stage(self.dir, stage, status, run_status=run_status, **info)

    @contextlib.contextmanager
    def stage(self, name: str, **info: Any) -> Iterator[dict[str, Any]]:
        """Record stage ``name``: running, then complete with its wall time and the yielded
        dict, or failed with the error's first line (Ctrl-C: 'interrupted'); re-raises."""
        t0 = time.perf_counter()
        self.manifest = set_stage(self.dir, name, "running", **info)
        record: dict[str, Any] = {}
        try:
            yield record
        except BaseException as exc:
            why = ("interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt)
                   else (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300])
            try:
                self.manifest = set_stage(self.dir, name, "failed", error=why)
            except DermcamError:  # the folder itself went away: the original error matters
                pass
            raise
        self.manifest = set_stage(self.dir, name, STATUS_COMPLETE,
                                  wall_time_s=round(time.perf_counter() - t0, 2), **record)


def record_in_run(run_dir: str | Path, path: str | Path, ds=None) -> str:
    """Check the artifact label file ``path`` against the run's data set and record it in the
    manifest for every later stage; returns the join's note. ``ds``: already loaded with it."""
    from dermcam.data import load_dataset
    from dermcam.data.artifact_labels import join_note
    run = Run.open(run_dir)
    path = Path(path).resolve()
    if ds is None or getattr(ds, "artifact_labels", None) is None:
        ds = load_dataset(run.data_root, check_files=False, artifacts=path)
    run.record_artifacts(path)
    return join_note(ds)
