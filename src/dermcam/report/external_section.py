"""The report's "External validation" and "Subgroups" sections.

External sets are those the manifest records as ``external:<name>`` stages, each read
from ``RUN/external/<name>/metrics.json``, and ``external:<name>/explain`` and
``external:<name>/probe`` stages, read from the same folder's ``attention_summary.json``
and ``probe_summary.json``; subgroups come from ``metrics.json``'s ``subgroups``
(internal test set) and each external set's.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from dermcam import run as runmod
from dermcam.errors import DermcamError

ITA_NOTE = ("Skin tone is estimated from each image, not recorded: the individual typology "
            "angle ITA = arctan((L* − 50) / b*) in degrees, from the median CIELAB L* and b* "
            "(sRGB, D65) of the skin outside the lesion mask grown by 1/32 of the image side, "
            "leaving out the dark vignette (L* < 15) and saturated pixels (a channel ≥ 250); "
            "images without a mask use the whole image, lesion included (predictions.csv "
            "column ita_source). Categories: very light > 55°, light 41–55, intermediate 28–41, "
            "tan 10–28, brown −30–10, dark ≤ −30. Lighting and the dermoscope's white balance "
            "move the estimate, and ITA categories are not Fitzpatrick types.")


def _externals(r) -> list[tuple[str, dict[str, Any] | None, str, Any]]:
    """``(name, metrics or None, why missing, folder)`` per recorded external set."""
    from dermcam.io import read_json
    from dermcam.stages.external import external_sets

    out = []
    for name, folder, entry in external_sets(r.run):
        path = folder / runmod.METRICS
        if entry.get("status") != "complete":
            out.append((name, None, f"external set {name}: the stage is "
                                    f"'{entry.get('status')}' ({entry.get('error', '')})",
                        folder))
            continue
        try:
            out.append((name, read_json(path), "", folder))
        except DermcamError as exc:
            out.append((name, None, f"external/{name}/metrics.json: {exc}", folder))
    return out


def section_external(r) -> str:
    """Internal and external test results side by side, with the duplicates found."""
    from dermcam.report.html import RunFiles, _table, esc, fmt_ci, missing
    from dermcam.stages.external import SIDE_BY_SIDE, external_audits, side_by_side

    head = '<section id="external"><h2>External validation</h2>'
    sets = _externals(r)
    audits = external_audits(r.run)
    if not sets and not audits:
        return (head + "<p>No external data set has been scored. Run <span class=\"mono\">"
                f"dermcam evaluate {esc(r.dir)} --data OTHER</span> to test the models on "
                "another data set (and explain / probe with the same --data to audit their "
                "attention and behaviour there).</p></section>")
    out = [head, "<p>The run's models on other data sets, each model at the threshold it "
                 "chose on the training data's validation split; point estimate [95 % CI]. "
                 "The internal test set comes first.</p>"]
    out += [missing(why) for _, res, why, _ in sets if res is None]
    ok = [(name, res) for name, res, _, _ in sets if res is not None]
    rows = []
    for row in side_by_side(r.metrics, ok):
        rows.append([esc(r.display(row["model"])), esc(row["set"]),
                     f"{esc(row['n'])} ({esc(row['n_malignant'])})"]
                    + [fmt_ci(row[k]) for _, k, _ in SIDE_BY_SIDE])
    if rows:
        out.append(_table(["Model", "Test set", "Images (malignant)"]
                          + [esc(t) for _, _, t in SIDE_BY_SIDE], rows, numeric_from=2))
    for name, res, _, folder in sets:
        if res is None:
            continue
        ext = res.get("external") or {}
        d = ext.get("duplicates") or {}
        ids = (d.get("exact") or []) + (d.get("near") or [])
        shown = ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
        verdict = ("left out of these metrics" if d.get("excluded") else
                   "kept in these metrics (--exclude-duplicates leaves them out)")
        out.append(f"<h3>{esc(name)}</h3><p>{esc(ext.get('data'))} ({esc(ext.get('layout'))} "
                   f"layout), {esc(ext.get('images'))}: {esc(res.get('test', {}).get('n'))} "
                   f"images scored. Thresholds: {esc(ext.get('thresholds'))}. "
                   f"<b>Duplicates of {esc(d.get('against'))}:</b> {esc(d.get('n_exact', 0))} "
                   f"exact, {esc(d.get('n_near', 0))} near"
                   + (f" ({esc(shown)}), {esc(verdict)}" if ids else "")
                   + f". Method: {esc(d.get('method'))}.</p>")
        view = SimpleNamespace(dir=folder)
        out.append('<div class="figs">'
                   + RunFiles.figure(view, "roc_curves.png", f"ROC curves on {name}")
                   + RunFiles.figure(view, "reliability.png", f"Reliability on {name}")
                   + "</div>")
    for name, stages in audits.items():
        out.append(_audit_html(r, name, stages))
    out.append("</section>")
    return "\n".join(out)


#: Attention scores shown side by side for the internal and external sets.
_ATTENTION_SIDE = (("leakage", "Leakage"), ("excess_leakage", "Excess leakage"),
                   ("pixel_auroc", "Pixel AUROC"))


def _read(folder, file: str, stage: dict[str, Any] | None, name: str, kind: str):
    """``(object or None, why missing)`` of one external audit file."""
    from dermcam.io import read_json

    if stage is None:
        return None, ""
    if stage.get("status") != "complete":
        return None, (f"external set {name}: its {kind} stage is '{stage.get('status')}' "
                      f"({stage.get('error', '')})")
    try:
        return read_json(folder / file), ""
    except DermcamError as exc:
        return None, f"external/{name}/{file}: {exc}"


def _audit_html(r, name: str, stages: dict[str, Any]) -> str:
    """Attention (``explain --data``) and probes (``probe --data``) on external set ``name``,
    each beside the internal test set's."""
    from dermcam.formatting import fmt_ci as format_ci
    from dermcam.report.html import HTML_CI, _table, esc, fmt_num, missing
    from dermcam.report.subgroup_tables import (
        attention_label,
        presence_html,
        probe_label,
        summary_subgroups_html,
    )
    from dermcam.stages import probe as pr
    from dermcam.stages.explain import SUBGROUP_TITLES

    folder = r.dir / runmod.EXTERNAL_DIR / name
    out = [f"<h3>Attention and probes on {esc(name)}</h3>"]
    att, why = _read(folder, runmod.ATTENTION_SUMMARY, stages.get("explain"), name,
                     "explain")
    if why:
        out.append(missing(why))
    if att is not None:
        ext = att.get("external") or {}
        out.append(f"<p>Heatmaps on {esc(ext.get('data'))} ({esc(ext.get('layout'))} layout), "
                   f"{esc(ext.get('images'))}: {esc(att.get('n_images'))} images. Layers "
                   f"{esc(ext.get('layers'))}; thresholds: {esc(ext.get('thresholds'))}. Mean "
                   "[95 % CI] over images with a defined score.</p>")
        rows = []
        for set_name, summ in (("internal test", r.summary), (name, att)):
            recs: dict[tuple, dict] = {}
            for rec in (summ or {}).get("overall") or []:
                recs.setdefault((rec.get("model"), rec.get("method")), {})[rec.get("metric")] = rec
            for (model, method), ms in sorted(recs.items()):
                n = (ms.get("leakage") or {}).get("n")
                rows.append([esc(r.display(model)), esc(method), esc(set_name), esc(n)]
                            + [_mean_ci(ms.get(k)) for k, _ in _ATTENTION_SIDE])
        out.append(_table(["Model", "Method", "Test set", "Images",
                           *[t for _, t in _ATTENTION_SIDE]], rows, numeric_from=3))
        out.append(summary_subgroups_html(r, att.get("subgroups"), SUBGROUP_TITLES,
                                          attention_label(r), f"external set {name}"))
    prb, why = _read(folder, runmod.PROBE_SUMMARY, stages.get("probe"), name, "probe")
    if why:
        out.append(missing(why))
    if prb is not None:
        entries = prb.get("entries", []) if isinstance(prb, dict) else prb
        internal = []
        try:
            internal = pr.read_summary(r.dir) or []
        except DermcamError:
            pass
        rows = []
        for set_name, es in (("internal test", internal), (name, entries)):
            for e in es:
                if e.get("probe") not in ("lesion_removed", "background_removed"):
                    continue
                rows.append([esc(r.display(e.get("model"))),
                             esc(pr.PROBE_TITLES.get(e["probe"])), esc(set_name), esc(e.get("n")),
                             format_ci(e.get("delta_mean"), e.get("delta_ci_low"),
                                       e.get("delta_ci_high"), template=HTML_CI,
                                       collapse=False),
                             format_ci(e.get("auc"), e.get("auc_ci_low"), e.get("auc_ci_high"),
                                       template=HTML_CI, collapse=False)
                             + f' (intact {fmt_num(e.get("auc_intact"))})'])
        out.append("<p>Behavioural probes on the same images, at the run's thresholds "
                   f"({len(entries)} entries in external/{esc(name)}/probe_summary.json); "
                   "the removal probes beside the internal test set's:</p>")
        out.append(_table(["Model", "Probe", "Test set", "Images", "Δ P(malignant) [95 % CI]",
                           "ROC AUC [95 % CI]"], rows, numeric_from=3))
        if isinstance(prb, dict):
            out.append(presence_html(r, prb.get("artifact_presence")))
            out.append(summary_subgroups_html(r, prb.get("subgroups"), pr.SUBGROUP_TITLES,
                                              probe_label(r), f"external set {name}"))
    return "\n".join(out)


