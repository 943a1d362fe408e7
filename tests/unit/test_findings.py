"""Findings (:mod:`dermcam.findings`): every status rule of the module docstring at and
around its boundaries, on hand-made summaries, then a hand-made run folder end to end.

Case tables are ``TEST_CASES = [(inputs, expected_status), ...]``; each case's id says
what it checks. The end-to-end tests build the smallest run folder ``Run.open`` accepts
in ``tmp_path`` (nothing outside it is read) and check that every finding's ``source``
resolves, in that folder, to exactly its ``value`` and that the sentence prints it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dermcam import findings as fd
from dermcam.errors import DermcamError
from dermcam.findings import MARGIN, STATUSES, TOPICS, Finding
from dermcam.formatting import fmt_num

M = "resnet18"


# ----------------------------------------------------------------- helpers


def _metrics_entry(auc=0.812, lo=0.75, hi=0.87, ece=0.031, ece_lo=0.02, ece_hi=0.045,
                   sens=0.8, spec=0.7) -> dict:
    return {"threshold_free": {"roc_auc": {"value": auc, "lo": lo, "hi": hi},
                               "ece": {"value": ece, "lo": ece_lo, "hi": ece_hi}},
            "at_threshold": {"sensitivity": {"value": sens}, "specificity": {"value": spec}}}


def _ece_entry(v, lo=None, hi=None) -> dict:
    return {"threshold_free": {"ece": {"value": v, "lo": lo, "hi": hi}}}


def _auc_entry(v, lo, hi) -> dict:
    return {"threshold_free": {"roc_auc": {"value": v, "lo": lo, "hi": hi}}}


def _att_test(better=True, med=0.873, ci=(0.85, 0.89), n=100, sanity="passed",
              nested=True, verdict="remains", coef=-0.0591, coef_ci=(-0.078, -0.04),
              share=0.67, method="hirescam", layer="layer2", size=True) -> dict:
    """One ``attention_summary.json['tests'][model/method]`` entry (with the ``method``
    key ``build_findings`` adds)."""
    t: dict = {"method": method, "layer": layer,
               "uniform_guard": {"better_than_uniform": better, "median_pixel_auroc": med,
                                 "pixel_auroc_ci": list(ci), "n": n}}
    if sanity is not None:
        t["sanity"] = {"full": {"verdict": sanity}} if nested else {"verdict": sanity}
    if size:
        t["size_confound"] = {"class_coef_adjusted": coef,
                              "class_ci_adjusted": list(coef_ci), "share_explained": share,
                              "verdict": verdict, "n": n}
    return t


def _probe(delta=0.001, lo=-0.01, hi=0.01, n=100, **extra) -> dict:
    return {"delta_mean": delta, "delta_ci_low": lo, "delta_ci_high": hi, "n": n, **extra}


def _att_row(attends, ratio=1.4, lo=1.1, hi=1.7, n=40) -> dict:
    return {"ratio": ratio, "ratio_ci_low": lo, "ratio_ci_high": hi, "attends": attends,
            "n": n}


def _group(name, n, auc, lo=None, hi=None, estimable=True) -> dict:
    g = {"group": name, "n": n, "estimable": estimable}
    if estimable:
        g["roc_auc"] = {"value": auc, "lo": lo, "hi": hi}
    return g


def _subgroup_result(p, p_adjusted="absent", groups=None) -> dict:
    het = {"p": p}
    if p_adjusted != "absent":
        het["p_adjusted"] = p_adjusted
    return {"groups": groups if groups is not None else [
        _group("female", 60, 0.85, 0.78, 0.91), _group("male", 45, 0.712, 0.6, 0.8),
        _group("other", 3, None, estimable=False)],
        "heterogeneity": {"auc": het}}


def _shortcut_exp(control_flagged=False, shortcut_flagged=True, pvc=None) -> dict:
    run = {"n": 67, "ratio": 2.5587, "ratio_ci_low": 2.38, "ratio_ci_high": 2.76}
    exp = {"artifact": "ruler", "model": M, "method": "hirescam",
           "runs": {"control": {**run, "ratio": 0.5215, "ratio_ci_low": 0.46,
                                "ratio_ci_high": 0.59, "flagged": control_flagged},
                    "shortcut": {**run, "flagged": shortcut_flagged}}}
    if pvc is not None:
        exp["probe_vs_control"] = pvc
    return exp


def _pvc(ci_low, margin=0.02, diff=0.3176) -> dict:
    return {"n": 379, "diff": diff, "ci_low": ci_low, "ci_high": diff + 0.02, "margin": margin}


# ----------------------------------------------------------------- Finding itself


def test_finding_rejects_unknown_status():
    for bad in ("fine", "not run", "OK", ""):
        with pytest.raises(ValueError, match="status must be one of"):
            Finding(M, "calibration", bad, "x")
    for good in STATUSES:
        assert Finding(M, "calibration", good, "x").status == good


@pytest.mark.parametrize("f", [
    Finding(M, "discrimination", "ok", "ROC AUC 0.812.", 0.812, (0.75, 0.87), 100,
            "metrics.json#/models/resnet18/threshold_free/roc_auc/value", "comparison"),
    Finding(M, "context", "not_run", "probe not run"),
    Finding("a~b/c", "artifact: ruler", "alarm", "x", -0.0123, (-0.05, -0.03), 7, "s", "a"),
], ids=["full", "empty", "odd-name"])
def test_finding_dict_round_trip(f):
    d = f.to_dict()
    assert d["ci"] == (list(f.ci) if f.ci is not None else None)
    again = Finding.from_dict(json.loads(json.dumps(d)))  # through JSON, as on disk
    assert again == f
    assert isinstance(again.ci, tuple) or again.ci is None


def test_fine_line_lists_exactly_the_ok_topics_of_that_model():
    fs = [Finding(M, "discrimination", "ok", "s"), Finding(M, "calibration", "caution", "s"),
          Finding(M, "where it looks", "not_run", "s"), Finding(M, "context", "ok", "s"),
          Finding(M, "artifact: ruler", "alarm", "s"), Finding(M, "lesion reliance", "ok", "s"),
          Finding("other", "calibration", "ok", "s")]
    assert fd.fine_line(fs, M) == "fine: discrimination, context, lesion reliance"
    assert fd.fine_line(fs, "other") == "fine: calibration"
    assert fd.fine_line(fs, "nobody") is None
    assert fd.fine_line([Finding(M, "context", "caution", "s")], M) is None
    assert fd.status_counts(fs) == {"alarm": 1, "caution": 1, "ok": 4, "not_run": 1}


def test_pointer_escapes_tilde_then_slash():
    assert fd._pointer("tests", "m~1/x", 0) == "/tests/m~01~1x/0"
    assert _resolve_pointer({"tests": {"m~1/x": [42]}}, fd._pointer("tests", "m~1/x", 0)) == 42


# ----------------------------------------------------------------- _probe_verdict

PROBE_VERDICT_CASES = [
    ((-0.01, 0.01), "negligible"),
    ((-0.02, 0.02), "negligible"),  # exactly at +-margin: still within
    ((0.0, 0.02), "negligible"),
    ((-0.02, 0.0), "negligible"),
    ((0.0201, 0.05), "reliance"),
    ((-0.05, -0.0201), "reliance"),
    ((0.02, 0.05), "inconclusive"),  # lower bound on the margin: not beyond it
    ((-0.05, -0.02), "inconclusive"),
    ((0.01, 0.03), "inconclusive"),  # crosses +margin
    ((-0.03, 0.03), "inconclusive"),  # wider than the margin both ways
    ((None, 0.01), "inconclusive"),  # undefined
    ((float("nan"), 0.01), "inconclusive"),
    ((0.03, float("inf")), "inconclusive"),
]


@pytest.mark.parametrize("ci, expected", PROBE_VERDICT_CASES,
                         ids=[f"{c[0]}:{c[1]}" for c, _ in PROBE_VERDICT_CASES])
def test_probe_verdict(ci, expected):
    assert fd._probe_verdict(*ci) == expected


def test_probe_verdict_uses_the_given_margin():
    assert fd._probe_verdict(0.03, 0.04, margin=0.05) == "negligible"
    assert fd._probe_verdict(0.03, 0.04, margin=0.02) == "reliance"
    assert fd._probe_verdict(-0.05, 0.05, margin=0.05) == "negligible"


# ----------------------------------------------------------------- discrimination

DISCRIMINATION_CASES = [
    ((0.812, 0.75, 0.87), "ok"),
    ((0.6, 0.51, 0.69), "ok"),
    ((0.6, 0.5000001, 0.69), "ok"),
    ((0.6, 0.5, 0.69), "alarm"),  # the CI reaches 0.5 exactly
    ((0.55, 0.49, 0.61), "alarm"),
    ((0.45, 0.38, 0.52), "alarm"),
]


@pytest.mark.parametrize("auc, expected", DISCRIMINATION_CASES,
                         ids=[f"lo={a[1]}" for a, _ in DISCRIMINATION_CASES])
def test_discrimination(auc, expected):
    f = fd.discrimination(M, _auc_entry(*auc), 379, 72, "src")
    assert f.status == expected
    assert (f.topic, f.model, f.source, f.n) == ("discrimination", M, "src", 379)
    assert f.value == auc[0] and f.ci == (auc[1], auc[2])
    assert fmt_num(auc[0], 3) in f.sentence and "n = 379 (72 malignant)" in f.sentence
    assert ("No better than chance" in f.sentence) == (expected == "alarm")


@pytest.mark.parametrize("entry", [None, {}, {"threshold_free": {}},
                                   _auc_entry(None, 0.6, 0.7), _auc_entry(float("nan"), 0, 1)],
                         ids=["none", "empty", "no-auc", "auc-none", "auc-nan"])
def test_discrimination_missing_is_not_run(entry):
    f = fd.discrimination(M, entry, 379, 72, "src")
    assert f.status == "not_run" and f.value is None


def test_discrimination_without_ci_is_never_ok():
    # no interval: chance cannot be ruled out, so the finding must not say "ok"
    f = fd.discrimination(M, _auc_entry(0.95, None, None), 379, None, "src")
    assert f.status != "ok"


def test_external_topic_and_anchor():
    f = fd.discrimination(M, _auc_entry(0.7, 0.62, 0.78), 50, 10, "s", topic="external: b",
                          anchor="external")
    assert (f.topic, f.anchor, f.status) == ("external: b", "external", "ok")


# ----------------------------------------------------------------- calibration

CALIBRATION_CASES = [
    (0.0, "ok"),
    (0.031, "ok"),
    (0.05, "ok"),  # boundary: ECE <= 0.05
    (0.0501, "caution"),
    (0.1, "caution"),
    (0.15, "caution"),  # boundary: ECE <= 0.15
    (0.151, "alarm"),
    (0.4, "alarm"),
]


@pytest.mark.parametrize("ece, expected", CALIBRATION_CASES,
                         ids=[str(e) for e, _ in CALIBRATION_CASES])
def test_calibration(ece, expected):
    f = fd.calibration(M, _ece_entry(ece, ece * 0.8, ece * 1.2 + 0.01), 379, "src")
    assert f.status == expected and f.value == ece and f.topic == "calibration"
    assert fmt_num(ece, 3) in f.sentence


@pytest.mark.parametrize("entry", [None, {}, _ece_entry(None), _ece_entry("0.03")],
                         ids=["none", "empty", "ece-none", "ece-string"])
def test_calibration_missing_is_not_run(entry):
    assert fd.calibration(M, entry, 379, "src").status == "not_run"


# ----------------------------------------------------------------- where it looks

WHERE_CASES = [
    (dict(), None, "ok"),
    (dict(sanity=None), None, "ok"),  # no sanity result recorded: nothing failed
    (dict(nested=False), None, "ok"),
    (dict(sanity="failed"), None, "caution"),
    (dict(sanity="inconclusive"), None, "caution"),
    (dict(sanity="failed", nested=False), None, "caution"),
    (dict(sanity="inconclusive", nested=False), None, "caution"),
    (dict(better=False, ci=(0.45, 0.7)), None, "caution"),
    # maps that do not beat uniform attention are never ok, whatever else passed
    (dict(better=False, ci=(0.45, 0.7), sanity="passed"), 0.0, "caution"),
    (dict(better=False, sanity="passed", nested=False), None, "caution"),
    (dict(), 0.05, "ok"),  # boundary: <= 5 % undefined
    (dict(), 0.0501, "caution"),
    (dict(), 0.06, "caution"),
    (dict(sanity="failed"), 0.3, "caution"),
]


@pytest.mark.parametrize("kw, undefined, expected", WHERE_CASES,
                         ids=[f"{i}-{expected}" for i, (_, _, expected)
                              in enumerate(WHERE_CASES)])
def test_where_it_looks(kw, undefined, expected):
    t = _att_test(**kw)
    f = fd.where_it_looks(M, t, undefined, "src")
    assert f.status == expected and f.topic == "where it looks"
    g = t["uniform_guard"]
    assert f.value == g["median_pixel_auroc"] and f.ci == tuple(g["pixel_auroc_ci"])
    assert f.n == g["n"] and fmt_num(f.value, 2) in f.sentence
    if expected == "caution":
        assert f.sentence.startswith("Heatmaps not to be read")
    if not kw.get("better", True):
        assert "no better than uniform" in f.sentence
    if undefined is not None and undefined > fd.MAX_UNDEFINED:
        assert "of maps undefined" in f.sentence


@pytest.mark.parametrize("test", [None, {}, {"uniform_guard": {}},
                                  {"uniform_guard": {"median_pixel_auroc": None,
                                                     "better_than_uniform": True}}],
                         ids=["none", "empty", "no-median", "median-none"])
def test_where_it_looks_missing_is_not_run(test):
    assert fd.where_it_looks(M, test, 0.0, "src").status == "not_run"


# ----------------------------------------------------------------- size confound

SIZE_CASES = [
    (dict(verdict="remains"), "ok"),
    (dict(verdict="explained by size"), "caution"),
    (dict(verdict="inconclusive"), "caution"),
    (dict(verdict=None), "caution"),
    # the metric means nothing where the maps do not beat uniform attention
    (dict(verdict="remains", better=False), "not_run"),
    (dict(verdict="explained by size", better=False, sanity="passed"), "not_run"),
    (dict(verdict="remains", size=False), "not_run"),
    (dict(verdict="remains", coef=None), "not_run"),
]


@pytest.mark.parametrize("kw, expected", SIZE_CASES,
                         ids=[f"{i}-{e}" for i, (_, e) in enumerate(SIZE_CASES)])
def test_size_confound(kw, expected):
    t = _att_test(**kw)
    f = fd.size_confound(M, t, "src")
    assert f.status == expected and f.topic == "size confound"
    if expected == "not_run":
        assert f.value is None
    else:
        assert f.value == -0.0591 and f.ci == (-0.078, -0.04) and f.n == 100
        assert fmt_num(-0.0591, 3, sign=True) in f.sentence and "67%" in f.sentence


def test_size_confound_none_is_not_run():
    assert fd.size_confound(M, None, "src").status == "not_run"


# ----------------------------------------------------------------- lesion reliance

LESION_CASES = [
    (dict(auc=0.496, auc_ci_low=0.42, auc_ci_high=0.56), "ok"),
    (dict(auc=0.58, auc_ci_low=0.5, auc_ci_high=0.66), "ok"),  # CI reaches 0.5: not above
    (dict(auc=0.59, auc_ci_low=0.51, auc_ci_high=0.67), "caution"),
    (dict(auc=0.8, auc_ci_low=0.72, auc_ci_high=0.88), "caution"),
]


@pytest.mark.parametrize("entry, expected", LESION_CASES,
                         ids=[f"lo={e['auc_ci_low']}" for e, _ in LESION_CASES])
def test_lesion_reliance(entry, expected):
    e = {**entry, "auc_intact": 0.9429, "n": 379}
    f = fd.lesion_reliance(M, e, "src")
    assert f.status == expected and f.topic == "lesion reliance"
    assert f.value == e["auc"] and f.ci == (e["auc_ci_low"], e["auc_ci_high"])
    assert fmt_num(e["auc"], 2) in f.sentence and "0.94" in f.sentence
    assert f.sentence.startswith("Still classifies" if expected == "caution" else "Relies on")


@pytest.mark.parametrize("entry", [None, {}, {"auc": None, "n": 3}, _probe()],
                         ids=["none", "empty", "auc-none", "no-auc-key"])
def test_lesion_reliance_missing_is_not_run(entry):
    assert fd.lesion_reliance(M, entry, "src").status == "not_run"


# ----------------------------------------------------------------- context

CONTEXT_CASES = [
    ((0.001, -0.01, 0.015), MARGIN, "ok"),
    ((0.0, -0.02, 0.02), MARGIN, "ok"),  # CI exactly at +-margin: negligible
    ((0.03, 0.021, 0.05), MARGIN, "caution"),  # beyond
    ((-0.03, -0.05, -0.021), MARGIN, "caution"),  # beyond, downwards
    ((0.02, 0.01, 0.03), MARGIN, "caution"),  # crosses: inconclusive
    ((-0.0174, -0.025, -0.01), MARGIN, "caution"),  # crosses -margin
    ((0.01, None, None), MARGIN, "caution"),  # no CI: inconclusive, never ok
    ((0.03, 0.01, 0.04), 0.05, "ok"),  # the summary's own margin
]


@pytest.mark.parametrize("d, margin, expected", CONTEXT_CASES,
                         ids=[f"{d[1]}:{d[2]}@{m}" for d, m, _ in CONTEXT_CASES])
def test_context(d, margin, expected):
    f = fd.context(M, _probe(*d), "src", margin)
    assert f.status == expected and f.topic == "context" and f.value == d[0]
    assert fmt_num(d[0], 3, sign=True) in f.sentence and f"±{margin:g}" in f.sentence


@pytest.mark.parametrize("entry", [None, {}, _probe(delta=None)], ids=["none", "empty", "nan"])
def test_context_missing_is_not_run(entry):
    assert fd.context(M, entry, "src").status == "not_run"


# ----------------------------------------------------------------- artifact

NEG, EDGE, REL, REL_DOWN, INC = ((0.001, -0.01, 0.012), (0.0, -0.02, 0.02),
                                 (0.045, 0.03, 0.06), (-0.04, -0.06, -0.021),
                                 (0.02, 0.01, 0.03))
ARTIFACT_CASES = [
    ((NEG, False), "ok"),
    ((EDGE, False), "ok"),  # CI within +-0.02 (inclusive), maps do not attend: not alarm
    ((REL, True), "alarm"),
    ((REL_DOWN, True), "alarm"),
    ((REL, False), "caution"),  # one line of evidence
    ((NEG, True), "caution"),  # the other line alone
    ((INC, False), "caution"),  # probe inconclusive
    ((INC, True), "caution"),
    ((None, True), "caution"),  # maps alone, attending
    ((REL, None), "caution"),  # probe alone, reacting
    ((INC, None), "caution"),
    ((None, None), "not_run"),
]


@pytest.mark.parametrize("inputs, expected", ARTIFACT_CASES,
                         ids=[f"{i}-{e}" for i, (_, e) in enumerate(ARTIFACT_CASES)])
def test_artifact(inputs, expected):
    probe, attends = inputs
    inserted = _probe(*probe) if probe else None
    row = _att_row(attends) if attends is not None else None
    f = fd.artifact(M, "ruler", inserted, row, "P#/p", "A#/a")
    assert f.status == expected and f.topic == "artifact: ruler"
    if expected == "not_run":
        assert f.value is None
        return
    if probe:  # the probe's change is the finding's number
        assert (f.value, f.ci, f.source) == (probe[0], (probe[1], probe[2]), "P#/p")
        assert fmt_num(probe[0], 3, sign=True) in f.sentence
    else:
        assert (f.value, f.ci, f.source) == (1.4, (1.1, 1.7), "A#/a")
        assert "1.40" in f.sentence
    head = {"alarm": "Relies on", "caution": "May rely on", "ok": "Ignores"}[expected]
    assert f.sentence.startswith(f"{head} the ruler")


@pytest.mark.parametrize("inserted, row", [(_probe(delta=None), None),
                                           (None, {"ratio": None, "attends": True}),
                                           ({}, {})], ids=["delta-none", "ratio-none", "empty"])
def test_artifact_without_numbers_is_not_run(inserted, row):
    assert fd.artifact(M, "ink", inserted, row, "P", "A").status == "not_run"


def test_artifact_uses_the_given_margin():
    inserted = _probe(0.03, 0.025, 0.04)
    assert fd.artifact(M, "ink", inserted, _att_row(False), "P", "A").status == "caution"
    assert fd.artifact(M, "ink", inserted, _att_row(False), "P", "A",
                       margin=0.05).status == "ok"


# ----------------------------------------------------------------- subgroups

SUBGROUP_CASES = [
    (dict(p=0.001, p_adjusted=0.01), "caution"),
    (dict(p=0.01, p_adjusted=0.049), "caution"),
    (dict(p=0.01, p_adjusted=0.05), "ok"),  # boundary: p < 0.05 strictly
    (dict(p=0.01, p_adjusted=0.2), "ok"),  # significant raw, not after Holm
    (dict(p=0.3, p_adjusted=0.9), "ok"),
    (dict(p=0.01), "caution"),  # no adjusted p recorded: the raw one
    (dict(p=None, p_adjusted=None), "ok"),  # no test possible: nothing detected
]


@pytest.mark.parametrize("kw, expected", SUBGROUP_CASES,
                         ids=[f"{i}-{e}" for i, (_, e) in enumerate(SUBGROUP_CASES)])
def test_subgroups(kw, expected):
    f = fd.subgroups(M, "sex", _subgroup_result(**kw), "src")
    assert f.status == expected and f.topic == "subgroups: sex"
    # the lowest estimable group is the number shown
    assert (f.value, f.ci, f.n) == (0.712, (0.6, 0.8), 45)
    assert "sex = male" in f.sentence and "0.71" in f.sentence
    if expected == "ok":
        assert "No AUC difference detected across 2 sex groups" in f.sentence
        assert "smallest n = 45" in f.sentence
    else:
        assert f.sentence.startswith("ROC AUC differs across sex groups")


@pytest.mark.parametrize("result", [None, {}, _subgroup_result(0.01, groups=[]),
                                    _subgroup_result(0.01, groups=[
                                        _group("a", 3, None, estimable=False)])],
                         ids=["none", "empty", "no-groups", "none-estimable"])
def test_subgroups_missing_is_not_run(result):
    assert fd.subgroups(M, "sex", result, "src").status == "not_run"


# ----------------------------------------------------------------- shortcut

SHORTCUT_CASES = [
    (("control", dict(control_flagged=False)), "ok"),
    (("control", dict(control_flagged=True)), "caution"),
    (("control", dict(control_flagged=False, pvc=_pvc(0.3))), "ok"),
    (("shortcut", dict(shortcut_flagged=True, pvc=_pvc(0.01))), "alarm"),  # maps only
    (("shortcut", dict(shortcut_flagged=False, pvc=_pvc(0.0201))), "alarm"),  # probe only
    (("shortcut", dict(shortcut_flagged=True, pvc=_pvc(0.3))), "alarm"),  # both
    (("shortcut", dict(shortcut_flagged=False, pvc=_pvc(0.02))), "caution"),  # at margin
    (("shortcut", dict(shortcut_flagged=False, pvc=_pvc(0.01))), "caution"),  # neither
    (("shortcut", dict(shortcut_flagged=False)), "caution"),  # no probe comparison
    (("shortcut", dict(shortcut_flagged=False, pvc=_pvc(0.03, margin=0.05))), "caution"),
]


@pytest.mark.parametrize("inputs, expected", SHORTCUT_CASES,
                         ids=[f"{i}-{r}-{e}" for i, ((r, _), e) in enumerate(SHORTCUT_CASES)])
def test_shortcut(inputs, expected):
    role, kw = inputs
    exp = _shortcut_exp(**kw)
    f = fd.shortcut(exp, role)
    assert f.status == expected and f.topic == "shortcut"
    r = exp["runs"][role]
    assert f.model == (M if role == "control" else f"{M} (shortcut-trained)")
    assert f.value == r["ratio"] and f.ci == (r["ratio_ci_low"], r["ratio_ci_high"])
    assert f.n == 67 and fmt_num(r["ratio"], 2) in f.sentence
    assert _resolve_source({fd.SHORTCUT: exp}, f.source) == f.value
    if role == "shortcut":
        caught = expected == "alarm"
        assert f.sentence.startswith("Relies on the planted ruler" if caught
                                     else "Planted ruler not detected")


# ----------------------------------------------------------------- a hand-made run folder

MODELS = ("resnet18", "eff~net/b0")  # the second name exercises "~0" and "~1"


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _manifest() -> dict:
    """The smallest manifest ``Run.open`` accepts with trained models: schema version,
    the configured models, and which of them completed (mobilenet_v2 did not)."""
    return {"schema_version": 1, "kind": "dermcam-run",
            "config": {"models": [*MODELS, "mobilenet_v2"]},
            "models": {"resnet18": {"status": "complete", "display_name": "ResNet18"},
                       "eff~net/b0": {"status": "complete"},
                       "mobilenet_v2": {"status": "running"}},
            "stages": {}}


def _metrics() -> dict:
    return {"schema_version": 1, "test": {"n": 379, "n_malignant": 72},
            "models": {"resnet18": _metrics_entry(0.9420014, 0.9097, 0.9648, 0.0348675,
                                                  0.0271, 0.0623),
                       "eff~net/b0": _metrics_entry(0.5612, 0.4981, 0.6233, 0.18234, 0.15,
                                                    0.21)},
            "subgroups": {"sex": {"column": "sex", "models": {
                "resnet18": _subgroup_result(0.004, 0.012)}}}}


def _attention() -> dict:
    guard = {"better_than_uniform": True, "median_pixel_auroc": 0.897248,
             "pixel_auroc_ci": [0.892149, 0.902003], "n": 379}
    return {"schema_version": 1, "n_images": 379, "models": list(MODELS),
            "methods": ["gradcam", "hirescam"], "equivalence_margin": 0.02, "undefined": {},
            "layer_choice": [{"model": "resnet18", "method": "hirescam", "layer": "layer2"},
                             {"model": "eff~net/b0", "method": "hirescam",
                              "layer": "features.3"}],
            "tests": {
                # listed first, but not the chosen method: must not be read
                "resnet18/gradcam": {"layer": "layer2", "uniform_guard": {
                    **guard, "better_than_uniform": False, "median_pixel_auroc": 0.51,
                    "pixel_auroc_ci": [0.48, 0.55]}},
                "resnet18/hirescam": {
                    "layer": "layer2", "uniform_guard": guard,
                    "sanity": {"full": {"verdict": "passed"}},
                    "size_confound": {"class_coef_adjusted": -0.059165625,
                                      "class_ci_adjusted": [-0.078, -0.040],
                                      "share_explained": 0.6705, "verdict": "remains",
                                      "n": 379}},
                "eff~net/b0/hirescam": {
                    "layer": "features.3",
                    "uniform_guard": {**guard, "better_than_uniform": False,
                                      "median_pixel_auroc": 0.5234,
                                      "pixel_auroc_ci": [0.497, 0.55]},
                    "sanity": {"full": {"verdict": "passed"}},
                    "size_confound": {"class_coef_adjusted": -0.02, "verdict": "remains",
                                      "class_ci_adjusted": [-0.03, -0.01], "n": 379}}},
            "artifacts": [
                {"model": "resnet18", "method": "gradcam", "artifact": "ruler",
                 **_att_row(True, 9.0, 8.0, 10.0, 67)},  # other method: ignored
                {"model": "resnet18", "method": "hirescam", "artifact": "ruler",
                 **_att_row(False, 0.4983, 0.421, 0.5785, 67)},
                {"model": "resnet18", "method": "hirescam", "artifact": "ink",
                 **_att_row(True, 1.2528, 1.0148, 1.5329, 42)},
                {"model": "resnet18", "method": "hirescam", "artifact": "patch",
                 **_att_row(True, 1.3375, 1.05, 1.75, 33)}]}  # no probe for patch


def _probe_summary() -> dict:
    def e(model, probe, art=None, **kw):
        return {"model": model, "probe": probe, "artifact": art, **kw}

    return {"schema_version": 2, "entries": [
        e("resnet18", "lesion_removed", **_probe(-0.1743, -0.2, -0.15, 379), auc=0.47991,
          auc_ci_low=0.405, auc_ci_high=0.556, auc_intact=0.9429),
        e("resnet18", "background_removed", **_probe(-0.0325561, -0.04, -0.025, 379),
          auc=0.96),
        e("resnet18", "artifact_inserted", "ink", **_probe(0.0850045, 0.07, 0.1, 379)),
        e("resnet18", "artifact_inserted", "ruler", **_probe(0.0093162, -0.005, 0.0195, 379)),
        e("resnet18", "artifact_removed", "ruler", **_probe(-0.5, -0.6, -0.4, 67)),
        e("eff~net/b0", "lesion_removed", **_probe(-0.1, -0.2, -0.05, 379), auc=0.6123,
          auc_ci_low=0.53, auc_ci_high=0.69, auc_intact=0.56),
        e("eff~net/b0", "background_removed", **_probe(0.0152, 0.005, 0.0301, 379)),
        e("eff~net/b0", "artifact_inserted", "hair", **_probe(-0.0234502, -0.03, -0.0215, 379)),
    ]}


def _external_metrics() -> dict:
    return {"test": {"n": 120, "n_malignant": 30},
            "models": {"resnet18": _metrics_entry(0.7345678, 0.66, 0.81)}}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    d = tmp_path / "run"
    _write(d / "manifest.json", _manifest())
    _write(d / "metrics.json", _metrics())
    _write(d / "attention_summary.json", _attention())
    _write(d / "probe_summary.json", _probe_summary())
    _write(d / "shortcut_experiment.json",
           _shortcut_exp(shortcut_flagged=True, pvc=_pvc(0.3000426)))
    _write(d / "external" / "site_b" / "metrics.json", _external_metrics())
    return d


def _resolve_pointer(doc, pointer: str):
    """RFC 6901: ``~1`` is ``/``, ``~0`` is ``~`` (unescaped in that order)."""
    assert pointer.startswith("/"), pointer
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(doc, list):
            assert token.isdigit(), f"{token!r} indexes a list in {pointer}"
            doc = doc[int(token)]
        else:
            assert token in doc, f"{token!r} not found ({pointer})"
            doc = doc[token]
    return doc


def _resolve_source(files, source: str):
    """``FILE#/json/pointer`` against ``files``: a run folder or ``{name: object}``."""
    file, _, pointer = source.partition("#")
    doc = files[file] if isinstance(files, dict) else \
        json.loads((Path(files) / file).read_text(encoding="utf-8"))
    return _resolve_pointer(doc, pointer)


