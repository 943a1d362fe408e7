"""The report and the external-set listing read the manifest through :class:`dermcam.run.Run`."""

from __future__ import annotations

import re
from pathlib import Path

from dermcam import run as runmod
from dermcam.io import MANIFEST, SCHEMA_VERSION, write_json

_STAGES = {
    "train": {"status": "complete", "n_train": 8, "n_val": 2},
    "external:alpha": {"status": "complete"},
    "external:beta": {"status": "failed", "error": "boom"},
    "external:alpha/explain": {"status": "complete"},
    "external:gamma/probe": {"status": "running"},
    "external:odd": "not an entry",
}


def _run_folder(tmp_path: Path, **extra) -> Path:
    manifest = {"schema_version": SCHEMA_VERSION, "config": {"models": ["b", "a"]},
                "models": {"a": {"display_name": "Model A", "threshold": 0.25,
                                 "status": "complete"},
                           "c": {"status": "complete"}},
                "data": {"name": "toy set", "has_masks": False}, "stages": _STAGES}
    manifest.update(extra)
    write_json(tmp_path / MANIFEST, manifest)
    return tmp_path


def test_external_sets_and_audits_take_a_run_or_its_folder(tmp_path):
    from dermcam.stages.external import external_audits, external_sets

    folder = _run_folder(tmp_path)
    run = runmod.Run.open(folder)
    want_sets = [("alpha", folder / runmod.EXTERNAL_DIR / "alpha", _STAGES["external:alpha"]),
                 ("beta", folder / runmod.EXTERNAL_DIR / "beta", _STAGES["external:beta"])]
    want_audits = {"alpha": {"explain": _STAGES["external:alpha/explain"]},
                   "gamma": {"probe": _STAGES["external:gamma/probe"]}}
    for form in (run, folder, str(folder)):
        assert external_sets(form) == want_sets
        assert external_audits(form) == want_audits
    # the older (folder, manifest) form still reads the manifest given
    assert external_sets(folder, {"stages": {}}) == []
    assert external_audits(folder, run.manifest) == want_audits


def test_external_sets_of_a_run_without_stages(tmp_path):
    from dermcam.stages.external import external_audits, external_sets

    for stages in ({}, None, ["odd"]):
        run = runmod.Run.open(_run_folder(tmp_path, stages=stages))
        assert external_sets(run) == [] and external_audits(run) == {}


def test_run_files_read_the_manifest_through_run(tmp_path):
    from dermcam.report.html import RunFiles

    r = RunFiles(_run_folder(tmp_path))
    assert isinstance(r.run, runmod.Run) and r.run.dir == tmp_path
    assert not hasattr(r, "manifest")
    assert r.names == ["b", "a", "c"]  # configured order, then recorded models
    assert [r.display(n) for n in r.names] == ["b", "Model A", "c"]
    assert r.stages == r.run.stages and r.stage_status("external:beta") == "failed"
    assert "no lesion masks" in r.absent_reason("attention.csv", "explain")
    assert "has not run" in r.absent_reason("metrics.json", "evaluate")


def test_report_of_a_sparse_manifest_renders(tmp_path):
    from dermcam.report.html import render

    # no config, models, data or stages recorded: every section says what is missing
    write_json(tmp_path / MANIFEST, {"schema_version": SCHEMA_VERSION})
    page = render(tmp_path)
    assert "unnamed data set · no models" in page
    assert "no trained models are recorded in manifest.json" in page
    row = re.search(r"<th>Seed</th><td>(.*?)</td>", page)
    assert row and row.group(1) == "not recorded"


def test_report_header_and_external_section_from_the_run(tmp_path):
    from dermcam.report.html import render

    page = render(_run_folder(tmp_path, seed=5, status="trained"))
    assert "toy set · b, Model A, c" in page
    assert re.search(r"<th>Seed</th><td>5</td>", page)
    assert re.search(r"<th>Run status</th><td>trained</td>", page)
    # external sets and audits come from the run's stages
    assert "external set beta: the stage is &#x27;failed&#x27; (boom)" in page
    assert "Attention and probes on alpha" in page and "Attention and probes on gamma" in page
