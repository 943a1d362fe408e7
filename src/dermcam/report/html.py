"""``report.html``: one self-contained page built from a run folder's own files.

Sections: summary, model comparison, attention, gallery, method notes. Every
number on the page is read from the run (``manifest.json``, ``metrics.json``,
``attention.csv``, ``attention_summary.json``, ``figures/``, the saved heatmaps);
a file a stage did not write becomes a visible "missing: <reason>" box. Every
string taken from the run is passed through :func:`esc` before it reaches the
page, and figures are embedded as base64 PNG data URIs, so the file opens
offline in any browser.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dermcam import run as runmod
from dermcam.errors import DermcamError
from dermcam.formatting import (
    METRIC_LABELS,
    fmt_num,
    fmt_p,
    fmt_seconds,
    is_number,
    metric_label,
)
from dermcam.formatting import fmt_ci as format_ci
from dermcam.report import template
from dermcam.stages.explain import heatmap_dir

log = logging.getLogger(__name__)

REPORT_NAME = runmod.REPORT

#: Largest figure file embedded; larger ones become a "missing" box (keeps the page openable).
MAX_FIGURE_BYTES = 8_000_000
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: Gallery caps per model and method.
N_EXTREME = 3
N_MISSED = 12

#: Size-aware attention table: metric -> column title.
SIZE_AWARE = {"leakage": "Leakage", "chance_leakage": "Chance leakage",
              "excess_leakage": "Excess leakage", "localisation_gain": "Localisation gain",
              "pixel_auroc": "Pixel AUROC", "pointing_game": "Pointing game"}


def _column(section: str, key: str, short: bool = False) -> tuple[str, str, str]:
    """``(section of metrics.json, metric, column title)``; the title comes from the
    metric-label registry, with ``@0.5`` for the fixed threshold and a note on the
    direction of lower-is-better metrics."""
    title = metric_label(key, short)
    if section == "at_0.5":
        title += " @0.5"
    if not METRIC_LABELS[key].higher_is_better:
        title += " (lower is better)"
    return section, key, title


#: Main comparison table: (section of metrics.json, metric, column title).
MAIN_COLUMNS = tuple(_column(sec, key) for sec, key in (
    ("at_threshold", "accuracy"), ("at_threshold", "balanced_accuracy"),
    ("at_threshold", "f1_benign"), ("at_threshold", "f1_malignant"),
    ("at_threshold", "sensitivity"), ("at_threshold", "specificity"),
    ("threshold_free", "roc_auc"), ("threshold_free", "average_precision")))
SECOND_COLUMNS = (_column("at_0.5", "accuracy"),
                  _column("at_0.5", "balanced_accuracy", short=True),
                  _column("at_0.5", "f1_benign"), _column("at_0.5", "f1_malignant"),
                  _column("at_0.5", "sensitivity"), _column("at_0.5", "specificity"),
                  _column("threshold_free", "spec_at_95_sens"),
                  _column("threshold_free", "ece"))

#: Classification and statistics notes (the attention metrics' notes come from the run).
CLASSIFICATION_NOTES = (
    (metric_label("accuracy"), "Share of test images whose predicted class (malignant if "
     "prob_malignant >= the model's threshold) equals the label. With few malignant lesions, predicting "
     "'benign' for everything already scores high: compare against the all-benign row."),
    (metric_label("balanced_accuracy"), "Mean of sensitivity and specificity; 0.5 is chance "
     "and the all-benign baseline, whatever the class balance."),
    ("Precision, recall, F1 (per class)", "Precision: share of images predicted as the class "
     "that truly are; recall: share of the class found. F1 is their harmonic mean, reported "
     "separately for benign and malignant as in the reference study."),
    ("Sensitivity / specificity", "Sensitivity is recall of malignant lesions (missed "
     "melanomas lower it); specificity is recall of benign lesions."),
    ("Decision threshold", "Each model's threshold maximises Youden's J (sensitivity + "
     "specificity - 1) on its validation split and is applied unchanged to the test set; "
     "the '@0.5' columns use the fixed 0.5 rule of the reference study."),
    (metric_label("roc_auc"), "Probability that a random malignant lesion gets a higher score "
     "than a random benign one; threshold-free, 0.5 = chance."),
    (metric_label("average_precision"), "Area under the precision-recall curve (step-wise "
     "sum, the ISIC 2016 ranking metric); chance equals the malignant prevalence of the test set."),
    (metric_label("spec_at_95_sens"), "Specificity at the highest threshold that still "
     "finds at least 95 % of malignant lesions: the operating point a screening tool needs."),
    (metric_label("ece"), "Expected calibration error: bin the predicted probabilities, take "
     "the gap between mean predicted probability and observed malignant share per bin, weighted by "
     "bin size; 0 = perfectly calibrated."),
)
STATISTICS_NOTES = (
    ("Bootstrap CI", "Every 'value [lo, hi]' is the point estimate with a {pct} % percentile "
     "bootstrap interval from {n_boot} resamples of the test set ({ci_method}). Resampling "
     "in this run: {resampling}."),
    ("Cluster bootstrap", "Where test images share a lesion or patient (HAM10000's "
     "lesion_id, or a 'group' column in the generic layout), every resample draws whole "
     "clusters, within each class (a cluster is malignant if any of its images is), for every "
     "CI and every paired bootstrap test; DeLong and McNemar assume independent images, so "
     "with clusters they are shown but a pair's AUC verdict uses the paired cluster bootstrap. "
     "Without shared clusters images are resampled one by one."),
    ("Paired bootstrap", "AUC, average-precision and accuracy differences (b - a) of two "
     "models on the same resamples, so their correlation is kept; percentile CI and a "
     "two-sided bootstrap p-value."),
    ("DeLong test", "Compares the ROC AUCs of two models scored on the same test images, "
     "accounting for their correlation (DeLong et al., 1988); gives the AUC difference, its "
     "CI and p-value."),
    ("McNemar test", "Compares the accuracies of two models on the same images using only "
     "the images exactly one of them gets right; exact binomial when such images are few, "
     "chi-square with continuity correction otherwise."),
    ("Multiplicity (Holm)", "Each kind of paired test (DeLong AUC, paired bootstrap AUC, "
     "average precision and accuracy, McNemar) is one family over all model pairs and is "
     "Holm-adjusted within it (statsmodels multipletests); raw and adjusted p-values sit side "
     "by side in metrics.json. A pair is 'significant' when its AUC test's Holm-adjusted "
     "p < {alpha}."),
)
ATTENTION_STAT_NOTES = (
    ("Heatmaps", "Class activation maps from pytorch-grad-cam at each model's target layer, "
     "for the class given by 'target', ReLU'd and normalised as recorded in the explain "
     "stage, resized to the image size and compared with the lesion mask pixel by pixel."),
    ("Attention CIs", "Means by class get a 95 % percentile bootstrap CI; scores that are "
     "only 0 or 1 (pointing game with a unique maximum) get a Wilson score interval instead. "
     "Resampling in this run: {att_resampling} (with clusters: whole clusters are "
     "resampled, and the Wilson interval uses the effective sample size n / design effect). "
     "Still per image, treating images of one lesion as independent: {att_per_image}."),
    ("Uniform-attention guard", "For every model x method x layer the maps must beat "
     "uniform attention on the audited images: the 95 % bootstrap CI of the median pixel "
     "AUROC above 0.5 and the 95 % bootstrap CI of the mean excess leakage below 0. Where "
     "either fails, a caution beside the leakage numbers says their leakage and any class "
     "difference in it say nothing about where the model looks."),
    ("Class comparison", "Mann-Whitney U test of a metric between benign and malignant "
     "lesions, with the rank-biserial correlation as effect size (0 = no difference). It is "
     "reported pooled and within heatmaps that explain one class (the CAM target): with "
     "target 'predicted' the pooled comparison mixes lesion type with the class each "
     "heatmap explains; the sentences say which comparison each figure is, and the table "
     "gives n and undefined images per class, the raw and the adjusted p. Mann-Whitney "
     "treats images as independent. A metric that does not vary beyond floating-point "
     "round-off (e.g. excess leakage of uniform heatmaps) is not tested."),
    ("Multiplicity (Benjamini-Hochberg)", "The attention tests form five families, each "
     "adjusted with Benjamini-Hochberg (false discovery rate; statsmodels multipletests): "
     "pooled class comparisons (metric x model x method, each at its layer), class "
     "comparisons within an explained class, the size-adjusted class coefficients, the "
     "equivalence tests, and the artifact-presence comparisons. Raw and adjusted p-values "
     "sit side by side in attention_summary.json and in the tables; the confound verdicts "
     "and the readings of the class comparisons are decided on the adjusted p-values."),
    ("Lesion-area confound", "Leakage falls as the lesion covers more of the image. For "
     "leakage, excess leakage and pixel AUROC: ordinary least squares of the metric on "
     "class, then on class + a natural cubic regression spline in lesion area (knots at "
     "area quantiles; linear in area below 30 images), with HC3 heteroscedasticity-robust "
     "standard errors and t tests; the share of the class gap explained by area gets a "
     "bootstrap CI, and the Spearman rank correlation (Pearson too, in "
     "attention_summary.json) of the metric with lesion area is given beside it. An "
     "equivalence test (TOST) of the adjusted class gap against +-{margin} (in the "
     "metric's units) decides 'explained by size'; an adjusted class gap that differs from "
     "0 in the direction of the gap means 'remains'; anything else is 'inconclusive'. Both "
     "tests are read on their Benjamini-Hochberg-adjusted p-values; the verdict the raw "
     "p-values would give is shown beside it. With --target predicted the models pool the explained classes. A metric "
     "that is constant, or an exact function of area, up to round-off gets no p-value. "
     "These models treat images as independent."),
    ("Sanity check", "Model randomisation (Adebayo et al., 2018): |Spearman rank "
     "correlation| between each image's heatmap from the trained model and from the same "
     "architecture with random weights (an inverted map counts as similar). The method "
     "passes when the 95 % bootstrap CI of the median |rho| lies below the threshold "
     "({sanity_threshold}) with at least 6 valid images, fails when the median itself is at "
     "or above it, and is inconclusive otherwise."),
    ("Artifact presence", "Where images carry artifact labels: each score's mean on images "
     "with versus without the artifact, with 95 % bootstrap CIs (whole clusters where "
     "images share one), n and undefined counts, and a two-sided Mann-Whitney test, "
     "Benjamini-Hochberg-adjusted in its own family."),
    ("Undefined scores", "An image whose heatmap is all zero (a constant map is zero after "
     "min-max normalisation), not finite or negative, or whose mask is empty or covers the "
     "whole image, has no defined leakage; it is counted per class beside every mean "
     "(n_nan) and left out of means and tests. A sensitivity analysis scores undefined "
     "heatmaps at chance (leakage = 1 - lesion area, excess leakage 0, pixel AUROC 0.5) "
     "and repeats the class comparison."),
)

REASON_TEXT = {"zero_heatmap": "heatmap is zero everywhere",
               "nonfinite_heatmap": "heatmap has non-finite values",
               "negative_heatmap": "heatmap has negative values",
               "empty_mask": "lesion mask is empty",
               "full_mask": "lesion mask covers the whole image"}


# ----------------------------------------------------------------- formatting


def esc(value: Any) -> str:
    """HTML-escape any value from the run (``None`` -> empty string)."""
    return html.escape("" if value is None else str(value), quote=True)


_finite = is_number  # kept under this name for the report's other modules

#: How the report lays out a CI: the interval on its own line under the value.
HTML_CI = '{v} <span class="ci">[{lo}, {hi}]</span>'


def fmt_ci(d: Any, digits: int = 3, value_key: str = "value", lo_key: str = "lo",
           hi_key: str = "hi") -> str:
    """``{"value", "lo", "hi"}`` -> ``'0.817 <span class="ci">[0.750, 0.883]</span>'`` (HTML;
    ``n/a`` where undefined). The CI shows on its own line under the value."""
    if not isinstance(d, dict):
        return "n/a"
    return format_ci(d.get(value_key), d.get(lo_key), d.get(hi_key), digits, template=HTML_CI)


def missing(reason: str) -> str:
    """The visible box for a missing piece; ``reason`` is plain text (escaped here)."""
    return f'<div class="missing" role="note"><b>missing:</b> {esc(reason)}</div>'


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1,
           numeric_to: int | None = None, row_classes: Sequence[str] | None = None) -> str:
    """``head`` and ``rows`` hold escaped HTML cells; columns ``numeric_from`` up to (not
    including) ``numeric_to`` are right-aligned numbers."""
    out = ['<div class="scroll"><table><thead><tr>']
    out += [f"<th>{h}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for k, r in enumerate(rows):
        cls = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        cells = [f'<td class="num">{c}</td>'
                 if j >= numeric_from and (numeric_to is None or j < numeric_to)
                 else f"<td>{c}</td>" for j, c in enumerate(r)]
        out.append(f"<tr{cls}>{''.join(cells)}</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _kv(rows: Iterable[tuple[str, str]]) -> str:
    """Key/value table; keys are literal text, values escaped HTML."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def data_uri_png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# ----------------------------------------------------------------- run files


