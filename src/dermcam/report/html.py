"""``report.html``: one self-contained page, a card per model and the stages' pictures first,
then folded sections of tables and figures. Jinja2 autoescapes; figures are ``data:`` URIs
and the Content-Security-Policy allows only them, the inline style and the one script (by its
SHA-256 hash), so the page opens offline and loads nothing from outside.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from dermcam import run as runmod
from dermcam.findings import RULES, STATUSES, Finding, display_names, status_counts, write_findings
from dermcam.formatting import is_number
from dermcam.io import read_json, write_text
from dermcam.report import gallery
from dermcam.views import SECTIONS, Table, run_facts, run_sections

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("templates")
#: Largest figure embedded; a larger one is named as not embedded (keeps the page openable).
MAX_FIGURE_BYTES = 8_000_000
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: The study dermcam reproduces, cited once in the header.
REFERENCE = ("Reference study: ResNet18, EfficientNet-B0 and MobileNet-V2 fine-tuned on the "
             "ISIC 2016 Challenge Part 3B data set; Grad-CAM attention leakage (the share of "
             "the heatmap outside the lesion mask) 61.4 % for benign vs 46.7 % for malignant "
             "lesions.")

#: The command that fills an absent section (``{run}``: the run folder).
HOW = {"training": "dermcam train --out {run}", "comparison": "dermcam evaluate {run}",
       "external": "dermcam evaluate {run} --data OTHER",
       "subgroups": "dermcam evaluate {run} --by COLUMN", "attention": "dermcam explain {run}",
       "probe": "dermcam probe {run}", "shortcut": "dermcam demo"}

#: Figures of each section, in ``RUN/figures``; ``{m}``: each model.
FIGURES = {
    "training": [("{m}_history.png", "{name}: loss and validation metrics per epoch")],
    "comparison": [("roc_curves.png", "ROC curves on the test set"),
                   ("pr_curves.png", "Precision-recall curves on the test set"),
                   ("reliability.png", "Reliability diagram (calibration)"),
                   ("model_comparison.png", "Metrics per model with 95 % CIs")],
    "attention": [("localisation_grid.png", "Localisation benchmark: CAM method × layer "
                                            "(median pixel AUROC; 0.5 = uniform attention)"),
                  ("attention_leakage_analysis_{m}.png", "{name}: the reference study's "
                                                         "leakage figure, made size-aware"),
                  ("leakage_vs_accuracy.png", "Leakage against the share classified correctly "
                                              "(specificity, sensitivity) per model"),
                  ("leakage_vs_area.png", "Leakage against lesion area: small lesions leak "
                                          "more by chance"),
                  ("size_aware_scores.png", "Size-aware scores per model (median pixel AUROC, "
                                            "other scores as means)")],
    "probe": [("probe_auc.png", "ROC AUC intact, lesion removed, background removed"),
              ("probe_delta.png", "Per-image change in P(malignant) under each probe"),
              ("probe_examples.png", "What each probe did to the pixels")],
}
#: Tables folded inside a figure: figure file -> the title its table starts with.
FOLD_INTO = {"localisation_grid.png": "Localisation benchmark"}
#: The first screen's pictures, in ``RUN/figures``, drawn by the stages.
PICTURES = ((runmod.EXAMPLES_PNG, "Each model at its chosen CAM layer: a correctly called "
                                  "malignant and benign test image and the misclassified one "
                                  "whose heatmap leaks most."),
            (runmod.SHORTCUT_EXAMPLE_PNG, "The planted shortcut: the control and the "
                                          "shortcut-trained model on one test image, before "
                                          "and after a ruler is pasted."))


@dataclass
class Figure:
    uri: str
    caption: str
    tables: list[Table] = field(default_factory=list)  # folded inside the figure
    wide: bool = False  # spans the figure grid (a picture more than twice as wide as high)


@dataclass
class Section:
    anchor: str
    title: str
    tables: list[Table]
    figures: list[Figure]
    absent: list[str]  # figure files expected but not embedded, with why
    folded: list[Table]  # tables of a figure that is absent, folded on their own


@dataclass
class Card:
    """One model's findings: the lines to show and the ``ok`` / ``not_run`` ones folded."""
    name: str
    status: str  # the worst status shown
    lines: list[Finding]
    ok: list[Finding]
    not_run: list[Finding]
    counts: dict[str, int]


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _png(path: Path, caption: str) -> tuple[Figure | None, str]:
    """``(Figure, "")`` of a PNG file, or ``(None, why not)``."""
    if not path.is_file():
        return None, "not found"
    data = path.read_bytes()
    if not data.startswith(_PNG_MAGIC):
        return None, "not a PNG"
    if len(data) > MAX_FIGURE_BYTES:
        return None, f"{len(data) / 1e6:.1f} MB, too large to embed"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # PNG header
    return Figure(_data_uri(data), caption, wide=h > 0 and w > 2 * h), ""


def script() -> str:
    return (TEMPLATES / "report.js").read_text(encoding="utf-8").strip()


def csp(text: str) -> str:
    """The page's Content-Security-Policy, allowing exactly the inline script ``text``."""
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'")


def cards(findings: list[Finding], names: dict[str, str]) -> list[Card]:
    """One card per model, in the findings' order."""
    out = []
    for model in dict.fromkeys(f.model for f in findings):
        mine = [f for f in findings if f.model == model]
        lines = [f for f in mine if f.status in ("alarm", "caution")]
        counts = status_counts(mine)
        worst = next((s for s in STATUSES if counts[s] and s != "not_run"), "not_run")
        out.append(Card(names.get(model, model), worst, lines,
                        [f for f in mine if f.status == "ok"],
                        [f for f in mine if f.status == "not_run"], counts))
    return out