def _mean_ci(rec: Any) -> str:
    from dermcam.report.html import fmt_ci

    return fmt_ci(rec, value_key="mean", lo_key="ci_low", hi_key="ci_high")


def _subgroup_html(r, analysis: dict[str, Any], set_name: str) -> str:
    from dermcam.formatting import metric_label
    from dermcam.report.html import _table, esc, fmt_ci
    from dermcam.subgroups import SUBGROUP_METRICS, heterogeneity_sentence

    out = []
    for model, entry in (analysis.get("models") or {}).items():
        rows = []
        for g in entry.get("groups", []):
            cells = ([esc(g.get("note"))] + [""] * (len(SUBGROUP_METRICS) - 1)
                     if not g.get("estimable") else
                     [fmt_ci(g.get(k)) for k in SUBGROUP_METRICS])
            rows.append([esc(g.get("group")), esc(g.get("n")), esc(g.get("n_malignant"))]
                        + cells)
        out.append(f"<h3>{esc(r.display(model))} on the {esc(set_name)}, by "
                   f"{esc(analysis.get('column'))}</h3>"
                   f"<p class=\"note\">Groups: {esc(analysis.get('binning'))}; fewer than "
                   f"{esc(analysis.get('min_group'))} images or {esc(analysis.get('min_per_class'))}"
                   " of a class: too few to estimate.</p>")
        out.append(_table(["Group", "Images", "Malignant"]
                          + [metric_label(k) for k in SUBGROUP_METRICS], rows, numeric_from=1))
        out.append(f"<p>{esc(heterogeneity_sentence(analysis, model))}</p>")
    return "\n".join(out)