#: How each topic prints its value: (decimals, signed).
DIGITS = {"discrimination": (3, False), "calibration": (3, False),
          "where it looks": (2, False), "size confound": (3, True),
          "lesion reliance": (2, False), "context": (3, True), "external": (3, False),
          "subgroups": (2, False), "shortcut": (2, False)}


def _printed(f: Finding) -> str:
    kind = f.topic.split(":", 1)[0]
    if kind == "artifact":  # the probe's change, else the maps' ratio
        digits, sign = (3, True) if "probe_summary" in f.source else (2, False)
    else:
        digits, sign = DIGITS[kind]
    return fmt_num(f.value, digits, sign=sign)


def _by(findings, model, topic) -> Finding:
    (f,) = [x for x in findings if x.model == model and x.topic == topic]
    return f


def test_build_findings_core_topics_in_order(run_dir):
    fs = fd.build_findings(run_dir)
    assert {f.model for f in fs} == {*MODELS, f"{M} (shortcut-trained)"}  # no mobilenet_v2
    for m in MODELS:
        assert [f.topic for f in fs if f.model == m and f.topic in TOPICS] == list(TOPICS)
        mine = [f.topic for f in fs if f.model == m]
        assert mine[:len(TOPICS)] == list(TOPICS)  # core topics come first
    assert [f.topic for f in fs if f.model == M] == [
        *TOPICS, "artifact: ink", "artifact: patch", "artifact: ruler", "subgroups: sex",
        "external: site_b", "shortcut"]
    assert [f.topic for f in fs if f.model == "eff~net/b0"] == [
        *TOPICS, "artifact: hair", "subgroups: sex", "external: site_b"]
    assert [f.topic for f in fs[-2:]] == ["shortcut", "shortcut"]


