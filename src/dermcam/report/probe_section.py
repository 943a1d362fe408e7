"""The report's "Behavioural probes" section, built from ``probe_summary.json`` (entries,
and where present the split by artifact presence and by subgroup)."""

from __future__ import annotations

from typing import Any

from dermcam import run as runmod
from dermcam.errors import DermcamError


def _delta_cell(e: dict[str, Any], prefix: str = "delta") -> str:
    from dermcam.report.html import fmt_num

    mean = e.get("delta_mean" if prefix == "delta" else prefix)
    return (f'{fmt_num(mean, 3)} <span class="ci">[{fmt_num(e.get(f"{prefix}_ci_low"), 3)}, '
            f'{fmt_num(e.get(f"{prefix}_ci_high"), 3)}]</span>')


def _pct(v: Any) -> str:
    from dermcam.report.html import _finite

    return f"{100 * v:.0f} %" if _finite(v) else "n/a"


def section_probe(r) -> str:
    """Plain sentences, one table per model, and the three probe figures."""
    from dermcam.report.html import _table, esc, fmt_num, missing
    from dermcam.stages import probe as pr

    head = '<section id="probe"><h2>Behavioural probes</h2>'
    try:
        summary = pr.read_summary_object(r.dir)
    except DermcamError as exc:
        return head + missing(f"probe_summary.json could not be read ({exc})") + "</section>"
    if summary is None:
        return head + missing(r.absent_reason(runmod.PROBE_SUMMARY, "probe")) + "</section>"
    entries = summary["entries"]
    out = [head, r.stale_note("probe"),
           "<p>Each test image is changed and the model's malignant probability watched: the "
           "lesion inpainted away (OpenCV), the background replaced by flat skin, artifacts "
           "pasted outside the lesion by the synthetic generator's painters, and, where the "
           "data carry artifact maps, each artifact inpainted away. Mean change with a 95 % "
           "bootstrap CI over images (placements averaged per image first); flip rates at "
           "the run's validation threshold. "
           f"{esc(pr.CAVEAT)}</p>"]
    displays = {n: r.display(n) for n in r.names}
    out.append("<ul>" + "".join(f"<li>{esc(s)}</li>" for s in pr.sentences(entries, displays))
               + "</ul>")
    for model in dict.fromkeys(e["model"] for e in entries):
        rows = []
        for e in (x for x in entries if x["model"] == model):
            what = pr.PROBE_TITLES.get(e["probe"], e["probe"])
            if e.get("artifact"):
                what = f"{e['artifact']} {what}"
            auc = ""
            if "auc" in e:
                auc = (f'{fmt_num(e.get("auc"))} <span class="ci">[{fmt_num(e.get("auc_ci_low"))}'
                       f', {fmt_num(e.get("auc_ci_high"))}]</span> (intact '
                       f'{fmt_num(e.get("auc_intact"))})')
            rows.append([esc(what), esc(e["n"]), _delta_cell(e),
                         _delta_cell(e, "delta_benign"), _delta_cell(e, "delta_malignant"),
                         _pct(e.get("flip_to_malignant")), _pct(e.get("flip_to_benign")),
                         auc, esc(pr.delta_verdict(e))])
        out.append(f"<h3>{esc(displays.get(model, model))}</h3>")
        out.append(_table(["Probe", "Images", "Δ P(malignant) [95 % CI]", "Δ benign",
                           "Δ malignant", "Flips benign→malignant", "Flips malignant→benign",
                           "ROC AUC [95 % CI]", "Change"], rows, numeric_from=1))
    from dermcam.report.subgroup_tables import presence_html, probe_label, summary_subgroups_html

    out.append(presence_html(r, summary.get("artifact_presence")))
    sub = summary_subgroups_html(r, summary.get("subgroups"), pr.SUBGROUP_TITLES,
                                 probe_label(r), "internal test set")
    if sub:
        out.append("<h3>By subgroup</h3>"
                   '<p class="note">Δ: mean change in malignant probability with a paired 95 % '
                   "bootstrap CI over images; flip rate: share of decisions at the run's "
                   "threshold that change either way (Wilson CI where each image has one "
                   "decision, else a bootstrap over images).</p>" + sub)
    out.append(r.figure("probe_auc.png", "ROC AUC on intact images, with the lesion removed "
                                         "and with the background removed (95 % CIs; dashed: "
                                         "chance)."))
    out.append(r.figure("probe_delta.png", "Per-image change in malignant probability under "
                                           "each probe (boxes: quartiles; whiskers: 1.5 IQR)."))
    out.append(r.figure("probe_examples.png", "What each probe did to the pixels: one "
                                              "malignant and one benign test image."))
    out.append("</section>")
    return "\n".join(out)
