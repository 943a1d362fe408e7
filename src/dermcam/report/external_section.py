"""The report's "External validation" and "Subgroups" sections.

External sets are those the manifest records as ``external:<name>`` stages, each read
from ``RUN/external/<name>/metrics.json``; subgroups come from ``metrics.json``'s
``subgroups`` (internal test set) and each external set's.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

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
    from dermcam.external import external_sets
    from dermcam.io import read_json

    out = []
    for name, folder, entry in external_sets(r.dir, r.manifest):
        path = folder / "metrics.json"
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
    from dermcam.external import SIDE_BY_SIDE, side_by_side
    from dermcam.report.html import RunFiles, _table, esc, fmt_ci, missing

    head = '<section id="external"><h2>External validation</h2>'
    sets = _externals(r)
    if not sets:
        return (head + "<p>No external data set has been scored. Run <span class=\"mono\">"
                f"dermcam evaluate {esc(r.dir)} --data OTHER</span> to test the models on "
                "another data set.</p></section>")
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
    out.append("</section>")
    return "\n".join(out)


def _subgroup_html(r, analysis: dict[str, Any], set_name: str) -> str:
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
        out.append(_table(["Group", "Images", "Malignant", "ROC AUC", "Accuracy",
                           "Sensitivity", "Specificity"], rows, numeric_from=1))
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