def test_build_findings_statuses(run_dir):
    fs = fd.build_findings(run_dir)
    expected = {
        (M, "discrimination"): "ok", (M, "calibration"): "ok",
        (M, "where it looks"): "ok",  # the chosen method (hirescam), not gradcam
        (M, "size confound"): "ok", (M, "lesion reliance"): "ok",
        (M, "context"): "caution",  # -0.04..-0.025: beyond the margin
        (M, "artifact: ruler"): "ok",  # probe within +-0.02, maps do not attend
        (M, "artifact: ink"): "alarm",  # both lines
        (M, "artifact: patch"): "caution",  # maps alone
        (M, "subgroups: sex"): "caution", (M, "external: site_b"): "ok",
        (M, "shortcut"): "ok", (f"{M} (shortcut-trained)", "shortcut"): "alarm",
        ("eff~net/b0", "discrimination"): "alarm",  # CI low 0.4981
        ("eff~net/b0", "calibration"): "alarm",
        ("eff~net/b0", "where it looks"): "caution",  # maps do not beat uniform
        ("eff~net/b0", "size confound"): "not_run",  # ... so not interpreted
        ("eff~net/b0", "lesion reliance"): "caution",  # CI above 0.5
        ("eff~net/b0", "context"): "caution",  # crosses the margin
        ("eff~net/b0", "artifact: hair"): "caution",  # probe alone, no attention row
        ("eff~net/b0", "subgroups: sex"): "not_run",
        ("eff~net/b0", "external: site_b"): "not_run",
    }
    assert {(f.model, f.topic): f.status for f in fs} == expected


