"""Report tables shared by the attention, probe and external sections: a summary by
subgroup (``explain --by`` / ``probe --by``) and the probes split by artifact presence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _ci(d: Any) -> str:
    from dermcam.report.html import _finite, fmt_ci

    if not isinstance(d, dict):
        return "n/a"
    text = fmt_ci(d)
    if text != "n/a" and _finite(d.get("n_nan")) and d["n_nan"]:
        text += f' <span class="note">({d["n_nan"]} undefined)</span>'
    return text


def summary_subgroups_html(r, subgroups: dict[str, Any] | None, titles: dict[str, str],
                           label: Callable[[dict[str, Any]], str], set_name: str) -> str:
    """One table per ``--by`` column and entry, with its Kruskal-Wallis sentence; empty
    when there is no subgroup analysis."""
    from dermcam.report.html import _table, esc
    from dermcam.subgroups import kruskal_sentence

    out = []
    for analysis in (subgroups or {}).values():
        out.append(f'<p class="note">Groups of {esc(analysis.get("column"))} on the '
                   f"{esc(set_name)}: {esc(analysis.get('binning'))}; fewer than "
                   f"{esc(analysis.get('min_group'))} images: too few to estimate. Mean "
                   "[95 % CI] over the group's images.</p>")
        for entry in analysis.get("entries") or []:
            rows = []
            for g in entry.get("groups") or []:
                cells = ([esc(g.get("note"))] + [""] * (len(titles) - 1)
                         if not g.get("estimable") else [_ci(g.get(k)) for k in titles])
                rows.append([esc(g.get("group")), esc(g.get("n"))] + cells)
            out.append(f"<h4>{esc(label(entry))}, by {esc(analysis.get('column'))}</h4>")
            out.append(_table(["Group", "Images", *map(esc, titles.values())], rows,
                              numeric_from=1))
            out.append(f"<p>{esc(kruskal_sentence(analysis, entry, titles))}</p>")
    return "\n".join(out)


def attention_label(r) -> Callable[[dict[str, Any]], str]:
    return lambda e: f"{r.display(e.get('model'))} ({e.get('method')})"


def probe_label(r) -> Callable[[dict[str, Any]], str]:
    from dermcam.stages.probe import PROBE_TITLES as titles

    return lambda e: " ".join(filter(None, [r.display(e.get("model")), "—", e.get("artifact"),
                                            titles.get(e.get("probe"), e.get("probe"))]))


def presence_html(r, rows: list[dict[str, Any]] | None) -> str:
    """Lesion and background removal on images with vs without each labelled artifact."""
    from dermcam.report.html import _table, esc, fmt_num, fmt_p
    from dermcam.stages.probe import PROBE_TITLES as titles

    if not rows:
        return ""

    def delta(b) -> str:
        if fmt_num(b.get("delta_mean")) == "n/a":
            return "n/a"
        return (f'{fmt_num(b.get("delta_mean"))} <span class="ci">['
                f'{fmt_num(b.get("delta_ci_low"))}, {fmt_num(b.get("delta_ci_high"))}]</span>')

    def auc(b) -> str:
        if b.get("auc_reason"):
            return f'n/a <span class="note">({esc(b["auc_reason"])})</span>'
        return (f'{fmt_num(b.get("auc"))} <span class="ci">[{fmt_num(b.get("auc_ci_low"))}, '
                f'{fmt_num(b.get("auc_ci_high"))}]</span> (intact {fmt_num(b.get("auc_intact"))})')

    body = []
    for x in rows:
        w, wo = x.get("with") or {}, x.get("without") or {}
        body.append([esc(r.display(x.get("model"))), esc(titles.get(x.get("probe"))),
                     esc(x.get("artifact")), f"{esc(w.get('n'))} ({esc(w.get('n_malignant'))})",
                     delta(w), auc(w), f"{esc(wo.get('n'))} ({esc(wo.get('n_malignant'))})",
                     delta(wo), auc(wo), fmt_p(x.get("delta_p_adjusted", x.get("delta_p")))])
    return ("<h3>Removal probes by artifact presence</h3>"
            '<p class="note">Images with versus without each labelled artifact (the '
            "synthetic benchmark's metadata or an artifact label file): mean change in "
            "malignant probability [95 % bootstrap CI] and ROC AUC [95 % CI] once the lesion "
            "or the background is gone. p: two-sided Mann-Whitney of the per-image change, "
            "with vs without, Holm-adjusted over the rows; p ≥ 0.05 is inconclusive.</p>"
            + _table(["Model", "Probe", "Artifact", "With: images (malignant)", "Δ with",
                      "AUC with", "Without: images (malignant)", "Δ without", "AUC without",
                      "p"], body, numeric_from=3))
