"""dermcam.run.Run: one typed handle on a run folder, and stage records every stage keeps."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from dermcam import run as runmod
from dermcam.config import EvaluateConfig, ExplainConfig
from dermcam.errors import DermcamError

# trains a model or runs a whole stage: deselect with -m 'not slow'
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tiny_run) -> Path:
    return tiny_run[1]


def _copy(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def _status(run: Path, stage: str) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"].get(stage, {})


def test_run_opens_once_and_answers_by_name(trained):
    from dermcam.stages.train import TrainConfig

    run = runmod.Run.open(trained, require="train")
    m = json.loads((trained / "manifest.json").read_text())
    assert isinstance(run.config, TrainConfig) and run.config.image_size == 32
    assert run.image_size == m["config"]["image_size"] and run.seed == m["seed"] == 3
    assert run.trained_models == ["resnet18"]
    assert run.model_file("resnet18") == trained / "models" / "resnet18" / "model.pt"
    assert run.model_file("resnet18").is_file() and run.history_file("resnet18").is_file()
    assert run.outputs.metrics == trained / "metrics.json"
    assert run.external("ph2").attention == trained / "external" / "ph2" / "attention.csv"
    assert run.report == trained / "report.html"
    # opened once: the same objects on every ask
    assert run.dataset is run.dataset and run.cache is run.cache
    assert run.load_model("resnet18") is run.load_model("resnet18")
    n_test = len([s for s in run.dataset.samples if s.split == "test"])
    assert len(run.test_samples()) == n_test and len(run.test_samples(limit=2)) == 2


def test_open_refuses_what_a_stage_must_not_read(tmp_path):
    with pytest.raises(DermcamError, match="run folder not found"):
        runmod.Run.open(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(DermcamError, match="no manifest.json"):
        runmod.Run.open(tmp_path / "x")


def test_stage_records_complete_with_its_record_or_failed_with_the_error(trained, tmp_path):
    run = runmod.Run.open(_copy(trained, tmp_path))
    with run.stage("evaluate", note="first") as record:
        assert _status(run.dir, "evaluate")["status"] == "running"
        record["n_test"] = 7
    st = _status(run.dir, "evaluate")
    assert st["status"] == "complete" and st["n_test"] == 7 and st["note"] == "first"
    assert st["wall_time_s"] >= 0 and run.stage_entry("evaluate")["n_test"] == 7
    with pytest.raises(RuntimeError, match="disk"):
        with run.stage("evaluate"):
            raise RuntimeError("disk full\nsecond line")
    st = _status(run.dir, "evaluate")
    assert st["status"] == "failed" and st["error"] == "disk full"
    with pytest.raises(KeyboardInterrupt):
        with run.stage("probe"):
            raise KeyboardInterrupt
    assert _status(run.dir, "probe") == {**_status(run.dir, "probe"), "status": "failed",
                                         "error": "interrupted (Ctrl-C)"}
    # a later stage refuses a failed one in one line, naming it and its error
    with pytest.raises(DermcamError, match=r"stage 'evaluate' failed \(disk full\)"):
        runmod.Run.open(run.dir, require="evaluate")


def test_explain_failing_midway_is_recorded_failed(trained, tmp_path, monkeypatch):
    """explain used to record 'running' and never 'failed'."""
    from dermcam import attribution
    from dermcam.stages.explain import run_explain

    run = _copy(trained, tmp_path)

    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(attribution.CamExplainer, "compute", boom)
    with pytest.raises(RuntimeError):
        run_explain(run, ExplainConfig(methods=["gradcam"], layer="layer3", sanity=False, n_boot=20,
                                       figures=False))
    st = _status(run, "explain")
    assert st["status"] == "failed" and st["error"] == "CUDA out of memory"
    from dermcam.stages.report import run_report

    with pytest.raises(DermcamError, match="stage 'explain' failed"):
        run_report(run)


def test_report_stage_is_recorded(trained, tmp_path, monkeypatch):
    from dermcam.report import html
    from dermcam.stages.report import run_report

    run = _copy(trained, tmp_path)
    path = run_report(run)
    st = _status(run, "report")
    assert path == run / "report.html" and path.is_file()
    assert st["status"] == "complete" and st["path"] == str(path)

    def broken(run_dir):
        raise ValueError("template missing")

    monkeypatch.setattr(html, "render", broken)
    with pytest.raises(ValueError):
        run_report(run)
    assert _status(run, "report")["status"] == "failed"


def test_no_module_but_run_spells_a_run_folder_file_name():
    """dermcam.run is the one place a run folder's file names are written down."""
    names = [getattr(runmod, k) for k in (
        "PREDICTIONS", "METRICS", "METRICS_CSV", "ATTENTION", "ATTENTION_SUMMARY",
        "LOCALISATION", "PROBE_CSV", "PROBE_SUMMARY", "REPORT", "MODEL_FILE", "HISTORY_FILE",
        "SHORTCUT_EXPERIMENT", "FINDINGS", "LOG")]
    pattern = re.compile(r"[\"'](" + "|".join(re.escape(n) for n in names) + r")[\"']")
    src = Path(runmod.__file__).parent
    found = [f"{p.relative_to(src)}:{i}"
             for p in sorted(src.rglob("*.py")) if p.name != "run.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_accessors_added_for_stages_on_a_hand_built_run(tmp_path):
    """display_names, thresholds, stage_setting, the predict folder's paths, recorded_kind."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    runmod.write_manifest(run_dir, {
        "kind": "dermcam-run", "config": {"image_size": 32, "models": ["a", "b", "c"]},
        "seed": 1, "models": {"a": {"display_name": "ResNet-A", "threshold": 0.25,
                                    "status": "complete"},
                              "b": {"threshold": 0.5, "status": "complete"},
                              "c": {"status": "failed"}},
        "stages": {"explain": {"status": "complete", "target": "predicted"},
                   "probe": "not a dict"}})
    run = runmod.Run.open(run_dir)
    assert run.display_names == {"a": "ResNet-A", "b": "b", "c": "c"}
    assert run.thresholds == {"a": 0.25, "b": 0.5}
    assert run.stage_setting("explain", "target") == "predicted"
    assert run.stage_setting("explain", "normalize", "minmax") == "minmax"
    assert run.stage_setting("probe", "target") is None  # a malformed entry reads as absent
    assert run.stage_setting("evaluate", "target", "x") == "x"  # never ran

    out = runmod.Outputs(tmp_path / "pred")
    assert out.manifest == tmp_path / "pred" / "manifest.json"
    assert out.overlay("ISIC_1") == out.overlays / "ISIC_1.png"
    assert runmod.recorded_kind(run_dir) == "dermcam-run"
    assert runmod.recorded_kind(tmp_path / "pred") is None  # no folder, no manifest
    (tmp_path / "pred").mkdir()
    out.manifest.write_text("{broken")
    assert runmod.recorded_kind(out.root) is None
    out.manifest.write_text("[1, 2]")
    assert runmod.recorded_kind(out.root) is None


def test_summarise_attention_reads_the_target_from_a_run_a_manifest_or_a_name():
    from dermcam.attention_summary import explained_class

    m = {"stages": {"explain": {"target": "true"}}}
    assert explained_class("predicted") == "predicted" and explained_class(None) is None
    assert explained_class(m) == "true" and explained_class({}) is None
    assert explained_class(runmod.Run(Path("x"), m)) == "true"


def test_training_writes_the_manifest_through_run(tmp_path):
    """create, record_model (re-reads, so another writer's stage survives), set_stage with
    the run's own status, and model_complete."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = runmod.Run.create(run_dir, {"kind": "dermcam-run", "status": "training",
                                      "config": {"models": ["a", "b"]}, "models": {},
                                      "stages": {"train": {"status": "running"}}})
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "training"
    runmod.set_stage(run_dir, "evaluate", "failed", error="x")  # written by someone else
    run.record_model("a", {"threshold": 0.3})
    on_disk = json.loads((run_dir / "manifest.json").read_text())
    assert on_disk["models"] == {"a": {"threshold": 0.3, "status": "complete"}}
    assert on_disk["stages"]["evaluate"]["status"] == "failed"
    assert run.model_complete("a") and not run.model_complete("b")
    run.set_stage("train", "failed", error="boom")
    run.set_stage("train", "complete", run_status="trained", n_train=5)
    on_disk = json.loads((run_dir / "manifest.json").read_text())
    assert on_disk["status"] == "trained" and run.manifest == on_disk
    assert on_disk["stages"]["train"]["n_train"] == 5
    assert "error" not in on_disk["stages"]["train"]  # the failure's reason is cleared
    assert runmod.Run.open(run_dir).trained_models == ["a"]