def test_every_value_resolves_from_its_source_and_is_printed(run_dir):
    fs = fd.build_findings(run_dir)
    checked = 0
    for f in fs:
        if f.value is None:
            continue
        assert _resolve_source(run_dir, f.source) == f.value, (f.model, f.topic, f.source)
        assert _printed(f) in f.sentence, (f.model, f.topic, f.sentence)
        checked += 1
    assert checked >= 18
    # the escaped model name: "~" -> "~0", "/" -> "~1"
    src = _by(fs, "eff~net/b0", "where it looks").source
    assert src == ("attention_summary.json#/tests/eff~0net~1b0~1hirescam/uniform_guard/"
                   "median_pixel_auroc")
    assert _by(fs, M, "external: site_b").source.startswith("external/site_b/metrics.json#")


def test_subgroups_source_resolves_to_value(run_dir):
    f = _by(fd.build_findings(run_dir), M, "subgroups: sex")
    assert f.value == 0.712
    assert _resolve_source(run_dir, f.source) == f.value


def test_without_attention_summary_attention_topics_are_not_run(run_dir):
    (run_dir / "attention_summary.json").unlink()
    fs = fd.build_findings(run_dir)
    for m in MODELS:
        assert _by(fs, m, "where it looks").status == "not_run"
        assert _by(fs, m, "size confound").status == "not_run"
        assert _by(fs, m, "discrimination").status != "not_run"
    # artifacts now rest on the probe alone; patch had only attention evidence
    assert [f.topic for f in fs if f.model == M and f.topic.startswith("artifact")] == [
        "artifact: ink", "artifact: ruler"]
    assert _by(fs, M, "artifact: ink").status == "caution"  # one line of evidence left