def section_subgroups(r) -> str:
    """Per-subgroup tables (``evaluate --by``) for the internal and every external set."""
    from dermcam.report.html import esc

    head = '<section id="subgroups"><h2>Subgroups</h2>'
    blocks = [("internal test set", (r.metrics or {}).get("subgroups") or {})]
    blocks += [(f"external set {name}", (res or {}).get("subgroups") or {})
               for name, res, _, _ in _externals(r)]
    if not any(b for _, b in blocks):
        return (head + "<p>No subgroup analysis in this run. <span class=\"mono\">dermcam "
                f"evaluate {esc(r.dir)} --by COLUMN</span> adds one (any metadata column "
                "of the layout, or <span class=\"mono\">ita</span> for the estimated skin "
                "tone).</p></section>")
    out = [head, "<p>Metrics per group with 95 % percentile bootstrap CIs (stratified by "
                 "class), at each model's validation threshold. Heterogeneity: Cochran's Q "
                 "of the group AUCs with DeLong variances, and a chi-square test of "
                 "correct/incorrect against group; each Holm-adjusted over the columns and "
                 "models of one evaluation.</p>"]
    if any("ita" in b for _, b in blocks):
        out.append(f"<p class=\"note\">{esc(ITA_NOTE)}</p>")
    for set_name, block in blocks:
        for analysis in block.values():
            out.append(_subgroup_html(r, analysis, set_name))
    out.append("</section>")
    return "\n".join(out)