class RunFiles:
    """A run folder's files, each loaded or with the reason it is not there; the manifest
    is read through :class:`dermcam.run.Run` (``self.run``)."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.run = runmod.Run.open(self.dir)
        self.metrics, self.metrics_reason = self._json(runmod.METRICS, "evaluate")
        self.summary, self.summary_reason = self._json(runmod.ATTENTION_SUMMARY, "explain")
        self.att, self.att_reason = self._attention_csv()
        names = self.run.configured_models
        for extra in list(self.run.display_names) + list((self.metrics or {}).get("models", {})):
            if extra not in names:
                names.append(extra)
        self.names = names

    @property
    def stages(self) -> dict[str, Any]:
        """The run's stage entries (``{}`` where the manifest records none)."""
        return self.run.stages

    def display(self, name: str) -> str:
        d = self.run.model_record(name).get("display_name")
        if not d and self.metrics:
            d = self.metrics.get("display_names", {}).get(name) or \
                self.metrics.get("models", {}).get(name, {}).get("display_name")
        return str(d or name)

    def stage_status(self, stage: str) -> str | None:
        return self.run.stage_entry(stage).get("status")

    def absent_reason(self, file: str, stage: str) -> str:
        how = f"run 'dermcam {stage} {self.dir}'"
        if stage == "explain" and self.run.data.get("has_masks") is False:
            return (f"{file} not found: the data set has no lesion masks, so attention "
                    "leakage cannot be computed")
        status = self.stage_status(stage)
        if status is None:
            return f"{file} not found: the {stage} stage has not run ({how})"
        if status != "complete":
            return f"{file} not found: the {stage} stage is '{status}' ({how})"
        return f"{file} not found although the {stage} stage is recorded as complete ({how})"

    def stale_note(self, stage: str) -> str:
        """A warning when a stage's files exist but the stage is not recorded complete."""
        status = self.stage_status(stage)
        if status == "complete":
            return ""
        what = "has no record in manifest.json" if status is None else f"is recorded as '{status}'"
        return (f'<p class="missing"><b>note:</b> the {esc(stage)} stage {esc(what)}; the '
                "files shown may come from an earlier or unfinished run.</p>")

    def _json(self, file: str, stage: str) -> tuple[dict | None, str]:
        from dermcam.io import read_json

        path = self.dir / file
        if not path.exists():
            return None, self.absent_reason(file, stage)
        try:
            obj = read_json(path)
        except DermcamError as exc:
            return None, f"{file} could not be read ({exc})"
        if not isinstance(obj, dict):
            return None, f"{file} does not hold a JSON object"
        return obj, ""

    def _attention_csv(self):
        import pandas as pd

        path = self.dir / runmod.ATTENTION
        if not path.exists():
            return None, self.absent_reason(runmod.ATTENTION, "explain")
        try:
            df = pd.read_csv(path, dtype={"image_id": str, "model": str, "method": str,
                                          "reason": str},
                             keep_default_na=False, na_values=[""])
        except Exception as exc:
            return None, f"attention.csv could not be read ({type(exc).__name__}: {exc})"
        need = {"image_id", "model", "method", "label", "pred", "prob_malignant",
                "excess_leakage", "reason"}
        if not need <= set(df.columns):
            return None, f"attention.csv lacks columns {sorted(need - set(df.columns))}"
        df["reason"] = df["reason"].fillna("")
        return df, ""

    def figure(self, rel: str, caption: str, alt: str | None = None) -> str:
        """A ``<figure>`` with ``figures/<rel>`` embedded, or a missing box."""
        path = self.dir / runmod.FIGURES_DIR / rel
        shown = f"figures/{rel}"
        if not path.is_file():
            return missing(f"{shown} not found")
        try:
            data = path.read_bytes()
        except OSError as exc:
            return missing(f"{shown} could not be read ({exc.strerror})")
        if not data.startswith(_PNG_MAGIC):
            return missing(f"{shown} is not a PNG image")
        if len(data) > MAX_FIGURE_BYTES:
            return missing(f"{shown} is {len(data) / 1e6:.1f} MB, too large to embed")
        return (f'<figure><img src="{data_uri_png(data)}" alt="{esc(alt or caption)}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>")


# ----------------------------------------------------------------- sections


def _weights_phrase(src: Any) -> str:
    s = str(src or "")
    if s.startswith("imagenet"):
        return "ImageNet transfer learning" + (f" ({s.split(':', 1)[1]})" if ":" in s else "")
    if s.startswith("none"):
        return "trained from scratch (random initialisation)"
    if s.startswith("file:"):
        return f"initialised from the weights file {s[5:]}"
    return s or "not recorded"


def section_summary(r: RunFiles) -> str:
    data = r.run.data
    cfg = r.run.recorded_config
    out = ['<section id="summary"><h2>1. Summary</h2>']
    has_masks = data.get("has_masks")
    size = cfg.get("image_size")
    rows = [("Data set", esc(data.get("name", "not recorded"))),
            ("Layout", esc(data.get("layout", "not recorded"))),
            ("Location", f'<span class="mono">{esc(data.get("root", "not recorded"))}</span>'),
            ("Fingerprint", f'<span class="mono">{esc(data.get("fingerprint", ""))}</span>'),
            ("Lesion masks", "present" if has_masks else
             ("absent (no attention leakage possible)" if has_masks is False else "not recorded")),
            ("Image size", f"{esc(size)} × {esc(size)} pixels (images resized to a square)"
             if size else "not recorded"),
            ("Seed", esc(r.run.recorded_seed if r.run.recorded_seed is not None
                         else cfg.get("seed", "not recorded"))),
            ("Run status", esc(r.run.status or "not recorded")),
            ("Created", esc(r.run.created or "")),
            ("Last updated", esc(r.run.updated or ""))]
    out.append(_kv(rows))
    notes = data.get("notes") or []
    if notes:
        items = "".join(f"<li>{esc(n)}</li>" for n in (notes if isinstance(notes, list) else [notes]))
        out.append(f"<h4>Data set notes</h4><ul>{items}</ul>")

    counts = data.get("counts") or {}
    if counts:
        crow = []
        for split, c in counts.items():
            c = c if isinstance(c, dict) else {}
            b, mal = c.get("benign", 0) or 0, c.get("malignant", 0) or 0
            tot = b + mal
            share = f"{mal / tot:.1%}" if tot else "n/a"
            crow.append([esc(split), esc(b), esc(mal), esc(tot), share])
        out.append("<h3>Images per split and class</h3>")
        out.append(_table(["Split", "Benign", "Malignant", "Total", "Malignant share"], crow))
        tr = r.run.stage_entry("train")
        if "n_train" in tr and "n_val" in tr:
            seed = r.run.recorded_seed
            out.append(f'<p class="note">The training split was divided (stratified, seed '
                       f'{esc(seed)}) into {esc(tr["n_train"])} images for fitting and '
                       f'{esc(tr["n_val"])} for validation (early stopping and the decision '
                       "threshold); the test split was used only for evaluation.</p>")
    else:
        out.append(missing("image counts per split are not recorded in manifest.json"))

    models = r.run.model_records
    out.append("<h3>Models</h3>")
    if not models:
        out.append(missing("no trained models are recorded in manifest.json"))
    else:
        phrases = {_weights_phrase(v.get("weights_source")) for v in models.values()}
        srcs = [str(v.get("weights_source", "")) for v in models.values()]
        if all(s.startswith("none") for s in srcs):
            out.append(f"<p><b>Weights:</b> all {len(models)} models were trained from scratch "
                       "(random initialisation); no ImageNet transfer learning was used.</p>")
        elif all(s.startswith("imagenet") for s in srcs):
            out.append("<p><b>Weights:</b> all models were fine-tuned from ImageNet weights "
                       "(transfer learning).</p>")
        else:
            out.append(f"<p><b>Weights:</b> models differ ({esc('; '.join(sorted(phrases)))}); "
                       "see the table.</p>")
        rows = []
        for name in r.names:
            v = models.get(name)
            if v is None:
                rows.append([esc(r.display(name)), "not trained", "", "", "", "", "", ""])
                continue
            rows.append([f"{esc(r.display(name))} <span class=\"note mono\">{esc(name)}</span>",
                         esc(_weights_phrase(v.get("weights_source"))),
                         f'<span class="mono">{esc(v.get("target_layer", ""))}</span>',
                         f'{esc(v.get("epochs_run", "?"))} (best {esc(v.get("best_epoch", "?"))})',
                         f'{esc(v.get("monitor", ""))} {fmt_num(v.get("best_score"))}',
                         fmt_num(v.get("threshold")),
                         fmt_seconds(v.get("wall_time_s")),
                         esc(v.get("status", ""))])
        out.append(_table(["Model", "Weights", "CAM layer", "Epochs run", "Best validation",
                           "Threshold", "Training time", "Status"], rows, numeric_from=3,
                          numeric_to=7))

    keys = ("max_epochs", "batch_size", "lr", "weight_decay", "patience", "monitor",
            "imbalance", "val_fraction", "augment", "precision", "accelerator")
    settings = [f"{esc(k)} = {esc(cfg[k])}" for k in keys if k in cfg]
    if settings:
        out.append(f'<p class="note">Training settings: {", ".join(settings)}.</p>')

    out.append("<h3>Stages</h3>")
    srows = []
    for stage in ("train", "evaluate", "explain", "probe"):
        st = r.run.stages.get(stage)
        if not isinstance(st, dict):
            srows.append([stage, '<span class="undetermined">not run</span>', "", "", ""])
            continue
        detail = []
        for k in ("n_train", "n_val", "n_test", "n_boot", "n_images", "target", "normalize"):
            if k in st and st[k] is not None:
                detail.append(f"{esc(k)} {esc(st[k])}")
        if st.get("methods"):
            detail.append("methods " + esc(", ".join(map(str, st["methods"]))))
        status = st.get("status", "?")
        cls = "pass" if status == "complete" else "fail"
        srows.append([stage, f'<span class="{cls}">{esc(status)}</span>',
                      fmt_seconds(st.get("wall_time_s")), esc(st.get("at", "")),
                      "; ".join(detail)])
    out.append(_table(["Stage", "Status", "Wall time", "Finished", "Details"], srows,
                      numeric_from=2, numeric_to=3))
    ver = r.run.versions
    others = ", ".join(f"{esc(k)} {esc(v)}" for k, v in ver.items() if k not in ("dermcam", "torch"))
    out.append(f"<p><b>Software:</b> dermcam {esc(ver.get('dermcam', 'not recorded'))}, "
               f"torch {esc(ver.get('torch', 'not recorded'))}"
               + (f' <span class="note">({others})</span>' if others else "") + "</p>")
    out.append("</section>")
    return "\n".join(out)


def _metric_cells(block: dict, columns) -> list[str]:
    return [fmt_ci((block.get(sec) or {}).get(met)) for sec, met, _ in columns]


def _calibration_table(r: RunFiles, calib: dict, order: list[str]) -> str:
    """ECE and Brier before and after calibration (``metrics.json['calibration']``)."""
    names = [n for n in order if n in calib]
    if not names:
        return ""
    cells = [(k, when) for k in ("ece", "brier") for when in ("before", "after", "change")]
    rows = []
    for n in names:
        c = calib[n]
        rows.append([esc(r.display(n)), fmt_num(c.get("temperature")),
                     fmt_num(c.get("bias", 0.0))]
                    + [fmt_ci((c.get(when) or {}).get(k)) for k, when in cells])
    head = ["Model", "T", "b"] + [f"{metric_label(k, short=True)} {when}" for k, when in cells]
    return ("<p>Calibration (<code>--calibration</code>): the malignant probability is "
            "sigmoid((<i>z</i><sub>1</sub> − <i>z</i><sub>0</sub>) / <i>T</i> + <i>b</i>), "
            "<i>T</i> and <i>b</i> fitted on the validation split by minimising the negative "
            "log-likelihood (Platt scaling; temperature scaling fixes <i>b</i> = 0); the "
            "threshold is chosen afterwards, on the calibrated probabilities. <i>T</i> &gt; 1 "
            "softens over-confident probabilities, <i>b</i> undoes the shift a weighted loss "
            "puts on them. Ranking (ROC AUC) is unchanged; change = after − before on the "
            "same resamples.</p>"
            + _table(head, rows, numeric_from=1))


def section_comparison(r: RunFiles) -> str:
    out = ['<section id="comparison"><h2>2. Model comparison</h2>']
    res = r.metrics
    if res is None:
        out.append(missing(r.metrics_reason))
        out.append("</section>")
        return "\n".join(out)
    out.append(r.stale_note("evaluate"))
    test = res.get("test", {}) or {}
    alpha = res.get("alpha", 0.05)
    pct = f"{100 * (1 - alpha):g}" if _finite(alpha) else "95"
    out.append(f"<p>Test set: {esc(test.get('n', '?'))} images, "
               f"{esc(test.get('n_malignant', '?'))} malignant and "
               f"{esc(test.get('n_benign', '?'))} benign (malignant prevalence "
               f"{fmt_num(test.get('prevalence'))}). Values are "
               f"<b>point estimate [{esc(pct)} % CI]</b>; threshold-dependent columns use each "
               "model's validation threshold.</p>")
    models = res.get("models", {}) or {}
    order = [n for n in r.names if n in models] + [n for n in models if n not in r.names]
    rows, classes = [], []
    for name in order:
        b = models[name]
        rows.append([esc(r.display(name)), fmt_num(b.get("threshold"))]
                    + _metric_cells(b, MAIN_COLUMNS))
        classes.append("")
    base = (res.get("baselines", {}) or {}).get("all_benign")
    if isinstance(base, dict):
        rows.append(["All benign (baseline)", "—"]
                    + [fmt_ci(base.get(met)) for _, met, _ in MAIN_COLUMNS])
        classes.append("baseline")
    head = ["Model", "Threshold"] + [t for _, _, t in MAIN_COLUMNS]
    out.append(_table(head, rows, numeric_from=1, row_classes=classes))
    bl = res.get("baselines", {}) or {}
    out.append(f"<p><b>Chance level:</b> ROC AUC {fmt_num(bl.get('chance_roc_auc'))}, "
               f"average precision {fmt_num(bl.get('chance_average_precision'))} (the malignant "
               "prevalence of the test set). The all-benign row is the classifier that never "
               "predicts malignant.</p>")
    out.append('<p class="note">CIs: '
               f"{esc(res.get('ci_method', 'bootstrap'))}, {esc(res.get('n_boot', '?'))} "
               f"resamples, seed {esc(res.get('seed', '?'))}. Decision rule: "
               f"{esc(res.get('threshold_rule', 'malignant if prob_malignant >= threshold'))}."
               "</p>")
    out.append("<h3>At the fixed 0.5 threshold, and calibration</h3>")
    rows2 = [[esc(r.display(n))] + _metric_cells(models[n], SECOND_COLUMNS) for n in order]
    out.append(_table(["Model"] + [t for _, _, t in SECOND_COLUMNS], rows2))
    out.append(_calibration_table(r, res.get("calibration") or {}, order))

    out.append("<h3>Paired comparisons</h3>")
    pairs = res.get("pairwise") or []
    if not pairs:
        n_models = len(models)
        out.append(missing("no paired comparisons in metrics.json") if n_models > 1 else
                   f"<p>Only {n_models} model was evaluated, so there is no pair to compare.</p>")
    else:
        items = []
        for p in pairs:
            sent = p.get("sentence") or ""
            cls = ' class="sig"' if p.get("significant") else ""
            acc = p.get("accuracy") or {}
            mc = acc.get("mcnemar") or {}
            extra = ""
            if _finite(acc.get("diff")):
                extra = ('<br><span class="note">Accuracy difference '
                         f"({esc(r.display(p.get('b')))} − "
                         f"{esc(r.display(p.get('a')))}) {fmt_num(acc['diff'], sign=True)} "
                         f"[{fmt_num(acc.get('lo'))}, {fmt_num(acc.get('hi'))}], McNemar p = "
                         f"{fmt_p(mc.get('p'))} ({esc(mc.get('method', ''))}).</span>")
            items.append(f"<li><span{cls}>{esc(sent)}.</span>{extra}</li>")
        out.append(f'<ul class="sentences">{"".join(items)}</ul>')
        out.append('<p class="note">AUC differences: DeLong test; p-values Holm-adjusted '
                   f"across all {len(pairs)} pairs; differences are "
                   f"{esc(res.get('pairwise_diff', 'b - a'))}.</p>")

    out.append("<h3>Figures</h3>")
    out.append('<div class="figs">'
               + r.figure("model_comparison.png", "Metrics per model with 95 % CIs")
               + r.figure("roc_curves.png", "ROC curves on the test set")
               + r.figure("pr_curves.png", "Precision-recall curves on the test set")
               + r.figure("reliability.png", "Reliability diagram (calibration)")
               + "</div>")
    out.append("<h3>Confusion matrices</h3><div class=\"figs\">")
    for name in order:
        cm = models[name].get("confusion_matrix")
        cap = f"{r.display(name)} at threshold {fmt_num(models[name].get('threshold'))}"
        try:
            (tn, fp), (fn, tp) = cm
            cap += f": TN {tn}, FP {fp}, FN {fn}, TP {tp}"
        except (TypeError, ValueError):
            pass
        out.append(r.figure(f"{name}_confusion_matrix.png", cap))
    out.append("</div><h3>Training history</h3><div class=\"figs\">")
    for name in order:
        out.append(r.figure(f"{name}_history.png",
                            f"{r.display(name)}: loss and validation metrics per epoch"))
    out.append("</div></section>")
    return "\n".join(out)


def _rows_by(records: Any, keys: Sequence[str]) -> dict[tuple, dict[str, dict]]:
    """``[{model, method, label, metric, ...}]`` -> ``{(model, method, label): {metric: rec}}``."""
    out: dict[tuple, dict[str, dict]] = {}
    for rec in records or []:
        if isinstance(rec, dict):
            out.setdefault(tuple(rec.get(k) for k in keys), {})[rec.get("metric")] = rec
    return out


def _label_name(v: Any) -> str:
    try:
        return {0: "benign", 1: "malignant"}[int(v)]
    except (TypeError, ValueError, KeyError):
        return str(v)


def _sanity_html(s: Any) -> str:
    if not isinstance(s, dict):
        return '<span class="undetermined">not run</span>'
    full = s.get("full", s) if isinstance(s.get("full"), dict) else s
    passed = full.get("passed")
    tag = ('<span class="pass">passed</span>' if passed is True else
           '<span class="fail">FAILED</span>' if passed is False else
           '<span class="undetermined">inconclusive</span>')
    text = f"{tag} — {esc(full.get('summary', ''))}"
    steps = s.get("cascade") or []
    if steps:
        cells = "; ".join(f"{esc(c.get('block'))} {fmt_num(c.get('median_abs_rho'), 2)}"
                          for c in steps)
        text += (f'<br><span class="note">Cascading randomisation from the output down '
                 f"(median |rank correlation| with the trained maps after each block is "
                 f"re-initialised): {cells}</span>")
    return text


def _localisation_html(s: dict[str, Any], r: RunFiles) -> str:
    """The localisation benchmark table, the layer each model x method uses, and why."""
    out = ["<h3>Which layer, and do the maps localise?</h3>"]
    rows = s.get("localisation") or []
    if rows:
        first = rows[0]
        out.append(f'<p class="note">Every method × candidate layer scored on {esc(first["n"])} '
                   f"masked {esc(first['images'])} images: median pixel AUROC (0.5 = uniform "
                   "attention) with a 95 % bootstrap CI, share of undefined maps, and the "
                   "model-randomisation check against freshly initialised copies.</p>")
        body = []
        for row in rows:
            verdict = {True: "passed", False: "FAILED"}.get(row.get("sanity_passed"),
                                                            "inconclusive")
            body.append([esc(r.display(row["model"])), esc(row["method"]), esc(row["layer"]),
                         esc("×".join(map(str, row.get("grid") or []))),
                         format_ci(row.get("median_pixel_auroc"), row.get("ci_low"),
                                   row.get("ci_high"), 2, collapse=False),
                         f"{100 * row.get('undefined_share', float('nan')):.0f} %",
                         f"{fmt_num(row.get('sanity_median_abs_rho'), 2)} {verdict}",
                         fmt_num(row.get("ms_per_image"), 1)])
        out.append(_table(["Model", "Method", "Layer", "Grid", "Pixel AUROC [95 % CI]",
                           "Undefined", "Sanity |ρ|", "ms / image"], body, numeric_from=4))
    choice = s.get("layer_choice") or []
    if choice:
        items = "".join(f"<li><b>{esc(r.display(c['model']))}</b> ({esc(c['method'])}): "
                        f"{esc(c['reason'])}</li>" for c in choice)
        out.append(f'<p>Layers used:</p><ul class="sentences">{items}</ul>')
    guards = [(k, (t or {}).get("uniform_guard")) for k, t in (s.get("tests") or {}).items()]
    items = "".join(f"<li><b>{esc(k)}</b>: {esc(g['sentence'])}</li>" for k, g in guards
                    if isinstance(g, dict) and g.get("sentence"))
    if items:
        out.append(f'<ul class="sentences">{items}</ul>')
    return "\n".join(out)


def _artifact_ratio_html(s: dict[str, Any], r: RunFiles) -> str:
    rows = [a for a in s.get("artifacts") or [] if a.get("n", 0) >= 2]
    if not rows:
        return ""
    body = [[esc(r.display(a["model"])), esc(a["method"]), esc(a["layer"]), esc(a["artifact"]),
             esc(a["n"]), fmt_num(a["mass_share"]), fmt_num(a["area_share"]),
             format_ci(a["ratio"], a["ratio_ci_low"], a["ratio_ci_high"], 2, collapse=False),
             '<span class="fail">yes</span>' if a.get("attends") else "no"] for a in rows]
    return ('<p class="note">Heatmap mass on each artifact relative to its area, on the test '
            "images that carry it (1 = uniform attention; a CI above 1 flags the model as "
            "attending to the artifact).</p>"
            + _table(["Model", "Method", "Layer", "Artifact", "Images", "Mass share",
                      "Area share", "Ratio [95 % CI]", "Attends"], body, numeric_from=4))


def section_shortcut(r: RunFiles) -> str:
    """The demo's planted-shortcut experiment, when the run folder carries one."""
    from dermcam.io import read_json

    path = r.dir / runmod.SHORTCUT_EXPERIMENT
    if not path.exists():
        return ""
    try:
        exp = read_json(path)
        runs = exp["runs"]
    except Exception as exc:  # a damaged file costs its section, not the report
        return (f'<section id="shortcut"><h2>Planted shortcut</h2>'
                f"{missing(f'shortcut_experiment.json unreadable ({exc})')}</section>")
    body = []
    for role in ("control", "shortcut"):
        x = runs[role]
        where = f"{exp['method']} at {x['layer']}" if exp.get("method") else x["layer"]
        body.append([f"{esc(exp['model'])} ({role})", esc(where), esc(x["n"]),
                     format_ci(x["ratio"], x["ratio_ci_low"], x["ratio_ci_high"], 2,
                               collapse=False),
                     '<span class="fail">yes</span>' if x["flagged"] else "no",
                     format_ci(x["test_auc"], x["test_auc_ci_low"], x["test_auc_ci_high"],
                               collapse=False)])
    if exp.get("caught"):
        verdict = ('<p><span class="pass">The audit catches the planted shortcut</span>: the '
                   "shortcut model is flagged and its control is not.</p>")
    elif exp.get("caught_vs_control"):
        verdict = ('<p><span class="pass">The audit catches the planted shortcut against its '
                   "control</span>: on the same images the shortcut model puts more heatmap "
                   "mass on the artifact than the control (paired CI above 1). Against "
                   "uniform attention alone the control is flagged too: a model trained without "
                   "the shortcut can still put more than the artifact's share of its heatmap "
                   "on it (its features respond to the artifact, however little it relies on "
                   "it), so the control, not uniform attention, is the reference that counts "
                   "here.</p>")
    else:
        verdict = ('<p><span class="fail">The audit does not separate the shortcut model '
                   "from its control here.</span></p>")
    return ('<section id="shortcut"><h2>Planted shortcut</h2>'
            f"<p>{esc(exp.get('description', ''))}</p>" + verdict
            + _table(["Model", "CAM method at layer", "Images with the artifact",
                      f"Mass on {esc(exp['artifact'])} / its area [95 % CI]", "Flagged",
                      "Test ROC AUC [95 % CI]"], body, numeric_from=2)
            + f'<p class="note">{esc(exp.get("sentence", ""))}</p>'
            + (f'<p class="note">{esc(exp["probe_sentence"])}</p>'
               if exp.get("probe_sentence") else "") + "</section>")


def _reading(c: dict[str, Any]) -> str:
    """How a class comparison reads, on its adjusted p where it has one."""
    p = c.get("p_adjusted") if _finite(c.get("p_adjusted")) else c.get("p_value")
    if not _finite(p):
        return "no test"
    return "differ" if p < 0.05 else "inconclusive"


def _class_comparison_rows(tests: dict[str, Any]) -> list[list[str]]:
    """One row per model/method x metric x comparison (pooled, within each explained class)."""
    rows = []
    for key in sorted(tests):
        t = tests[key] or {}
        for met in ("leakage", "excess_leakage", "pixel_auroc"):
            res = (t.get("class_comparison") or {}).get(met)
            if isinstance(res, dict):
                fixed = res.get("fixed_target")
                pairs = [(f"all, each explaining {fixed}" if fixed else "pooled over the "
                          "explained class", res.get("pooled"))]
                if not fixed:
                    pairs += [(f"within heatmaps explaining {name}", c)
                              for name, c in (res.get("by_target") or {}).items()]
            else:
                pairs = [("pooled", t.get(f"classes_{met}"))]
            for what, c in pairs:
                if not isinstance(c, dict):
                    continue
                if "error" in c or c.get("reason"):
                    rows.append([esc(key), esc(met), esc(what)] + [""] * 7
                                + [esc(c.get("error") or c.get("reason"))])
                    continue
                rows.append([esc(key), esc(met), esc(what), fmt_num(c.get("median_benign")),
                             fmt_num(c.get("median_malignant")),
                             f"{esc(c.get('n_benign'))} ({esc(c.get('n_nan_benign'))})",
                             f"{esc(c.get('n_malignant'))} ({esc(c.get('n_nan_malignant'))})",
                             fmt_p(c.get("p_value")), fmt_p(c.get("p_adjusted")),
                             fmt_num(c.get("rank_biserial"), 2), esc(_reading(c))])
    return rows


def _confound_row(key: str, met: str, sc: dict[str, Any]) -> list[str]:
    eq = sc.get("equivalence") or {}

    def gap(v, ci):
        ci = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
        return fmt_ci({"value": v, "lo": ci[0], "hi": ci[1]})

    return [esc(key), esc(met), gap(sc.get("class_coef_unadjusted"),
                                    sc.get("class_ci_unadjusted")),
            gap(sc.get("class_coef_adjusted"), sc.get("class_ci_adjusted")),
            fmt_p(sc.get("class_p_adjusted")), fmt_p(sc.get("p_adjusted")),
            fmt_p(eq.get("p")), fmt_p(eq.get("p_adjusted")), esc(sc.get("verdict")),
            esc(sc.get("verdict_unadjusted", sc.get("verdict")))]


def _presence_rows(tests: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key in sorted(tests):
        recs = (tests[key] or {}).get("artifact_presence")
        for a in recs if isinstance(recs, list) else []:
            cells = []
            for side in ("with", "without"):
                ci = a.get(f"ci_{side}") or [None, None]
                cells.append(fmt_ci({"value": a.get(f"mean_{side}"), "lo": ci[0],
                                     "hi": ci[1]})
                             + f" (n {esc(a.get(f'n_{side}'))}, "
                               f"{esc(a.get(f'n_nan_{side}', '?'))} undefined)")
            rows.append([esc(key), esc(a.get("artifact")), esc(a.get("metric")), *cells,
                         fmt_num(a.get("diff")), fmt_p(a.get("p")),
                         fmt_p(a.get("p_adjusted"))])
    return rows


def _attention_intro(r: RunFiles) -> list[str]:
    """The stale-stage note, what the explain stage computed, and a missing summary."""
    out = [r.stale_note("explain")]
    ex = r.run.stage_entry("explain")
    if ex:
        out.append(f"<p>Heatmaps: {esc(', '.join(map(str, ex.get('methods') or [])))} for the "
                   f"<b>{esc(ex.get('target', '?'))}</b> class, normalised "
                   f"<b>{esc(ex.get('normalize', '?'))}</b>, on "
                   f"{esc(ex.get('n_images', '?'))} test images with a lesion mask.</p>")
    if r.summary is None:
        out.append(missing(r.summary_reason))
    return out


def _attention_order(r: RunFiles) -> list[str]:
    """The audited models, the run's order first."""
    att = r.att
    models = ((r.summary or {}).get("models")
              or (sorted(att["model"].unique()) if att is not None else []))
    return [n for n in r.names if n in models] + [n for n in models if n not in r.names]


def _leakage_figures(r: RunFiles, order: list[str]) -> list[str]:
    """The reference study's 2x2 figure per model, then the leakage and size figures."""
    out = ["<h3>Leakage per model</h3>",
           '<p class="note">The reference study\'s 2×2 figure per model: leakage, inside '
           "and outside scores by class and correctness.</p>",
           '<div class="figs one">']
    for name in order:
        out.append(r.figure(f"attention_leakage_analysis_{name}.png",
                            f"{r.display(name)}: attention leakage analysis"))
    out.append("</div>")
    out.append('<div class="figs">'
               + r.figure("leakage_vs_accuracy.png", "Leakage against correctness per model")
               + r.figure("leakage_vs_area.png",
                          "Leakage against lesion area: small lesions leak more by chance")
               + "</div>" + '<div class="figs one">'
               + r.figure("size_aware_scores.png", "Size-aware scores per model") + "</div>")
    return out


def _size_aware_head(defs: dict[str, Any]) -> list[str]:
    """Column titles of the size-aware table, each with its direction and chance level."""
    head = ["Model", "Method", "Class", "n (undefined)"]
    for met, title in SIZE_AWARE.items():
        d = defs.get(met, {}) or {}
        hint = []
        if d.get("higher_is_better") is True:
            hint.append("↑")
        elif d.get("higher_is_better") is False:
            hint.append("↓")
        if _finite(d.get("chance")):
            hint.append(f"chance {d['chance']:g}")
        head.append(esc(title) + (f'<br><span class="note">{esc(" ".join(hint))}'
                                  "</span>" if hint else ""))
    return head


def _size_aware_html(s: dict[str, Any], r: RunFiles, order: list[str]) -> list[str]:
    """Mean [CI] of every size-aware score per model x method x class."""
    out = ["<h3>Size-aware scores by class</h3>"]
    by = _rows_by(s.get("by_class"), ("model", "method", "label"))
    if not by:
        out.append(missing("attention_summary.json has no by_class records"))
        return out
    head = _size_aware_head(s.get("metric_definitions", {}) or {})
    rows = []
    keys = sorted(by, key=lambda k: (order.index(k[0]) if k[0] in order else 99,
                                     str(k[1]), str(k[2])))
    for key in keys:
        recs = by[key]
        any_rec = next(iter(recs.values()))
        rows.append([esc(r.display(key[0])), esc(key[1]), esc(_label_name(key[2])),
                     f"{esc(any_rec.get('n'))} ({esc(any_rec.get('n_nan'))})"]
                    + [fmt_ci(recs.get(met), value_key="mean", lo_key="ci_low",
                              hi_key="ci_high") for met in SIZE_AWARE])
    out.append(_table(head, rows, numeric_from=3))
    out.append('<p class="note">Mean over images with a defined score [95 % bootstrap '
               "CI]; n counts those images, undefined ones are in brackets. ↑/↓: "
               "higher/lower is better.</p>")
    return out


def _class_comparison_html(tests: dict[str, Any]) -> list[str]:
    """The benign-versus-malignant table, then a caution per map no better than uniform."""
    out = ["<h3>Benign vs malignant</h3>"]
    trow = _class_comparison_rows(tests)
    if trow:
        out.append(_table(["Model / method", "Metric", "Heatmaps compared",
                           "Median benign", "Median malignant",
                           "n benign (undefined)", "n malignant (undefined)",
                           "Mann-Whitney p (raw)", "p adjusted (BH)", "Rank-biserial",
                           "Reading"], trow, numeric_from=3, numeric_to=10))
        out.append('<p class="note">Pooled: every heatmap of the model and method. '
                   "Within heatmaps explaining one class: the same comparison for a fixed "
                   "explained class (with --target predicted the pooled one mixes lesion "
                   "type with the class each heatmap explains). Undefined images (no "
                   "score) are counted in brackets and left out. The raw Mann-Whitney p "
                   "sits beside its Benjamini-Hochberg-adjusted p (families in the method "
                   "notes); the reading uses the adjusted p.</p>")
    else:
        out.append(missing("no class comparisons in attention_summary.json"))
    for key in sorted(tests):
        guard = (tests[key] or {}).get("uniform_guard") or {}
        if guard and not guard.get("better_than_uniform"):
            out.append(f'<p class="caution"><b>{esc(key)}:</b> {esc(guard["sentence"])}</p>')
    return out


def _confound_items(r: RunFiles, key: str, t: dict[str, Any],
                    crow: list[list[str]]) -> list[str]:
    """The sentences of one model/method's size confounds; table rows go to ``crow``."""
    confounds = t.get("size_confounds")
    if not isinstance(confounds, dict) or not confounds:
        confounds = {"leakage": t.get("size_confound")}
    model = key.split("/", 1)[0]
    items = []
    guard = t.get("uniform_guard") or {}
    if guard and not guard.get("better_than_uniform"):
        items.append(f"<li><b>{esc(r.display(model))}</b> "
                     f'<span class="note">{esc(key)}</span>: '
                     f"{esc(guard.get('sentence', ''))}</li>")
    for met, sc in confounds.items():
        if not isinstance(sc, dict):
            text = "not computed"
        else:
            text = sc.get("summary") or sc.get("error") or sc.get("reason") or "not computed"
            if "verdict" in sc:
                crow.append(_confound_row(key, met, sc))
        items.append(f"<li><b>{esc(r.display(model))}</b> "
                     f'<span class="note">{esc(key)}, {esc(met)}</span>: '
                     f"{esc(text)}</li>")
    return items


def _confound_html(r: RunFiles, tests: dict[str, Any]) -> list[str]:
    """The lesion-area confound table and its sentences."""
    out = ["<h3>Lesion-area confound</h3>"]
    crow: list[list[str]] = []
    items: list[str] = []
    for key in sorted(tests):
        items += _confound_items(r, key, tests[key] or {}, crow)
    if crow:
        out.append(_table(["Model / method", "Metric", "Gap before [95 % CI]",
                           "Gap after area [95 % CI]", "p (raw)", "p adjusted (BH)",
                           "TOST p (raw)", "TOST p adjusted (BH)", "Verdict",
                           "Verdict on raw p"], crow, numeric_from=2, numeric_to=8))
    out.append(f'<ul class="sentences">{"".join(items)}</ul>' if items else
               missing("no lesion-area confound results in attention_summary.json"))
    return out


def _sanity_section(tests: dict[str, Any]) -> list[str]:
    """The model-randomisation verdict per model/method."""
    items = [f"<li><b>{esc(key)}</b>: {_sanity_html((tests[key] or {}).get('sanity'))}</li>"
             for key in sorted(tests)]
    return ["<h3>Sanity check (model randomisation)</h3>",
            f'<ul class="sentences">{"".join(items)}</ul>' if items else
            missing("no sanity check results in attention_summary.json")]


def _artifact_mass_rows(tests: dict[str, Any]) -> list[list[str]]:
    """Heatmap mass on each artifact and excess leakage with/without it, per model/method."""
    arows = []
    for key in sorted(tests):
        recs = (tests[key] or {}).get("artifacts")
        if isinstance(recs, dict) and "error" in recs:
            arows.append([esc(key), "", "", "", "", esc(recs["error"])])
        for a in recs if isinstance(recs, list) else []:
            arows.append([esc(key), esc(a.get("artifact")),
                          "present" if a.get("present") else "absent", esc(a.get("n")),
                          fmt_num(a.get("mean_mass")) + f" (n {esc(a.get('n_mass'))})",
                          fmt_num(a.get("mean_excess_leakage"), 4)
                          + f" (n {esc(a.get('n_excess'))})"])
    return arows


def _artifacts_html(s: dict[str, Any], r: RunFiles, tests: dict[str, Any]) -> list[str]:
    """Attention on artifacts: mass ratio, mass and excess leakage, presence comparisons."""
    out = ["<h3>Attention on artifacts</h3>", _artifact_ratio_html(s, r)]
    arows = _artifact_mass_rows(tests)
    if arows:
        out.append('<p class="note">Mean share of heatmap mass on each artifact (images '
                   "with that artifact), and mean excess leakage of images with and "
                   "without it.</p>")
        out.append(_table(["Model / method", "Artifact", "On image", "Images",
                           "Mean heatmap mass on artifact", "Mean excess leakage"], arows,
                          numeric_from=3))
    presence = _presence_rows(tests)
    if presence:
        out.append('<p class="note">Scores of images with versus without each labelled '
                   "artifact: mean [95 % bootstrap CI] (n, undefined), two-sided "
                   "Mann-Whitney p raw and Benjamini-Hochberg-adjusted within the "
                   "artifact-presence family.</p>")
        out.append(_table(["Model / method", "Artifact", "Metric", "With", "Without",
                           "Difference", "p (raw)", "p adjusted (BH)"], presence,
                          numeric_from=3))
    elif not arows:
        out.append(missing("artifact attention is not known for this data set (it needs "
                           "per-pixel artifact maps, which only the synthetic benchmark "
                           "provides, or artifact labels: --artifacts FILE)"))
    return out


def _attention_subgroups(s: dict[str, Any], r: RunFiles) -> list[str]:
    """The attention by subgroup (``explain --by``), or how to get it."""
    from dermcam.report.subgroup_tables import attention_label, summary_subgroups_html
    from dermcam.stages.explain import SUBGROUP_TITLES

    return ["<h3>By subgroup</h3>",
            summary_subgroups_html(r, s.get("subgroups"), SUBGROUP_TITLES,
                                   attention_label(r), "internal test set")
            or '<p class="note">No subgroup analysis of the attention: <span '
               f'class="mono">dermcam explain {esc(r.dir)} --by COLUMN</span> adds one '
               "(any metadata column, or ita).</p>"]


def section_attention(r: RunFiles) -> str:
    out = ['<section id="attention"><h2>3. Attention</h2>']
    s = r.summary
    if s is None and r.att is None:
        out.append(missing(r.summary_reason))
        if r.att_reason != r.summary_reason:
            out.append(missing(r.att_reason))
        out.append("</section>")
        return "\n".join(out)
    out += _attention_intro(r)
    order = _attention_order(r)
    if s is not None:
        out.append(_localisation_html(s, r))
    out += _leakage_figures(r, order)
    if s is not None:
        tests = s.get("tests", {}) or {}
        out += _size_aware_html(s, r, order)
        out += _class_comparison_html(tests)
        out += _confound_html(r, tests)
        out += _sanity_section(tests)
        out += _artifacts_html(s, r, tests)
        out += _attention_subgroups(s, r)
    out.append("<h3>Undefined scores</h3>")
    out.append(_undefined_html(r))
    out.append("</section>")
    return "\n".join(out)


def _undefined_html(r: RunFiles) -> str:
    s, att = r.summary, r.att
    if att is not None:
        total = att.groupby(["model", "method"]).size()
        bad = att[att["reason"] != ""]
        rows = []
        for (model, method), n in total.items():
            g = bad[(bad["model"] == model) & (bad["method"] == method)]
            counts = g["reason"].value_counts()
            text = "; ".join(f"{esc(k)}: {int(v)} ({esc(REASON_TEXT.get(k, k))})"
                             for k, v in counts.items()) or "none"
            rows.append([esc(r.display(model)), esc(method), f"{len(g)} of {int(n)}", text])
        return _table(["Model", "Method", "Undefined images", "Reasons"], rows, numeric_from=2,
                      numeric_to=3)
    und = (s or {}).get("undefined")
    if isinstance(und, dict):
        if not und:
            return "<p>Every image had defined scores.</p>"
        items = "".join(f"<li>{esc(k)}: {esc(v)} ({esc(REASON_TEXT.get(k, k))})</li>"
                        for k, v in und.items())
        return f"<p>Image × model × method rows with undefined scores:</p><ul>{items}</ul>"
    return missing("undefined-score counts are not recorded")


def _case_caption(r: RunFiles, case, model: str, method: str, threshold: Any,
                  note: str) -> str:
    row = case.row
    label = _label_name(row.get("label"))
    pred = _label_name(row.get("pred"))
    from dermcam.report.gallery import KINDS

    tags = "".join(f'<span class="tag{" missed" if k == "missed" else ""}">'
                   f"{esc(KINDS.get(k, k))}</span>" for k in case.kinds)
    reason = row.get("reason") or ""
    if reason:
        scores = f"scores undefined: {esc(REASON_TEXT.get(reason, reason))}"
    else:
        scores = (f"leakage {fmt_num(row.get('leakage'))}, chance "
                  f"{fmt_num(row.get('chance_leakage'))}, excess "
                  f"{fmt_num(row.get('excess_leakage'), sign=True)}, lesion area "
                  f"{fmt_num(row.get('lesion_area'))}, pixel AUROC "
                  f"{fmt_num(row.get('pixel_auroc'))}, pointing game "
                  f"{fmt_num(row.get('pointing_game'), 2)}")
    prob = row.get("prob_malignant")
    digits = 3 if fmt_num(prob) != fmt_num(threshold) else 6  # show what decided a tie
    return (f"<figcaption>{tags}<br><b class=\"mono\">{esc(row.get('image_id'))}</b> · "
            f"{esc(r.display(model))} ({esc(method)}) · label <b>{esc(label)}</b> · "
            f"p(malignant) {fmt_num(prob, digits)} vs threshold "
            f"{fmt_num(threshold, digits)} → predicted {esc(pred)}<br>{scores}"
            + (f"<br><i>{esc(note)}</i>" if note else "") + "</figcaption>")


def section_gallery(r: RunFiles) -> str:
    from dermcam.report import gallery as gal

    out = ['<section id="gallery"><h2>4. Gallery</h2>']
    att = r.att
    if att is None:
        out.append(missing(r.att_reason))
        out.append("</section>")
        return "\n".join(out)
    out.append(f"<p>Per model and method: the {N_EXTREME} images with the highest and the "
               f"{N_EXTREME} with the lowest excess leakage, and the misclassified malignant "
               f"lesions (up to {N_MISSED}). Each strip: image | heatmap over the image "
               "(white line = lesion border) | lesion mask | leak overlay (<b style=\"color:"
               "#c00\">red</b> = heatmap outside the lesion, <b style=\"color:#080\">green</b> "
               "= inside). Rendered from the saved heatmaps.</p>")
    pairs = sorted({(str(a), str(b)) for a, b in zip(att["model"], att["method"])},
                   key=lambda p: (r.names.index(p[0]) if p[0] in r.names else 99, p[1]))
    source = None
    cards, notes = [], []
    for model, method in pairs:
        g = att[(att["model"] == model) & (att["method"] == method)]
        cases, left = gal.select_cases(g, N_EXTREME, N_MISSED)
        threshold = r.run.thresholds.get(model)
        if not cases:
            notes.append(missing(f"{r.display(model)} ({method}): no image has a defined excess "
                                 "leakage and no malignant lesion was missed"))
            continue
        if left:
            notes.append(f'<p class="note">{esc(r.display(model))} ({esc(method)}): '
                         f"{len(left)} more missed malignant lesions not shown: "
                         f'<span class="mono">{esc(", ".join(left))}</span></p>')
        if not any(k != "missed" for c in cases for k in c.kinds):
            notes.append(missing(f"{r.display(model)} ({method}): no image has a defined excess "
                                 "leakage, so no highest/lowest examples"))
        layer = str(g["layer"].iloc[0]) if "layer" in g.columns and len(g) else ""
        folder = heatmap_dir(r.dir, model, method, layer)
        maps = gal.load_heatmaps(folder, {str(c.row["image_id"]) for c in cases})
        if source is None:
            source = gal.ImageSource(r.run)
            if source.reason:
                notes.insert(0, missing(f"images and masks: {source.reason}; the gallery shows "
                                        "heatmaps only"))
            elif source.warning:
                notes.insert(0, f'<p class="missing"><b>note:</b> {esc(source.warning)}</p>')
        for c in cases:
            iid = str(c.row["image_id"])
            note = ""
            cam = maps.get(iid)
            if cam is None:
                body = missing(f"saved heatmap for {iid} not found under "
                               f"attention/{model}/{method}/{layer}/")
            else:
                image, mask, why = source.get(iid)
                if why and not source.reason:
                    note = f"heatmap only: {why}"
                try:
                    png = gal.render_strip(cam, image, mask)
                    body = (f'<img src="{data_uri_png(png)}" alt="image, heatmap, mask and '
                            f'leak overlay for {esc(iid)}">')
                except ValueError as exc:
                    body = missing(f"strip for {iid} could not be drawn ({exc})")
            kinds = " ".join(c.kinds)
            cards.append(f'<figure class="card" data-model="{esc(model)}" '
                         f'data-method="{esc(method)}" '
                         f'data-cls="{esc(_label_name(c.row.get("label")))}" '
                         f'data-kind="{esc(kinds)}">{body}'
                         + _case_caption(r, c, model, method, threshold, note) + "</figure>")
    out.extend(notes)
    if cards:
        def options(values):
            return "".join(f'<option value="{esc(v)}">{esc(t)}</option>' for v, t in values)

        models = list(dict.fromkeys(m for m, _ in pairs))
        methods = list(dict.fromkeys(m for _, m in pairs))
        out.append('<div class="filters">'
                   '<label>Model <select class="filter" data-key="model">'
                   f'<option value="">all</option>{options((m, r.display(m)) for m in models)}'
                   "</select></label>"
                   + ('<label>Method <select class="filter" data-key="method">'
                      f'<option value="">all</option>{options((m, m) for m in methods)}'
                      "</select></label>" if len(methods) > 1 else "")
                   + '<label>Class <select class="filter" data-key="cls">'
                   '<option value="">all</option><option value="benign">benign</option>'
                   '<option value="malignant">malignant</option></select></label>'
                   '<label>Shown because <select class="filter" data-key="kind">'
                   f'<option value="">any</option>{options(gal.KINDS.items())}'
                   "</select></label>"
                   f'<span class="note"><span id="gallery-count">{len(cards)}</span> of '
                   f"{len(cards)} shown</span></div>")
        out.append(f'<div class="gallery">{"".join(cards)}</div>')
    out.append("</section>")
    return "\n".join(out)


def section_notes(r: RunFiles) -> str:
    out = ['<section id="notes"><h2>5. Method notes</h2>']
    res = r.metrics or {}
    alpha = res.get("alpha", 0.05)
    fill = {"pct": f"{100 * (1 - alpha):g}" if _finite(alpha) else "95",
            "n_boot": res.get("n_boot", "the recorded number of"),
            "ci_method": res.get("ci_method", "see metrics.json"), "alpha": alpha,
            "resampling": res.get("resampling", "images")}
    summ = r.summary or {}
    margin = summ.get("equivalence_margin")
    per_image = summ.get("per_image")
    sanities = [t["sanity"] for t in (summ.get("tests") or {}).values()
                if isinstance(t, dict) and isinstance(t.get("sanity"), dict)]
    sanities = [x.get("full") if isinstance(x.get("full"), dict) else x for x in sanities]
    thresholds = sorted({float(x["threshold"]) for x in sanities
                         if _finite(x.get("threshold"))})
    att_fill = {"margin": f"{margin:g}" if _finite(margin) else "the recorded margin",
                "att_resampling": summ.get("resampling", "images"),
                "att_per_image": ("; ".join(map(str, per_image)) if per_image else
                                  "everything (no clusters are resampled)"
                                  if summ.get("resampling", "images") == "images" else
                                  "not recorded"),
                "sanity_threshold": (", ".join(f"{t:g}" for t in thresholds) if thresholds
                                     else "0.5 unless set otherwise")}
    out.append("<h3>Classification</h3><dl class=\"defs\">")
    out += [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in CLASSIFICATION_NOTES]
    out.append("</dl><h3>Statistics</h3><dl class=\"defs\">")
    out += [f"<dt>{esc(k)}</dt><dd>{esc(v.format(**fill))}</dd>" for k, v in STATISTICS_NOTES]
    out.append("</dl><h3>Attention metrics</h3>")
    defs = (r.summary or {}).get("metric_definitions")
    if isinstance(defs, dict) and defs:
        out.append('<dl class="defs">')
        for name, d in defs.items():
            d = d or {}
            hib = d.get("higher_is_better")
            direction = ("higher is better" if hib is True else "lower is better"
                         if hib is False else "a descriptor, no better direction")
            chance = f"; chance level {d['chance']:g}" if _finite(d.get("chance")) else ""
            out.append(f"<dt>{esc(name)}</dt><dd>{esc(d.get('definition', ''))}.<br>"
                       f"{esc(direction)}{esc(chance)}.</dd>")
        out.append("</dl>")
    else:
        out.append(missing("attention metric definitions: " + (r.summary_reason or
                                                                "not in attention_summary.json")))
    out.append('<dl class="defs">')
    out += [f"<dt>{esc(k)}</dt><dd>{esc(v.format(**att_fill))}</dd>"
            for k, v in ATTENTION_STAT_NOTES]
    out.append("</dl></section>")
    return "\n".join(out)


# ----------------------------------------------------------------- page


def render(run_dir: str | Path) -> str:
    """The report page for ``run_dir`` as a string."""
    from dermcam import __version__

    r = RunFiles(Path(run_dir))
    data_name = r.run.data.get("name") or "unnamed data set"
    names = ", ".join(r.display(n) for n in r.names) or "no models"
    header = (f"<h1>dermcam report</h1><p class=\"sub\">{esc(data_name)} · {esc(names)} · run "
              f'folder <span class="mono">{esc(r.dir.resolve())}</span></p>'
              '<nav><a href="#summary">Summary</a><a href="#comparison">Model comparison</a>'
              '<a href="#external">External</a><a href="#subgroups">Subgroups</a>'
              '<a href="#attention">Attention</a><a href="#probe">Probes</a>'
              '<a href="#gallery">Gallery</a>'
              '<a href="#notes">Method notes</a></nav>')
    from dermcam.report.external_section import section_external, section_subgroups
    from dermcam.report.probe_section import section_probe

    body = "\n".join([section_summary(r), section_comparison(r), section_external(r),
                      section_subgroups(r), section_attention(r),
                      section_probe(r), section_shortcut(r),
                      section_gallery(r), section_notes(r)])
    built = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    footer = (f"Built {esc(built)} by dermcam {esc(__version__)} from the files in "
              f'<span class="mono">{esc(r.dir.resolve())}</span>. This page is self-contained: '
              "figures are embedded and nothing is loaded from the network.")
    return template.page(f"dermcam report: {esc(data_name)}", header, body, footer)


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's self-contained HTML report; returns its path.

    ``out`` defaults to ``RUN_DIR/report.html``; an existing folder gets
    ``report.html`` inside it. Raises :class:`DermcamError` when ``run_dir`` is not
    a dermcam run folder; any later stage that has not run shows as a "missing" box.
    """
    from dermcam.io import write_text

    run_dir = Path(run_dir)
    target = Path(out) if out is not None else run_dir / REPORT_NAME
    if target.is_dir():
        target = target / REPORT_NAME
    text = render(run_dir)
    write_text(target, text)
    log.info("wrote %s (%.1f MB)", target, len(text.encode("utf-8")) / 1e6)
    return target