def test_nothing_but_a_manifest_gives_not_run_never_ok(tmp_path):
    _write(tmp_path / "manifest.json", _manifest())
    fs = fd.build_findings(tmp_path)
    assert [(f.model, f.topic) for f in fs] == [(m, t) for m in MODELS for t in TOPICS]
    assert {f.status for f in fs} == {"not_run"}
    assert all(f.value is None for f in fs)
    assert fd.fine_line(fs, M) is None


def test_build_findings_refuses_a_folder_without_manifest(tmp_path):
    with pytest.raises(DermcamError):
        fd.build_findings(tmp_path)


def test_write_then_read_findings(run_dir):
    path, fs = fd.write_findings(run_dir)
    assert path == run_dir / fd.FINDINGS and path.is_file()
    obj = json.loads(path.read_text(encoding="utf-8"))
    assert obj["schema_version"] == 1 and obj["margin"] == MARGIN
    assert obj["display_names"]["resnet18"] == "ResNet18"
    assert obj["display_names"]["eff~net/b0"] == "eff~net/b0"
    assert fd.read_findings(run_dir) == fs
    assert fs == fd.build_findings(run_dir)


def test_read_findings_builds_when_absent_and_refuses_junk(run_dir):
    fs = fd.read_findings(run_dir)  # absent: built and written
    assert (run_dir / fd.FINDINGS).is_file() and fs == fd.build_findings(run_dir)
    (run_dir / fd.FINDINGS).write_text(json.dumps({"findings": "nope"}), encoding="utf-8")
    with pytest.raises(DermcamError, match="no list of findings"):
        fd.read_findings(run_dir)


