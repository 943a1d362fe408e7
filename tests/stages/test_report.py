"""Tests for dermcam.report: a self-contained, escaped page that answers on its first screen.

One tiny real run (synthetic data, ResNet18 from scratch, one epoch, 64 px: at 32 px
ResNet18's layer4 is 1x1 and every heatmap is constant, hence undefined) is built
once per module in tmp; each test that edits a run works on its own copy.
"""

from __future__ import annotations

import base64
import hashlib
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

from dermcam.config import EvaluateConfig, ExplainConfig, ProbeConfig
from dermcam.errors import DermcamError
from dermcam.report import build_report
from dermcam.report import gallery as gal
from dermcam.views import SECTIONS, run_sections

# trains a model or runs a whole stage: deselect with -m 'not slow'
pytestmark = pytest.mark.slow

HOSTILE = "<script>alert(1)</script>"
HOSTILE_ID = '"><img src=x onerror=alert(2)>'
SCREEN = 900  # px, the height of one screen at 1400 x 900


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
    run_evaluate(run, EvaluateConfig(n_boot=50))
    run_explain(run, ExplainConfig(n_boot=50))
    run_probe(run, ProbeConfig(placements=1, n_boot=50, artifacts=("ruler", "patch")))
    return run


@pytest.fixture(scope="module")
def page(run_dir) -> str:
    path = build_report(run_dir)
    assert path == run_dir / "report.html"
    return path.read_text(encoding="utf-8")


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("report.html", "findings.json"))
    return dst