def test_no_module_but_run_reads_or_writes_the_manifest_by_key():
    """Stages, the report and the CLI go through Run's accessors: no ``manifest[...]``,
    ``manifest.get(...)``, read_manifest/write_manifest call or module-level set_stage
    outside dermcam.run."""
    pattern = re.compile(r"manifest\s*\[|manifest\.get\(|read_manifest\(|write_manifest\("
                         r"|runmod\.set_stage\(|\[\"(config|stages)\"\]")
    src = Path(runmod.__file__).parent
    found = [f"{p.relative_to(src)}:{i}: {line.strip()}"
             for p in sorted(src.rglob("*.py")) if p.name != "run.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_a_stage_takes_a_run_and_keeps_what_it_loaded(trained, tmp_path):
    """Run.of: a folder is opened; a Run is kept (its data set not reloaded) and its
    manifest re-read under the stage's checks."""
    from dermcam.stages.evaluate import run_evaluate

    run_dir = _copy(trained, tmp_path)
    run = runmod.Run.open(run_dir)
    ds = run.dataset
    run_evaluate(run, EvaluateConfig(n_boot=20))
    assert run.dataset is ds
    assert run.stage_entry("evaluate")["status"] == "complete"  # the run saw the write
    assert runmod.Run.of(run) is run and runmod.Run.of(run_dir).dir == run_dir
    runmod.set_stage(run_dir, "train", "failed", error="disk full")
    with pytest.raises(DermcamError, match="disk full"):
        runmod.Run.of(run, require="train")
