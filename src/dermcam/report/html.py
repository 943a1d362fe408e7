"""``report.html``: one self-contained page that answers on its first screen.

The page opens with one card per model (its findings, :mod:`dermcam.findings`) and one
picture (per-model examples, the planted shortcut); every detail section below is folded
(``<details>``) and shows only the tables of :func:`dermcam.views.run_sections` with the
run's figures. Jinja2 renders ``templates/report.html.j2`` with autoescaping on, so every
string taken from the run is escaped; figures are embedded as ``data:`` URIs and the
Content-Security-Policy allows nothing but them, the inline stylesheet and the one inline
script (by its SHA-256 hash), so the file opens offline and loads nothing from outside.
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
from dermcam.findings import STATUSES, Finding, write_findings
from dermcam.formatting import fmt_num, fmt_seconds, is_number
from dermcam.views import SECTIONS, Table, run_sections

log = logging.getLogger(__name__)

REPORT_NAME = runmod.REPORT
TEMPLATES = Path(__file__).with_name("templates")
#: Largest figure embedded; a larger one is named as not embedded (keeps the page openable).
MAX_FIGURE_BYTES = 8_000_000
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Gallery caps per model and method.
N_EXTREME, N_MISSED = 3, 12

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
                  ("leakage_vs_accuracy.png", "Leakage against correctness per model"),
                  ("leakage_vs_area.png", "Leakage against lesion area: small lesions leak "
                                          "more by chance"),
                  ("size_aware_scores.png", "Size-aware scores per model")],
    "probe": [("probe_auc.png", "ROC AUC intact, lesion removed, background removed"),
              ("probe_delta.png", "Per-image change in P(malignant) under each probe"),
              ("probe_examples.png", "What each probe did to the pixels")],
}
#: Tables folded inside a figure: figure file -> the title its table starts with.
FOLD_INTO = {"localisation_grid.png": "Localisation benchmark"}
SHORTCUT_EXAMPLE = "shortcut_example.png"


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


def _wide(png: bytes) -> bool:
    """More than twice as wide as high (from the PNG header)."""
    w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    return h > 0 and w > 2 * h


def _png(path: Path, caption: str) -> tuple[Figure | None, str]:
    """``(Figure, "")`` of a PNG file, or ``(None, why not)``."""
    if not path.is_file():
        return None, "not found"
    data = path.read_bytes()
    if not data.startswith(_PNG_MAGIC):
        return None, "not a PNG"
    if len(data) > MAX_FIGURE_BYTES:
        return None, f"{len(data) / 1e6:.1f} MB, too large to embed"
    return Figure(_data_uri(data), caption, wide=_wide(data)), ""


def script() -> str:
    return (TEMPLATES / "report.js").read_text(encoding="utf-8").strip()


def csp(text: str) -> str:
    """The page's Content-Security-Policy, allowing exactly the inline script ``text``."""
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'")


def display_names(run: runmod.Run, findings: list[Finding]) -> dict[str, str]:
    """Display names of the run's models, and of ``"model (role)"`` as ``"Name (role)"``."""
    names = dict(run.display_names)
    for f in findings:
        base, _, role = f.model.partition(" (")
        if f.model not in names and role:
            names[f.model] = f"{names.get(base, base)} ({role}"
    return names


def cards(findings: list[Finding], names: dict[str, str]) -> list[Card]:
    """One card per model, in the findings' order."""
    out = []
    for model in dict.fromkeys(f.model for f in findings):
        mine = [f for f in findings if f.model == model]
        lines = [f for f in mine if f.status in ("alarm", "caution")]
        counts = {s: sum(f.status == s for f in mine) for s in STATUSES}
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
        ts = tables.get(anchor) or []
        if not ts:
            continue
        figs, absent, alone = [], [], []
        for pattern, caption in FIGURES.get(anchor, []):
            for m in models if "{m}" in pattern else [None]:
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
    out = []
    for d in sorted(folder.iterdir()) if folder.is_dir() else []:
        for rel, what in (("roc_curves.png", "ROC curves"), ("reliability.png", "Reliability")):
            fig, _ = _png(d / runmod.FIGURES_DIR / rel, f"{what} on {d.name}")
            if fig:
                out.append(fig)
    return out


