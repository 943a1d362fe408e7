"""Tests for dermcam.report: a self-contained, escaped, honest HTML page from a run folder.

One tiny real run (synthetic data, ResNet18 from scratch, one epoch, 64 px: at 32 px
ResNet18's layer4 is 1x1 and every heatmap is constant, hence undefined) is built
once per module in tmp; each test that edits a run works on its own copy.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermcam.errors import DermcamError
from dermcam.report import build_report
from dermcam.report import gallery as gal
from dermcam.report.html import fmt_ci, fmt_num

HOSTILE = "<script>alert(1)</script>"
HOSTILE_ID = '"><img src=x onerror=alert(2)>'


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from dermcam.data.synth import SynthConfig, generate
    from dermcam.stages.evaluate import run_evaluate
    from dermcam.stages.explain import run_explain
    from dermcam.stages.probe import run_probe
    from dermcam.stages.train import TrainConfig, train

    tmp = tmp_path_factory.mktemp("report_run")
    data = tmp / "data"
    generate(data, SynthConfig.from_preset("clean", n_train=40, n_test=16, image_size=64,
                                           seed=0))
    run = tmp / "run"
    train(TrainConfig(data=str(data), out=str(run), models=["resnet18"], weights="none",
                      image_size=64, max_epochs=1, batch_size=16, progress=False,
                      cache_dir=str(tmp / "cache")))
    run_evaluate(run, n_boot=50)
    run_explain(run, n_boot=50)
    run_probe(run, placements=1, n_boot=50, artifacts=("ruler", "patch"))
    return run


@pytest.fixture(scope="module")
def page(run_dir) -> str:
    path = build_report(run_dir)
    assert path == run_dir / "report.html"
    return path.read_text(encoding="utf-8")


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("report.html"))
    return dst


class _Tables(HTMLParser):
    """Every <table> as a list of rows of cell text (whitespace collapsed)."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _tables(page: str) -> list[list[list[str]]]:
    p = _Tables()
    p.feed(page)
    return p.tables


def _table_with(page: str, *headers: str) -> list[list[str]]:
    for t in _tables(page):
        if t and all(h in t[0] for h in headers):
            return t
    raise AssertionError(f"no table with headers {headers}")


def _section(page: str, sid: str) -> str:
    start = page.index(f'<section id="{sid}">')
    return page[start:page.index("</section>", start)]


def _ci_text(d: dict, value="value", lo="lo", hi="hi") -> str:
    return f"{d[value]:.3f} [{d[lo]:.3f}, {d[hi]:.3f}]"


# ----------------------------------------------------------------- content


def test_all_sections_present(page):
    for sid, title in (("summary", "1. Summary"), ("comparison", "2. Model comparison"),
                       ("attention", "3. Attention"), ("gallery", "4. Gallery"),
                       ("notes", "5. Method notes")):
        assert f'<section id="{sid}"><h2>{title}</h2>' in page
        assert f'href="#{sid}"' in page
    # a complete run has no missing pieces
    assert 'class="missing"' not in page


def test_probe_section_shows_every_entry_and_its_sentence(page, run_dir):
    from dermcam.stages.probe import CAVEAT, sentences

    entries = json.loads((run_dir / "probe_summary.json").read_text())["entries"]
    s = _section(page, "probe")
    assert 'href="#probe"' in page
    for line in sentences(entries, {"resnet18": "ResNet18"}):
        assert html.escape(line, quote=True) in s
    assert html.escape(CAVEAT) in s
    table = _table_with(s, "Probe", "Images", "Δ P(malignant) [95 % CI]")
    assert len(table) - 1 == len(entries)  # one row per model x probe [x artifact]
    les = next(e for e in entries if e["probe"] == "lesion_removed")
    row = next(r for r in table if r[0] == "lesion removed")
    assert row[1] == str(les["n"])
    assert row[2] == f"{les['delta_mean']:.3f} [{les['delta_ci_low']:.3f}, " \
                     f"{les['delta_ci_high']:.3f}]"
    assert s.count('<img src="data:image/png;base64,') == 3  # the three probe figures
    assert 'class="missing"' not in s