def sections(run: runmod.Run, names: dict[str, str]) -> list[Section]:
    """The detail sections that have something to show, in :data:`SECTIONS` order."""
    tables = run_sections(run.dir)
    models = list(run.model_records) or run.configured_models
    out = []
    for anchor, title in SECTIONS:
        if not (ts := tables.get(anchor) or []):
            continue
        figs, absent, alone = [], [], []
        for pattern, caption in FIGURES.get(anchor, []):
            for m in models if "{m}" in pattern else [None]:
                if anchor == "training" and run.model_record(m).get("source"):
                    continue  # audited from outside: no training history to show
                rel = pattern.format(m=m)
                fig, why = _png(run.dir / runmod.FIGURES_DIR / rel,
                                caption.format(name=names.get(m, m)))
                folded = [t for t in ts if rel in FOLD_INTO and t.title.startswith(FOLD_INTO[rel])]
                ts = [t for t in ts if t not in folded]
                if fig:
                    fig.tables = folded
                    figs.append(fig)
                else:
                    alone += folded
                    absent.append(f"figures/{rel} {why}")
        if anchor == "external":
            figs += _external_figures(run)
        out.append(Section(anchor, title, ts, figs, absent, alone))
    return out


def _external_figures(run: runmod.Run) -> list[Figure]:
    folder = run.dir / runmod.EXTERNAL_DIR
    return [fig for d in (sorted(folder.iterdir()) if folder.is_dir() else [])
            for rel, what in (("roc_curves.png", "ROC curves"), ("reliability.png", "Reliability"))
            if (fig := _png(d / runmod.FIGURES_DIR / rel, f"{what} on {d.name}")[0])]


def pictures(run: runmod.Run) -> tuple[list[Figure], list[str]]:
    """The first screen's pictures (explain's examples, the demo's shortcut); a note where
    explain ran but drew no examples."""
    figs, notes = [], []
    for rel, caption in PICTURES:
        fig, why = _png(run.dir / runmod.FIGURES_DIR / rel, caption)
        if fig:
            figs.append(fig)
        elif rel == runmod.EXAMPLES_PNG and runmod.Outputs(run.dir).attention.exists():
            notes.append(f"figures/{rel} {why}: 'dermcam explain {run.dir}' draws it.")
    return figs, notes


def notes_context(run: runmod.Run) -> dict[str, Any]:
    """The run's values the method notes quote (bootstrap size, margin, sanity threshold)."""
    from dermcam.stages.probe import CAVEAT

    out = runmod.Outputs(run.dir)
    metrics = read_json(out.metrics) if out.metrics.exists() else {}
    summ = read_json(out.attention_summary) if out.attention_summary.exists() else {}
    sanities = [t.get("sanity") for t in (summ.get("tests") or {}).values()
                if isinstance(t, dict) and isinstance(t.get("sanity"), dict)]
    thresholds = sorted({float(s["threshold"]) for s in
                         (x.get("full") if isinstance(x.get("full"), dict) else x
                          for x in sanities) if is_number(s.get("threshold"))})
    margin = summ.get("equivalence_margin")
    return {"n_boot": metrics.get("n_boot", "the recorded number of"),
            "ci_method": metrics.get("ci_method", "percentile"),
            "resampling": metrics.get("resampling", "images"),
            "att_resampling": summ.get("resampling", "images"),
            "per_image": "; ".join(map(str, summ.get("per_image") or [])),
            "margin": f"{margin:g}" if is_number(margin) else "0.02",
            "sanity": ", ".join(f"{t:g}" for t in thresholds) or "0.5",
            "definitions": {k: d if isinstance(d, dict) else {} for k, d in
                            (summ.get("metric_definitions") or {}).items()},
            "caveat": CAVEAT, "rules": RULES}


def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


def render(run_dir: str | Path) -> str:
    """The report page for ``run_dir`` as a string (writes ``RUN/findings.json``)."""
    from dermcam import __version__

    run = runmod.Run.open(run_dir)
    _, findings = write_findings(run.dir)
    names = {**run.display_names, **display_names(run, findings)}
    secs = sections(run, names)
    shown = {s.anchor for s in secs}
    figs, picture_notes = pictures(run)
    shown_cards, gallery_notes = gallery.cards(run, names, _data_uri)
    models = [names.get(m, m) for m in dict.fromkeys(run.configured_models
                                                     + list(run.model_records))]
    facts, stages = run_facts(run)
    js = script()
    return environment().get_template("report.html.j2").render(
        csp=csp(js), script=js, reference=REFERENCE, run_dir=str(run.dir.resolve()),
        data_name=run.data.get("name") or "unnamed data set", models=models,
        cards=cards(findings, names), pictures=figs, picture_notes=picture_notes,
        sections=secs, absent=[(t, HOW[a].format(run=run.dir)) for a, t in SECTIONS
                               if a not in shown],
        shown=shown, gallery=shown_cards, gallery_notes=gallery_notes,
        filters=gallery.filters(shown_cards), n_extreme=gallery.N_EXTREME,
        n_missed=gallery.N_MISSED, facts=facts, stages=stages,
        notes=notes_context(run), version=__version__,
        built=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's HTML report (and ``RUN/findings.json``); returns its path. ``out``:
    default ``RUN_DIR/report.html``; an existing folder gets ``report.html`` inside it."""
    run_dir = Path(run_dir)
    target = Path(out) if out is not None else run_dir / runmod.REPORT
    if target.is_dir():
        target = target / runmod.REPORT
    write_text(target, text := render(run_dir))
    log.info("wrote %s (%.1f MB)", target, len(text.encode("utf-8")) / 1e6)
    return target
