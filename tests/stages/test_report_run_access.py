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


def test_report_of_a_sparse_manifest_renders(tmp_path):
    from dermcam.report.html import render

    # no models, data or stages recorded: the page says so, and findings.json is written
    write_json(tmp_path / MANIFEST, {"schema_version": SCHEMA_VERSION,
                                     "config": {"models": []}})
    page = render(tmp_path)
    assert "dermcam report: unnamed data set" in page and "Models: none trained" in page
    assert "No model has been trained in this run." in page
    assert "<dt>Seed</dt><dd>not recorded</dd>" in page
    assert (tmp_path / "findings.json").is_file()


def test_report_header_and_metadata_from_the_run(tmp_path):
    from dermcam.report.html import render

    page = render(_run_folder(tmp_path, seed=5, status="trained"))
    assert "dermcam report: toy set" in page
    assert "Models: b, Model A, c" in page  # configured order, then recorded models
    assert "<dt>Seed</dt><dd>5</dd>" in page
    assert re.search(r"<dt>Run</dt><dd>trained;", page)
    assert "<dt>Lesion masks</dt><dd>absent</dd>" in page
    # the stages the manifest records, failed ones with their status
    assert "<td>external:beta</td><td>failed</td>" in page
    # Model A's card: every finding not run (nothing but training recorded)
    assert "<h3>Model A<span" in page and 'data-status="ok"' not in page