def pictures(run: runmod.Run) -> tuple[list[Figure], list[str]]:
    """The first screen's picture: the per-model examples and the planted shortcut."""
    from dermcam.report import gallery

    figs, notes = [], []
    draw = getattr(gallery, "examples_png", None)
    if draw is not None and runmod.Outputs(run.dir).attention.exists():
        try:
            png = draw(run.dir)
        except Exception as exc:  # a picture that cannot be drawn costs itself, not the page
            png = None
            log.warning("examples picture: %s", exc)
            notes.append(f"The examples picture could not be drawn ({type(exc).__name__}: "
                         f"{exc}).")
        if png:
            figs.append(Figure(_data_uri(png), "Each model at its chosen CAM layer: a correctly "
                               "called malignant and benign test image and the misclassified "
                               "one whose heatmap leaks most.", wide=True))
    fig, _ = _png(run.dir / runmod.FIGURES_DIR / SHORTCUT_EXAMPLE, "The planted shortcut: "
                  "the control and the shortcut-trained model on one test image, before and "
                  "after a ruler is pasted.")
    figs += [fig] if fig else []
    return figs, notes


# ----------------------------------------------------------------- gallery


def _cls(v: Any) -> str:
    return {0: "benign", 1: "malignant"}.get(int(v), str(v)) if is_number(v) else str(v)


def filters(cards: list[dict]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """The gallery's selects: ``(card data key, label, [(value, text)])``."""
    from dermcam.report.gallery import KINDS

    models = dict((c["model"], c["name"]) for c in cards)
    methods = list(dict.fromkeys(c["method"] for c in cards))
    out = [("model", "Model", list(models.items()))]
    if len(methods) > 1:
        out.append(("method", "Method", [(m, m) for m in methods]))
    return out + [("cls", "Class", [("benign", "benign"), ("malignant", "malignant")]),
                  ("kind", "Shown because", list(KINDS.items()))]


def gallery_cards(run: runmod.Run, names: dict[str, str]) -> tuple[list[dict], list[str]]:
    """Cards of the highest/lowest excess leakage and the missed malignant lesions, per
    model and method, drawn from the saved heatmaps; and notes on what could not be shown."""
    import pandas as pd

    from dermcam.report import gallery as gal
    from dermcam.stages.explain import heatmap_dir

    path = runmod.Outputs(run.dir).attention
    if not path.exists():
        return [], []
    att = pd.read_csv(path, dtype={"image_id": str, "model": str, "method": str, "layer": str},
                      keep_default_na=False, na_values=[""])
    order = list(run.model_records)
    att = att.assign(_o=[order.index(m) if m in order else len(order) for m in att["model"]])
    source, out, notes = None, [], []
    for (_, model, method, layer), g in att.groupby(["_o", "model", "method", "layer"]):
        cases, left = gal.select_cases(g, N_EXTREME, N_MISSED)
        if left:
            notes.append(f"{names.get(model, model)} ({method}): {len(left)} more missed "
                         f"malignant lesions not shown: {', '.join(left)}")
        maps = gal.load_heatmaps(heatmap_dir(run.dir, model, method, layer),
                                 {str(c.row["image_id"]) for c in cases})
        if source is None and cases:
            source = gal.ImageSource(run)
            if source.reason or source.warning:
                notes.insert(0, f"images and masks: {source.reason or source.warning}")
        for c in cases:
            r, iid = c.row, str(c.row["image_id"])
            card = {"model": model, "method": method, "cls": _cls(r.get("label")),
                    "kind": " ".join(c.kinds), "tags": [gal.KINDS.get(k, k) for k in c.kinds],
                    "id": iid, "name": names.get(model, model), "png": None,
                    "pred": _cls(r.get("pred")), "prob": fmt_num(r.get("prob_malignant"), 3),
                    "threshold": fmt_num(run.thresholds.get(model), 3),
                    "excess": fmt_num(r.get("excess_leakage"), 3, sign=True),
                    "area": fmt_num(r.get("lesion_area"), 3),
                    "auroc": fmt_num(r.get("pixel_auroc"), 3), "why": ""}
            if isinstance(r.get("reason"), str) and r["reason"]:
                card["why"] = f"scores undefined: {r['reason'].replace('_', ' ')}"
            if iid not in maps:
                card["why"] = (f"no saved heatmap for {iid} under "
                               f"{heatmap_dir(run.dir, model, method, layer)}")
            else:
                image, mask, why = source.get(iid)
                try:
                    card["png"] = _data_uri(gal.render_strip(maps[iid], image, mask))
                    card["why"] = card["why"] or (f"heatmap only: {why}" if why else "")
                except ValueError as exc:
                    card["why"] = f"strip could not be drawn ({exc})"
            out.append(card)
    return out, notes


# ----------------------------------------------------------------- metadata and notes


def metadata(run: runmod.Run) -> dict[str, Any]:
    """The run's recorded facts (data, seed, versions, settings) and its stages as a Table."""
    data, cfg = run.data, run.recorded_config
    counts = "; ".join(f"{split} {c.get('benign', 0)} benign / {c.get('malignant', 0)} "
                       "malignant" for split, c in (data.get("counts") or {}).items()
                       if isinstance(c, dict))
    size = cfg.get("image_size")
    seed = run.recorded_seed if run.recorded_seed is not None else cfg.get("seed")
    facts = [("Data set", f"{data.get('name', 'not recorded')} ({data.get('layout', '?')} "
                          "layout)"),
             ("Location", data.get("root", "not recorded")),
             ("Fingerprint", data.get("fingerprint", "not recorded")),
             ("Images", counts or "not recorded"),
             ("Lesion masks", {True: "present", False: "absent"}.get(data.get("has_masks"),
                                                                     "not recorded")),
             ("Image size", f"{size} × {size} pixels" if size else "not recorded"),
             ("Seed", "not recorded" if seed is None else seed),
             ("Run", f"{run.status or 'status not recorded'}; created {run.created or '?'}, "
                     f"updated {run.updated or '?'}"),
             ("Software", ", ".join(f"{k} {v}" for k, v in run.versions.items())
              or "not recorded")]
    keys = ("max_epochs", "batch_size", "lr", "weight_decay", "patience", "monitor",
            "imbalance", "val_fraction", "augment", "precision")
    if any(k in cfg for k in keys):
        facts.append(("Training settings", ", ".join(f"{k} = {cfg[k]}" for k in keys
                                                      if k in cfg)))
    facts += [("Data set note", n) for n in (data.get("notes") or [])]
    stages = Table("Stages recorded in manifest.json",
                   ["stage", "status", "wall time", "finished"], numeric_from=2)
    for name, st in run.stages.items():
        if isinstance(st, dict):
            stages.add(name, st.get("status", "?"), fmt_seconds(st.get("wall_time_s")),
                       st.get("at", ""))
    return {"facts": facts, "stages": stages}


def notes_context(run: runmod.Run) -> dict[str, Any]:
    """The run's values the method notes quote (bootstrap size, margin, sanity threshold)."""
    from dermcam.io import read_json
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
            "caveat": CAVEAT}