def test_probe_split_by_the_synthetic_benchmarks_artifact_flags(page, run_dir):
    """Without a label file, the benchmark's metadata.csv flags split the removal probes."""
    import pandas as pd

    summary = json.loads((run_dir / "probe_summary.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    meta = pd.read_csv(Path(manifest["data"]["root"]) / "metadata.csv", dtype={"image_id": str})
    probed = set(pd.read_csv(run_dir / "probe.csv", dtype={"image_id": str})["image_id"])
    meta = meta[meta["image_id"].isin(probed)].set_index("image_id")
    rows = summary["artifact_presence"]
    assert {r["artifact"] for r in rows} == {"ruler", "ink", "patch", "vignette", "hair"}
    for r in rows:
        flag = meta[f"artifact_{r['artifact']}"]
        assert r["with"]["n"] == int((flag == 1).sum())
        assert r["without"]["n"] == int((flag == 0).sum())
        assert r["with"]["n_malignant"] == int(meta.loc[flag == 1, "label"].sum())
    s = _section(page, "probe")
    table = _table_with(s, "Artifact", "Δ with", "AUC without")
    assert len(table) - 1 == len(rows)


def test_summary_states_data_weights_seed_and_versions(page, run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    s = _section(page, "summary")
    counts = _table_with(s, "Split", "Benign", "Malignant")
    test_row = next(r for r in counts if r[0] == "test")
    c = m["data"]["counts"]["test"]
    assert test_row[1:4] == [str(c["benign"]), str(c["malignant"]),
                             str(c["benign"] + c["malignant"])]
    assert "trained from scratch (random initialisation)" in s
    assert "ImageNet transfer learning was used" in s  # "no ImageNet transfer learning was used"
    kv = {r[0]: r[1] for r in _tables(s)[0]}
    assert kv["Seed"] == str(m["seed"])
    assert kv["Image size"].startswith("64 × 64")
    assert kv["Lesion masks"] == "present"
    assert f"dermcam {m['versions']['dermcam']}, torch {m['versions']['torch']}" in s
    stages = _table_with(s, "Stage", "Status", "Wall time")
    assert [r[1] for r in stages[1:]] == ["complete"] * 4


def test_numbers_match_metrics_json(page, run_dir):
    res = json.loads((run_dir / "metrics.json").read_text())
    table = _table_with(page, "Model", "Accuracy", "Benign F1", "ROC AUC", "Average precision")
    head = table[0]
    b = res["models"]["resnet18"]
    row = next(r for r in table if r[0] == "ResNet18")
    assert row[head.index("Accuracy")] == _ci_text(b["at_threshold"]["accuracy"])
    assert row[head.index("Malignant F1")] == _ci_text(b["at_threshold"]["f1_malignant"])
    assert row[head.index("ROC AUC")] == _ci_text(b["threshold_free"]["roc_auc"])
    assert row[head.index("Threshold")] == f"{b['threshold']:.3f}"
    base = next(r for r in table if r[0] == "All benign (baseline)")
    assert base[head.index("Accuracy")] == _ci_text(res["baselines"]["all_benign"]["accuracy"])
    assert f"average precision {res['baselines']['chance_average_precision']:.3f}" in page
    tn, fp = b["confusion_matrix"][0]
    fn, tp = b["confusion_matrix"][1]
    assert f"TN {tn}, FP {fp}, FN {fn}, TP {tp}" in page


def test_attention_table_matches_summary(page, run_dir):
    s = json.loads((run_dir / "attention_summary.json").read_text())
    table = _table_with(page, "Model", "Method", "Class", "Excess leakage ↓ chance 0")
    head = table[0]
    checked = 0
    for rec in s["by_class"]:
        if rec["metric"] not in ("leakage", "excess_leakage") or rec["mean"] is None:
            continue
        checked += 1
        cls = "malignant" if rec["label"] == 1 else "benign"
        row = next(r for r in table[1:] if r[2] == cls and r[1] == rec["method"])
        col = next(i for i, h in enumerate(head)
                   if h.split(" ↓")[0].lower() == rec["metric"].replace("_", " "))
        assert row[col].startswith(f"{rec['mean']:.3f}")
    assert checked >= 2
    att = _section(page, "attention")
    for key, t in s["tests"].items():
        assert key in att
        summ = t["size_confound"].get("summary")
        if summ:
            assert html.escape(summ) in att
    assert "Sanity check" in att and "Undefined scores" in att


def test_gallery_cards_and_filter(page, run_dir):
    g = _section(page, "gallery")
    att = pd.read_csv(run_dir / "attention.csv", dtype={"image_id": str})
    valid = att[np.isfinite(att["excess_leakage"])]
    missed = att[(att["label"] == 1) & (att["pred"] == 0)]
    expected = set(valid.nlargest(3, "excess_leakage")["image_id"]) | \
        set(valid.nsmallest(3, "excess_leakage")["image_id"]) | set(missed["image_id"][:12])
    cards = re.findall(r'<figure class="card" data-model="resnet18" data-method="gradcam" '
                       r'data-cls="(benign|malignant)" data-kind="([a-z ]+)">', g)
    assert len(cards) == len(expected) > 0
    for iid in expected:
        assert f">{iid}</b>" in g
    assert '<select class="filter" data-key="model">' in g
    assert '<select class="filter" data-key="cls">' in g
    # every strip is an embedded PNG
    strips = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', g)
    assert len(strips) == len(cards)
    with Image.open(io.BytesIO(base64.b64decode(strips[0]))) as im:
        assert im.format == "PNG" and im.size == (4 * gal.PANEL + 3 * 4, gal.PANEL)


# ----------------------------------------------------------------- self-contained, safe


def test_no_external_resources(page):
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"url\(|@import", page)
    for target in re.findall(r"""\bsrc\s*=\s*["']([^"']*)""", page):
        assert target.startswith("data:image/png;base64,")
    for target in re.findall(r"""\bhref\s*=\s*["']([^"']*)""", page):
        assert target.startswith("#")
    assert page.count("<script") == 1 and page.count("</script>") == 1


def test_csp_allows_exactly_the_inline_script(page):
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp and "img-src data:" in csp
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp


def test_hostile_strings_are_escaped(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    m["data"]["name"] = HOSTILE
    m["data"]["notes"] = [f"note {HOSTILE}"]
    m["data"]["root"] = HOSTILE  # also makes the images unreadable: heatmap-only gallery
    m["models"]["resnet18"]["display_name"] = HOSTILE
    (run / "manifest.json").write_text(json.dumps(m))
    att = pd.read_csv(run / "attention.csv", dtype={"image_id": str}, keep_default_na=False)
    top = gal.select_cases(att.replace("", np.nan))[0][0].row["image_id"]
    att.loc[att["image_id"] == top, "image_id"] = HOSTILE_ID  # picked for the gallery
    att.to_csv(run / "attention.csv", index=False)

    text = build_report(run).read_text(encoding="utf-8")
    assert HOSTILE not in text and HOSTILE_ID not in text
    assert "onerror=alert(2)>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in text
    assert text.count("<script") == 1
    g = _section(text, "gallery")
    # the renamed image has no saved heatmap: shown as missing, not faked
    assert "missing:</b> saved heatmap for &quot;&gt;&lt;img" in g
    assert "images and masks: the data set at" in g


def test_missing_attention_is_shown_not_hidden(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    (run / "attention.csv").unlink()
    (run / "attention_summary.json").unlink()
    m = json.loads((run / "manifest.json").read_text())
    del m["stages"]["explain"]
    (run / "manifest.json").write_text(json.dumps(m))
    text = build_report(run).read_text(encoding="utf-8")
    for sid in ("attention", "gallery"):
        sec = _section(text, sid)
        assert '<div class="missing" role="note"><b>missing:</b> attention' in sec
        assert "the explain stage has not run" in sec
    assert 'class="card"' not in text
    # the other sections are unaffected
    assert 'class="missing"' not in _section(text, "comparison")


def test_missing_evaluation_and_figure(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    (run / "metrics.json").unlink()
    (run / "figures" / "leakage_vs_area.png").unlink()
    text = build_report(run).read_text(encoding="utf-8")
    comp = _section(text, "comparison")
    assert "missing:</b> metrics.json not found although the evaluate stage is recorded" in comp
    assert "missing:</b> figures/leakage_vs_area.png not found" in _section(text, "attention")


def test_out_argument_and_not_a_run(run_dir, tmp_path):
    out = build_report(run_dir, tmp_path / "sub" / "r.html")
    assert out == tmp_path / "sub" / "r.html" and out.stat().st_size > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]  # no temporary left
    assert build_report(run_dir, tmp_path) == tmp_path / "report.html"
    with pytest.raises(DermcamError):
        build_report(tmp_path / "sub")


# ----------------------------------------------------------------- pure helpers


def test_formatting():
    assert fmt_num(None) == "n/a" and fmt_num(float("nan")) == "n/a"
    assert fmt_num(0.81666) == "0.817"
    assert fmt_ci({"value": 0.5, "lo": None, "hi": None}) == "0.500"
    assert fmt_ci({"value": None, "lo": 0.1, "hi": 0.2}) == "n/a"
    assert fmt_ci({"value": 0.5, "lo": 0.25, "hi": 0.75}) == \
        '0.500 <span class="ci">[0.250, 0.750]</span>'


def test_strip_known_answer():
    s = 16
    mask = np.zeros((s, s), bool)
    mask[4:12, 4:12] = True
    image = np.full((s, s, 3), 200, np.uint8)
    png = gal.render_strip(mask.astype(np.float32), image, mask, panel=s)
    with Image.open(io.BytesIO(png)) as im:
        arr = np.asarray(im.convert("RGB")).astype(int)
    assert arr.shape == (s, 4 * s + 3 * 4, 3)
    leak = arr[:, 3 * (s + 4):]
    r, g, b = leak[7, 7]  # lesion centre, heatmap 1: green
    assert g > 150 and r < 60
    r, g, b = leak[0, 0]  # background, heatmap 0: grey, no red
    assert abs(r - g) < 12 and abs(g - b) < 12
    # all-zero heatmap without image: one panel
    png = gal.render_strip(np.zeros((s, s)), panel=s)
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (s, s)
    with pytest.raises(ValueError, match="cam must be"):
        gal.render_strip(np.zeros((2, s, s)))


def test_select_cases_caps_and_dedupes():
    n = 20
    df = pd.DataFrame({"image_id": [f"i{k:02d}" for k in range(n)], "label": [1] * n,
                       "pred": [0] * 15 + [1] * 5, "prob_malignant": np.linspace(0, 1, n),
                       "excess_leakage": [np.nan] * 2 + list(np.linspace(-0.5, 0.5, n - 2)),
                       "reason": ["zero_heatmap"] * 2 + [""] * (n - 2)})
    cases, left = gal.select_cases(df, n_extreme=3, n_missed=12)
    ids = [c.row["image_id"] for c in cases]
    assert len(ids) == len(set(ids))
    assert ids[:3] == ["i19", "i18", "i17"]  # highest first
    by = {c.row["image_id"]: c.kinds for c in cases}
    assert by["i02"] == ["least", "missed"]  # lowest and missed: one card, two reasons
    assert sum("missed" in k for k in by.values()) == 12
    assert left == ["i12", "i13", "i14"]


# ----------------------------------------------------------------- a real browser


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def test_renders_in_headless_chromium(page, run_dir, tmp_path):
    if CHROMIUM is None:
        missing = ("chromium is not installed (apt-get install chromium); the real-browser "
                   "rendering check needs it")
        if _in_ci():  # CI must run this check: .ci/run installs chromium or fails
            pytest.fail(f"{missing}, and CI is set")
        pytest.skip(missing)
    chromium = CHROMIUM
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    profile.mkdir()
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,2000",
           (run_dir / "report.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[:2] == (2000, 1280)
    assert arr.std() > 10  # not a blank page
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 50  # text, tables and figures

    # the gallery filter works: drive the selects from an extra script (a copy without the
    # CSP, which would rightly block it) and read the DOM back
    drive = ("<script>var c=document.querySelector('select[data-key=\"cls\"]');"
             "c.value='malignant';c.onchange();</script></body>")
    probe = tmp_path / "probe.html"
    probe.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "",
                            page).replace("</body>", drive), encoding="utf-8")
    cmd[-3:] = ["--dump-dom", probe.resolve().as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    cards = re.findall(r'<figure class="card"([^>]*)>', dom)
    visible = [c for c in cards if "hidden" not in c]
    n_malignant = len(re.findall(r'<figure class="card"[^>]*data-cls="malignant"', page))
    assert len(cards) == len(re.findall(r'<figure class="card"', page)) > 0
    assert len(visible) == n_malignant
    assert all('data-cls="malignant"' in c for c in visible)
    assert f'id="gallery-count">{n_malignant}<' in dom


def _hand_summary(n: int = 90, seed: int = 0) -> dict:
    """attention_summary.json of a hand-made table: one model, one method, clusters of 3,
    heatmaps explaining both classes, an artifact flag."""
    from dermcam.stages.explain import summarise_attention

    rng = np.random.default_rng(seed)
    lab = (np.arange(n) % 3 == 0).astype(int)
    area = rng.uniform(0.05, 0.5, n)
    leak = np.clip(1 - area - 0.2 + 0.05 * lab + rng.normal(0, 0.05, n), 0, 1)
    leak[[1, 4]] = np.nan
    att = pd.DataFrame({
        "image_id": [f"i{i:03d}" for i in range(n)], "model": "m", "method": "gradcam",
        "layer": "layer4", "label": lab, "prob_malignant": 0.5, "pred": lab, "correct": True,
        "cam_target": np.where(rng.random(n) < 0.8, lab, 1 - lab), "leakage": leak,
        "lesion_area": area, "chance_leakage": 1 - area, "excess_leakage": leak - (1 - area),
        "pixel_auroc": np.where(np.isnan(leak), np.nan, rng.uniform(0.5, 0.9, n)),
        "inside_score": 0.5, "outside_score": 0.2, "localisation_gain": 1.2,
        "rank_accuracy": 0.3, "pointing_game": 0.5,
        "reason": np.where(np.isnan(leak), "zero_heatmap", ""),
        "group": [f"lesion{i // 3}" for i in range(n)],
        "artifact_hair": (np.arange(n) < 30).astype(int)})
    sanity = {"m/gradcam": {"passed": None, "threshold": 0.4, "summary": "inconclusive"}}
    return summarise_attention(att, {"stages": {"explain": {"target": "predicted"}}}, sanity,
                               n_boot=50, seed=0, cluster_name="lesion_id")


def test_attention_tables_and_notes_show_what_the_statistics_claim(tmp_path):
    from dermcam.io import MANIFEST, SCHEMA_VERSION, write_json
    from dermcam.report.html import RunFiles, fmt_p, section_attention, section_notes

    s = _hand_summary()
    write_json(tmp_path / MANIFEST, {"schema_version": SCHEMA_VERSION, "config": {
        "models": ["m"]}, "models": {}, "stages": {"explain": {"status": "complete",
                                                               "target": "predicted"}}})
    write_json(tmp_path / "attention_summary.json", s)
    r = RunFiles(tmp_path)
    att, notes = section_attention(r), section_notes(r)
    t = s["tests"]["m/gradcam"]
    # class comparisons: pooled and within each explained class, n (undefined), raw and BH p
    table = _table_with(att, "Heatmaps compared", "n benign (undefined)",
                        "Mann-Whitney p (raw)", "p adjusted (BH)")
    for metric, res in t["class_comparison"].items():
        comps = {"pooled over the explained class": res["pooled"],
                 **{f"within heatmaps explaining {k}": c for k, c in res["by_target"].items()}}
        assert len(comps) == 3
        for what, c in comps.items():
            row = next(x for x in table[1:] if x[1] == metric and x[2] == what)
            assert row[5] == f"{c['n_benign']} ({c['n_nan_benign']})"
            assert row[6] == f"{c['n_malignant']} ({c['n_nan_malignant']})"
            assert (row[7], row[8]) == (fmt_p(c["p_value"]), fmt_p(c["p_adjusted"]))
            assert row[10] == ("differ" if c["p_adjusted"] < 0.05 else "inconclusive")
    assert any(x[5].endswith("(2)") for x in table[1:])  # the two undefined benign maps
    # the size confound for all three metrics, raw and adjusted p, TOST both ways
    conf = _table_with(att, "Gap after area [95 % CI]", "p adjusted (BH)",
                       "TOST p adjusted (BH)", "Verdict")
    for metric, sc in t["size_confounds"].items():
        row = next(x for x in conf[1:] if x[1] == metric)
        assert row[4:8] == [fmt_p(sc["class_p_adjusted"]), fmt_p(sc["p_adjusted"]),
                            fmt_p(sc["equivalence"]["p"]),
                            fmt_p(sc["equivalence"]["p_adjusted"])]
        assert row[8] == sc["verdict"]
        assert html.escape(sc["summary"]) in att
    # artifact presence with CIs and both p-values
    pres = _table_with(att, "Artifact", "With", "Without", "p adjusted (BH)")
    assert {x[2] for x in pres[1:]} == {"leakage", "excess_leakage", "pixel_auroc"}
    # method notes: the correlations, the guard, the sanity rule as implemented, per image
    for phrase in ("Spearman rank correlation", "Pearson", "Uniform-attention guard",
                   "95 % bootstrap CI of the median |rho| lies below the threshold (0.4)",
                   "fails when the median itself is at or above it",
                   "artifact-presence comparisons", "decided on the adjusted p-values",
                   "Still per image, treating images of one lesion as independent: "
                   + "; ".join(s["per_image"])):
        assert html.escape(phrase) in notes, phrase


def test_comparison_column_titles_come_from_the_metric_label_registry(page):
    from dermcam.formatting import metric_label
    from dermcam.report.html import MAIN_COLUMNS, SECOND_COLUMNS

    main = _table_with(page, "Model", "Threshold", "Benign F1")
    assert main[0][2:] == [metric_label(k) for _, k, _ in MAIN_COLUMNS] == [
        "Accuracy", "Balanced accuracy", "Benign F1", "Malignant F1", "Sensitivity",
        "Specificity", "ROC AUC", "Average precision"]
    second = _table_with(page, "Model", "Accuracy @0.5")
    assert second[0][1:] == [t for _, _, t in SECOND_COLUMNS] == [
        "Accuracy @0.5", "Balanced acc. @0.5", "Benign F1 @0.5", "Malignant F1 @0.5",
        "Sensitivity @0.5", "Specificity @0.5", "Specificity at 95 % sensitivity",
        "ECE (lower is better)"]
    calib = _table_with(page, "Model", "T", "b", "ECE before")
    assert calib[0][3:] == ["ECE before", "ECE after", "ECE change", "Brier before",
                            "Brier after", "Brier change"]


def test_attention_helpers_by_hand():
    """The pieces section_attention is built from, on hand-made summaries."""
    from types import SimpleNamespace

    from dermcam.report import html as H

    r = SimpleNamespace(display=lambda name: name.upper())
    guard = {"better_than_uniform": False, "sentence": "no better than uniform <b>"}
    tests = {"m/gradcam": {"uniform_guard": guard, "sanity": None,
                           "size_confound": {"summary": "explained by size"},
                           "artifacts": {"error": "no artifact maps"}}}
    comp = H._class_comparison_html(tests)
    assert comp[0] == "<h3>Benign vs malignant</h3>" and 'class="missing"' in comp[1]
    assert comp[2] == ('<p class="caution"><b>m/gradcam:</b> no better than uniform '
                       "&lt;b&gt;</p>")
    conf = H._confound_html(r, tests)
    assert conf == ["<h3>Lesion-area confound</h3>",
                    '<ul class="sentences"><li><b>M</b> <span class="note">m/gradcam</span>: '
                    "no better than uniform &lt;b&gt;</li><li><b>M</b> <span class=\"note\">"
                    'm/gradcam, leakage</span>: explained by size</li></ul>']
    assert H._sanity_section(tests)[1] == (
        '<ul class="sentences"><li><b>m/gradcam</b>: <span class="undetermined">not run'
        "</span></li></ul>")
    assert 'class="missing"' in H._sanity_section({})[1]
    assert H._artifact_mass_rows(tests) == [["m/gradcam", "", "", "", "", "no artifact maps"]]
    art = H._artifacts_html({}, r, {})
    assert art[:2] == ["<h3>Attention on artifacts</h3>", ""]
    assert "artifact attention is not known" in art[2] and len(art) == 3
    size = H._size_aware_html({"by_class": []}, r, [])
    assert 'class="missing"' in size[1] and len(size) == 2
    head = H._size_aware_head({"leakage": {"higher_is_better": False, "chance": 0.5}})
    assert head[4] == 'Leakage<br><span class="note">↓ chance 0.5</span>'
    assert head[5] == "Chance leakage"