# ----------------------------------------------------------------- known gaps (xfail)


def test_undefined_share_from_the_overall_rows(run_dir):
    summary = json.loads((run_dir / "attention_summary.json").read_text(encoding="utf-8"))
    summary["overall"] = [{"model": M, "method": "hirescam", "metric": "pixel_auroc",
                           "n": 379, "n_nan": 40}]  # 10.6 % undefined
    _write(run_dir / "attention_summary.json", summary)
    f = _by(fd.build_findings(run_dir), M, "where it looks")
    assert f.status == "caution" and "11% of maps undefined" in f.sentence


def test_undefined_share_by_hand():
    t = {"method": "hirescam"}
    row = {"model": "m", "method": "hirescam", "metric": "pixel_auroc", "n": 100, "n_nan": 6}
    assert fd._undefined_share({"overall": [row]}, "m", t) == 0.06
    other = dict(row, method="gradcam", n_nan=50)
    assert fd._undefined_share({"overall": [other, row]}, "m", t) == 0.06
    assert fd._undefined_share({"overall": [other]}, "m", t) is None
    assert fd._undefined_share({}, "m", None) is None


# ----------------------------------------------------------------- the real-pixel swap decides


def _swap(lo, hi, mean=None, control=(0.0, -0.01, 0.01)):
    return {"delta_mean": (lo + hi) / 2 if mean is None else mean, "delta_ci_low": lo,
            "delta_ci_high": hi, "n": 250, "control_mean": control[0],
            "control_ci_low": control[1], "control_ci_high": control[2]}