# ----------------------------------------------------------------- page


def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


def render(run_dir: str | Path) -> str:
    """The report page for ``run_dir`` as a string (writes ``RUN/findings.json``)."""
    from dermcam import __version__

    run = runmod.Run.open(run_dir)
    _, findings = write_findings(run.dir)
    names = display_names(run, findings)
    secs = sections(run, names)
    shown = {s.anchor for s in secs}
    figs, picture_notes = pictures(run)
    gallery, gallery_notes = gallery_cards(run, names)
    models = [names.get(m, m) for m in dict.fromkeys(run.configured_models
                                                     + list(run.model_records))]
    js = script()
    return environment().get_template("report.html.j2").render(
        csp=csp(js), script=js, reference=REFERENCE, run_dir=str(run.dir.resolve()),
        data_name=run.data.get("name") or "unnamed data set", models=models,
        cards=cards(findings, names), pictures=figs, picture_notes=picture_notes,
        sections=secs, absent=[(t, HOW[a].format(run=run.dir)) for a, t in SECTIONS
                               if a not in shown],
        shown=shown, gallery=gallery, gallery_notes=gallery_notes, filters=filters(gallery),
        n_extreme=N_EXTREME, n_missed=N_MISSED, meta=metadata(run),
        notes=notes_context(run), version=__version__,
        built=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's self-contained HTML report (and ``RUN/findings.json``); returns its
    path. ``out`` defaults to ``RUN_DIR/report.html``; an existing folder gets
    ``report.html`` inside it. Raises :class:`DermcamError` when ``run_dir`` is not a
    dermcam run folder; a stage that has not run shows as ``not run`` findings."""
    from dermcam.io import write_text

    run_dir = Path(run_dir)
    target = Path(out) if out is not None else run_dir / REPORT_NAME
    if target.is_dir():
        target = target / REPORT_NAME
    text = render(run_dir)
    write_text(target, text)
    log.info("wrote %s (%.1f MB)", target, len(text.encode("utf-8")) / 1e6)
    return target