class _Page(HTMLParser):
    """The page's tables (caption, rows of cell text), finding lines (status, text) and
    the ids of its sections and details, in order; text unescaped, whitespace collapsed."""

    def __init__(self):
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.lines: list[tuple[str, str]] = []
        self.ids: list[tuple[str, str, bool]] = []  # (tag, id, open)
        self._text: list[str] | None = None
        self._into = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("section", "details") and "id" in a:
            self.ids.append((tag, a["id"], "open" in a))
        if tag == "table":
            self.tables.append(("", []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th", "caption") or (tag == "li" and "data-status" in a):
            self._text, self._into = [], a.get("data-status", tag)

    def handle_endtag(self, tag):
        if self._text is None or tag not in ("td", "th", "caption", "li"):
            return
        text = " ".join("".join(self._text).split())
        if tag == "caption":
            self.tables[-1] = (text, self.tables[-1][1])
        elif tag == "li":
            self.lines.append((self._into, text))
        else:
            self.tables[-1][1][-1].append(text)
        self._text = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def _parse(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    return p


def _block(text: str, sid: str) -> str:
    """The ``<section>`` or ``<details>`` with id ``sid``."""
    m = re.search(rf'<(section|details)[^>]* id="{sid}"', text)
    assert m, sid
    depth, tags = 0, re.compile(rf"<(/?){m.group(1)}\b")
    for t in tags.finditer(text, m.start()):
        depth += -1 if t.group(1) else 1
        if depth == 0:
            return text[m.start():t.start()]
    raise AssertionError(f"{sid} is not closed")


def _png(path: Path, size=(60, 20)) -> None:
    Image.new("RGB", size, (200, 30, 30)).save(path)


# ----------------------------------------------------------------- the first screen


#: Where a JSON summary may hold a long string with spaces: definitions, the multiplicity
#: families' descriptions and how CIs were computed (method descriptions, not findings).
DEFINITIONS = re.compile(r"(^metric_definitions/[^/]+/definition$|^multiplicity/.*$|"
                         r"(^|/)ci_method$|^per_image/\d+$|/per_image/\d+$)")


def _long_strings(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _long_strings(v, f"{path}/{k}" if path else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _long_strings(v, f"{path}/{i}")
    elif isinstance(obj, str) and len(obj) > 80 and " " in obj:
        yield path, obj


def test_summaries_hold_numbers_and_codes_not_sentences(run_dir):
    """The core writes numbers and codes; the words are the views' (dermcam.views)."""
    for name in ("metrics.json", "attention_summary.json"):
        summary = json.loads((run_dir / name).read_text())
        prose = [(p, v) for p, v in _long_strings(summary) if not DEFINITIONS.search(p)]
        assert not prose, (name, prose)
    summary = json.loads((run_dir / "attention_summary.json").read_text())
    for entry in summary["tests"].values():
        assert "sentence" not in entry["uniform_guard"]
        assert "summary" not in entry["size_confound"]
        assert "summary" not in (entry.get("sanity") or {}).get("full", {})
    assert "resampling_note" not in summary


def test_findings_come_first(page):
    p = _parse(page)
    assert p.ids[0] == ("section", "findings", False)
    assert page.index('<section id="findings">') < min(
        page.index(f'id="{i}"') for _, i, _ in p.ids[1:])
    # the header cites the reference study once, with its numbers
    assert page.count("61.4 % for benign vs 46.7 % for malignant") == 1


def test_every_finding_appears_with_its_status(page, run_dir):
    saved = json.loads((run_dir / "findings.json").read_text())  # written with the report
    lines = _parse(_block(page, "findings")).lines
    assert saved["findings"]
    for f in saved["findings"]:
        hits = [s for s, text in lines if f["sentence"] in text and f["topic"] in text]
        assert hits == [f["status"]], f
    # one card per model, by its display name; ok topics fold into one "fine:" line
    names = saved["display_names"]
    for model in {f["model"] for f in saved["findings"]}:
        assert f"<h3>{names[model]}<span" in page
    ok = [f["topic"] for f in saved["findings"] if f["status"] == "ok"]
    if ok:
        assert f"fine: {', '.join(ok)}</summary>" in page


def test_examples_picture_on_the_first_screen(page, run_dir):
    # drawn by the explain stage, embedded as it is
    png = (run_dir / "figures" / "examples.png").read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    assert f'<img src="{uri}"' in _block(page, "findings")


def test_every_views_table_is_shown_cell_for_cell(page, run_dir):
    shown = _parse(page).tables
    tables = [t for ts in run_sections(run_dir).values() for t in ts]
    assert len(tables) >= 4
    for t in tables:
        assert (t.title, [t.columns, *t.rows]) in shown, t.title


def test_details_are_folded_and_the_nav_has_no_stubs(page):
    assert "<details" in page and not re.search(r"<details[^>]*\bopen\b", page)
    p = _parse(page)
    ids = [i for _, i, _ in p.ids]
    anchors = [a for a, _ in SECTIONS]
    assert [i for i in ids if i in anchors] == [a for a in anchors if a in ids]  # page order
    assert {"comparison", "attention", "probe", "notes"} <= set(ids)
    assert "shortcut" not in ids and "external" not in ids  # nothing to show: no section
    nav = re.search(r"<nav>(.*?)</nav>", page, re.S).group(1)
    assert re.findall(r'href="#([\w-]+)"', nav) == ids
    # a section that has nothing is one "not run" line in the findings
    assert "Not run: " in _block(page, "findings") and "--data OTHER" in page
    # the run's metadata comes last, inside the method notes
    notes = _block(page, "notes")
    assert page.rindex("<details") == page.index('<details class="sec" id="notes">')
    assert "Stages recorded in manifest.json" in notes and "Fingerprint" in notes


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
    assert "onerror=alert(2)>" not in text and text.count("<script") == 1
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"<title>dermcam report: {escaped}</title>" in text
    assert f"<h3>{escaped}<span" in _block(text, "findings")  # the model's card
    assert escaped in _block(text, "training")  # and its table rows
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in _block(text, "gallery")
    # the renamed image has no saved heatmap: said, not faked
    assert "no saved heatmap for &#34;&gt;&lt;img" in text


def test_missing_stages_are_not_run_findings_and_no_sections(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    for f in ("attention.csv", "attention_summary.json", "probe_summary.json", "probe.csv",
              "metrics.json"):
        (run / f).unlink()
    m = json.loads((run / "manifest.json").read_text())
    for stage in ("evaluate", "explain", "probe"):
        del m["stages"][stage]
    (run / "manifest.json").write_text(json.dumps(m))
    text = build_report(run).read_text(encoding="utf-8")
    saved = json.loads((run / "findings.json").read_text())["findings"]
    assert {f["status"] for f in saved} == {"not_run"}
    lines = _parse(_block(text, "findings")).lines
    assert {s for s, _ in lines} == {"not_run"} and len(lines) == len(saved)
    for sid, how in (("comparison", "dermcam evaluate"), ("attention", "dermcam explain"),
                     ("probe", "dermcam probe")):
        assert f'id="{sid}"' not in text and f'href="#{sid}"' not in text
        assert how in _block(text, "findings")
    assert 'id="gallery"' not in text and 'id="training"' in text


def test_shortcut_example_and_localisation_grid_are_embedded(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    _png(run / "figures" / "shortcut_example.png", (70, 20))
    _png(run / "figures" / "localisation_grid.png", (50, 40))
    (run / "figures" / "examples.png").unlink()
    text = build_report(run).read_text(encoding="utf-8")
    uri = "data:image/png;base64," + base64.b64encode(
        (run / "figures" / "shortcut_example.png").read_bytes()).decode()
    assert uri in _block(text, "findings")
    # explain ran but its picture is gone: said, with the command that draws it
    assert "figures/examples.png not found: &#39;dermcam explain" in _block(text, "findings")
    # the localisation table folds inside the localisation figure
    att = _block(text, "attention")
    fig = att[att.index("Localisation benchmark: CAM method"):]
    fig = fig[:fig.index("</figure>")]
    assert "<details><summary>Localisation benchmark on" in fig and "<table>" in fig


def test_out_argument_and_not_a_run(run_dir, tmp_path):
    out = build_report(run_dir, tmp_path / "sub" / "r.html")
    assert out == tmp_path / "sub" / "r.html" and out.stat().st_size > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]  # no temporary left
    assert build_report(run_dir, tmp_path) == tmp_path / "report.html"
    with pytest.raises(DermcamError):
        build_report(tmp_path / "sub")


# ----------------------------------------------------------------- gallery picks


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
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    profile.mkdir()
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1400,900",
           "--run-all-compositor-stages-before-draw", "--virtual-time-budget=2000",
           f"--screenshot={shot}", (run_dir / "report.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[:2] == (900, 1400)
    assert arr.std() > 10  # not a blank page
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 50  # text, badges and a picture

    # a copy without the CSP (which would rightly block the extra script) measures the
    # page with its details folded, then drives the gallery filter; read the DOM back
    drive = ("<script>window.addEventListener('load',function(){var b=document.body;"
             "b.setAttribute('data-height',document.documentElement.scrollHeight);"
             "var c=document.querySelector('select[data-key=\"cls\"]');"
             "if(c){c.value='malignant';c.onchange();}});</script></body>")
    probe = tmp_path / "probe.html"
    probe.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "",
                            page).replace("</body>", drive), encoding="utf-8")
    # the page's own script runs under its CSP: a link to a section unfolds it
    cmd[-2:] = ["--dump-dom", (run_dir / "report.html").resolve().as_uri() + "#probe"]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert re.search(r'<details class="sec" id="probe" open', dom)
    assert not re.search(r'<details class="sec" id="attention" open', dom)
    cmd[-1] = probe.resolve().as_uri()
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    height = int(re.search(r'data-height="(\d+)"', dom).group(1))
    assert SCREEN <= height <= 12 * SCREEN
    cards = re.findall(r'<figure class="card"([^>]*)>', dom)
    visible = [c for c in cards if "hidden" not in c]
    n_malignant = len(re.findall(r'<figure class="card"[^>]*data-cls="malignant"', page))
    assert len(cards) == len(re.findall(r'<figure class="card"', page)) > 0
    assert len(visible) == n_malignant
    assert all('data-cls="malignant"' in c for c in visible)
    assert f'id="gallery-count">{n_malignant}<' in dom