_PAINTED_REACTS = {"delta_mean": 0.08, "delta_ci_low": 0.05, "delta_ci_high": 0.11, "n": 250}
_PAINTED_FLAT = {"delta_mean": 0.0, "delta_ci_low": -0.01, "delta_ci_high": 0.01, "n": 250}
_ATTENDS = {"ratio": 2.0, "ratio_ci_low": 1.5, "ratio_ci_high": 2.5, "attends": True, "n": 40}


@pytest.mark.parametrize("swap, painted, attention, status", [
    # reliance on real pixels is an alarm, whatever the painted probe says
    (_swap(0.03, 0.09), _PAINTED_FLAT, None, "alarm"),
    (_swap(-0.09, -0.03), None, None, "alarm"),
    # negligible on real pixels: ok, unless the painted probe or the maps disagree
    (_swap(-0.01, 0.01), _PAINTED_FLAT, None, "ok"),
    (_swap(-0.01, 0.01), _PAINTED_REACTS, None, "caution"),
    (_swap(-0.01, 0.01), None, _ATTENDS, "caution"),
    # the CI crosses the margin: inconclusive
    (_swap(0.0, 0.05), _PAINTED_REACTS, _ATTENDS, "caution"),
    (_swap(0.02, 0.02001), None, None, "caution"),
])
def test_the_context_swap_decides_the_artifact(swap, painted, attention, status):
    f = fd.artifact(M, "ruler", painted, attention, "p#", "a#", swap=swap, swap_source="s#")
    assert f.status == status and f.source == "s#" and f.n == 250
    assert f.value == swap["delta_mean"] and "real ruler" in f.sentence
    assert "control" in f.sentence


def test_the_swap_says_how_many_test_images_carry_the_artifact():
    """Its CI rests on those images as donors, so the sentence names them."""
    f = fd.artifact(M, "ink", None, None, "p#", "a#", swap={**_swap(0.04, 0.12),
                                                            "images_with": 26})
    assert "(n = 250, 26 carry it; control +0.000)" in f.sentence
    assert "carry it" not in fd.artifact(M, "ink", None, None, "p#", "a#",
                                         swap=_swap(0.04, 0.12)).sentence


def _by_artifact(spec_with, n_with, spec_without, n_without):
    return {"groups": [{"group": "0", "n_benign": n_without,
                        "specificity": {"value": spec_without}},
                       {"group": "1", "n_benign": n_with, "specificity": {"value": spec_with}}]}


def test_the_false_positive_gap_by_artifact_presence_by_hand():
    from statsmodels.stats.proportion import proportion_confint

    gap = fd.artifact_gap(_by_artifact(0.2, 80, 0.55, 120))  # 64 of 80 vs 54 of 120
    assert gap["fpr_with"] == 0.8 and gap["fpr_without"] == 0.45
    assert gap["diff"] == pytest.approx(0.35) and (gap["n_with"], gap["n_without"]) == (80, 120)
    # Newcombe's hybrid score interval from the two Wilson intervals
    (l1, u1), (l2, u2) = (proportion_confint(64, 80, method="wilson"),
                          proportion_confint(54, 120, method="wilson"))
    lo = 0.35 - math.hypot(0.8 - l1, u2 - 0.45)
    hi = 0.35 + math.hypot(u1 - 0.8, 0.45 - l2)
    assert gap["ci"] == pytest.approx((lo, hi))
    assert fd.artifact_gap(None) is None
    assert fd.artifact_gap({"groups": [{"group": "0", "n_benign": 9,
                                        "specificity": {"value": 0.5}}]}) is None


_GAP = fd.artifact_gap(_by_artifact(0.2, 80, 0.55, 120))
_NO_GAP = fd.artifact_gap(_by_artifact(0.5, 80, 0.5, 120))
_REVERSED_GAP = fd.artifact_gap(_by_artifact(0.9, 80, 0.55, 120))


@pytest.mark.parametrize("swap, painted, gap, status, agrees, disagrees", [
    # the swap and the gap agree on reliance; the flat painted probe disagrees
    (_swap(0.03, 0.09), _PAINTED_FLAT, _GAP, "alarm", "benign lesions", "painted ruler"),
    # a negligible swap against a gap: caution, and the swap decides
    (_swap(-0.01, 0.01), None, _GAP, "caution", None, "benign lesions"),
    (_swap(-0.01, 0.01), _PAINTED_FLAT, _NO_GAP, "ok", "painted ruler", None),
    # fewer false positives with it is reliance too, the other way: it disagrees with a
    # negligible swap and with one that points towards malignant
    (_swap(-0.01, 0.01), None, _REVERSED_GAP, "caution", None, "benign lesions"),
    (_swap(0.03, 0.09), None, _REVERSED_GAP, "alarm", None, "benign lesions"),
    (_swap(-0.09, -0.03), None, _REVERSED_GAP, "alarm", "benign lesions", None),
])
def test_the_evidence_is_combined_and_said_to_agree_or_not(swap, painted, gap, status,
                                                           agrees, disagrees):
    f = fd.artifact(M, "ruler", painted, None, "p#", "a#", swap=swap, swap_source="s#",
                    gap=gap)
    assert f.status == status
    said_agree = f.sentence.split("; agrees: ")[1].split(";")[0] \
        if "; agrees: " in f.sentence else ""
    assert (agrees is None) == ("; agrees: " not in f.sentence)
    assert agrees is None or agrees in said_agree
    assert (disagrees is None) == ("disagrees: " not in f.sentence)
    assert disagrees is None or (disagrees in f.sentence.split("disagrees: ")[1]
                                 and "the real-pixel swap decides" in f.sentence)


@pytest.mark.parametrize("painted, gap, status", [
    (_PAINTED_FLAT, _GAP, "caution"),  # one piece of evidence
    (_PAINTED_REACTS, _GAP, "alarm"),  # two
    (_PAINTED_FLAT, _NO_GAP, "ok"),
    (_PAINTED_FLAT, _REVERSED_GAP, "caution"),  # either direction
])
def test_without_a_swap_the_gap_counts_as_evidence(painted, gap, status):
    f = fd.artifact(M, "ruler", painted, None, "p#", "a#", swap=None, gap=gap)
    assert f.status == status and "benign lesions called malignant" in f.sentence


def _hot(lo, hi, **kw):
    return {"delta_mean": (lo + hi) / 2, "delta_ci_low": lo, "delta_ci_high": hi, "n": 90, **kw}


@pytest.mark.parametrize("removed, pasted, status", [
    (_hot(-0.01, 0.01), _hot(0.03, 0.06), "caution"),  # transplanted, they move it
    (_hot(-0.06, -0.03), _hot(-0.01, 0.01), "caution"),  # removed, they move it
    (_hot(-0.01, 0.03), _hot(-0.01, 0.01), "caution"),  # inconclusive
    (_hot(-0.01, 0.01), _hot(-0.01, 0.01), "ok"),
])
def test_marked_regions(removed, pasted, status):
    f = fd.marked_regions(M, removed, pasted, "probe_summary.json#/entries/3/delta_mean")
    assert f.status == status and f.n == 90 and f.value == pasted["delta_mean"]
    assert fd.marked_regions(M, removed, None, "x") is None  # optional probe, not run


def test_marked_regions_name_the_artifact_they_come_from():
    src = {"ruler": {"share": 0.8, "share_all": 0.5}, "hair": {"share": 0.55,
                                                               "share_all": 0.5}}
    f = fd.marked_regions(M, None, _hot(0.03, 0.06, sources=src), "x")
    assert "80% come from images with ruler (vs 50%)" in f.sentence and "hair" not in f.sentence


def test_without_a_swap_the_painted_rule_stands():
    f = fd.artifact(M, "ruler", _PAINTED_REACTS, _ATTENDS, "p#", "a#", swap=None)
    assert f.status == "alarm" and f.source == "p#"


def test_one_estimable_subgroup_is_not_a_comparison():
    one = {"groups": [{"group": "0", "n": 190, "estimable": True,
                       "roc_auc": {"value": 0.54, "lo": 0.44, "hi": 0.64}},
                      {"group": "1", "n": 4, "estimable": False}],
           "heterogeneity": {"auc": {"p": float("nan")}}}
    f = fd.subgroups(M, "artifact_ink", one, "metrics.json#/x")
    assert f.status == "not_run" and "fewer than two" in f.sentence


# ----------------------------------------------------------------- an output that barely varies


@pytest.mark.parametrize("p05, p95, narrow", [
    (0.215, 0.268, True),  # measured: a weak real-image model after a Platt fit, T = 25
    (0.20, 0.2999, True), (0.20, 0.30, False),  # 5 margins of 0.02: 0.10
    (0.05, 0.60, False)])
def test_output_range_flags_a_model_whose_p_malignant_barely_varies(p05, p95, narrow):
    f = fd.output_range(M, {"prob_range": {"p05": p05, "p95": p95}}, 250, "m#")
    assert (f is not None) == narrow
    if narrow:
        assert (f.status, f.topic, f.n, f.source) == ("caution", "output range", 250, "m#")
        assert f"{p05:.3f} to {p95:.3f} on 90 % of the test images (n = 250)" in f.sentence


def test_output_range_says_nothing_without_a_recorded_range():
    assert fd.output_range(M, _metrics_entry(), 379, "m#") is None  # metrics of older runs
    assert fd.output_range(M, None, None, "m#") is None


@pytest.mark.parametrize("lo, hi, wide, narrow", [
    (-0.01, 0.01, "ok", "caution"),  # within: negligible only where the output varies
    (0.03, 0.09, "alarm", "alarm"),  # beyond: reliance, however narrow the output
    (0.0, 0.05, "caution", "caution"),  # crosses: inconclusive either way
])
def test_a_narrow_output_makes_a_change_within_the_margin_inconclusive(lo, hi, wide, narrow):
    within = -MARGIN <= lo and hi <= MARGIN
    a = fd.artifact(M, "ruler", None, None, "p#", "a#", swap=_swap(lo, hi))
    b = fd.artifact(M, "ruler", None, None, "p#", "a#", swap=_swap(lo, hi), narrow=True)
    assert (a.status, b.status) == (wide, narrow)
    assert ("(output range)" in b.sentence) == within and "(output range)" not in a.sentence
    if within:
        assert b.sentence.startswith("Reliance on the ruler inconclusive")
    c = fd.context(M, _probe((lo + hi) / 2, lo, hi), "src", MARGIN, True)
    assert c.status == "caution" and ("(output range)" in c.sentence) == within
    painted = {"delta_mean": (lo + hi) / 2, "delta_ci_low": lo, "delta_ci_high": hi, "n": 250}
    d = fd.artifact(M, "ink", painted, None, "p#", "a#", narrow=True)
    assert d.status == "caution"  # one line of evidence at most: never ok, never an alarm
    r = fd.marked_regions(M, None, _probe((lo + hi) / 2, lo, hi), "src", MARGIN, True)
    assert r.status == "caution" and ("(output range)" in r.sentence) == within


def test_build_findings_reads_the_output_range_and_applies_it(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["models"][M]["prob_range"] = {"p05": 0.24, "p95": 0.25}
    _write(run_dir / "metrics.json", metrics)
    fs = fd.build_findings(run_dir)
    f = _by(fs, M, "output range")
    assert _resolve_source(run_dir, f.source) == {"p05": 0.24, "p95": 0.25}
    # the ruler's painted probe, -0.005..+0.0195, was ok; with this output, inconclusive
    assert _by(fs, M, "artifact: ruler").status == "caution"
    assert [x.topic for x in fs if x.model == M][:len(TOPICS) + 1] == [*TOPICS, "output range"]
    assert not [x for x in fs if x.model == "eff~net/b0" and x.topic == "output range"]
