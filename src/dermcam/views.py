"""Tables built once, as data, from a run's summaries; rendered by the terminal (rich) and the
report (Jinja2) alike. Builders take the summary objects the stages write and never read
images or models; :func:`run_sections` reads a run folder and groups every table by section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermcam import run as runmod
from dermcam.findings import fine_line
from dermcam.formatting import fmt_ci, fmt_num, fmt_p, fmt_pct, fmt_seconds, is_number, metric_label
from dermcam.io import read_json
from dermcam.stages.external import SIDE_BY_SIDE, side_by_side

__all__ = ["Table", "ci_cell", "training_table", "imported_table", "metrics_tables",
           "localisation_table", "attention_table", "artifacts_table", "probe_table",
           "presence_table", "shortcut_table", "subgroup_tables", "external_table",
           "run_sections", "SECTIONS", "dataset_tables", "dataset_lines", "problem_lines",
           "models_table", "predictions_table", "findings_lines", "pairwise_table",
           "confound_caveats", "confound_line", "labels_line", "heterogeneity_note",
           "kruskal_note"]

#: Report sections holding detail tables, in page order: (anchor, title).
SECTIONS = (("training", "Training"), ("comparison", "Model comparison"),
            ("external", "External validation"), ("subgroups", "Subgroups"),
            ("attention", "Where the models look"), ("probe", "Behavioural probes"),
            ("shortcut", "Planted shortcut"))


@dataclass
class Table:
    """A titled table of formatted cells; ``numeric_from``: the first column that holds
    numbers (right-aligned by renderers)."""
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""
    numeric_from: int = 1

    def add(self, *cells: Any) -> None:
        self.rows.append(["" if c is None else str(c) for c in cells])


def ci_cell(v: Any, lo: Any, hi: Any, digits: int = 2, sign: bool = False) -> str:
    """``v [lo, hi]`` for a table cell, ``-`` for each undefined part."""
    return fmt_ci(v, lo, hi, digits, collapse=False, missing="-", sign=sign)


def _entry(d: Any, digits: int = 3) -> str:
    if not isinstance(d, dict) or not is_number(d.get("value")):
        return "n/a"
    return fmt_ci(d["value"], d.get("lo"), d.get("hi"), digits, collapse=False)


def _n(names: dict[str, str] | None, model: str) -> str:
    return (names or {}).get(model, model)


def method_at(method: str, layer: str) -> str:
    """One naming scheme for a CAM method at a layer: ``hirescam @ layer2``."""
    return f"{method} @ {layer}" if layer else method


def _cam(chosen: dict[str, tuple[str, str]] | None, name: str, record: dict[str, Any]) -> str:
    """The CAM a model was read with: the chosen method at its layer, else the record's."""
    method, layer = (chosen or {}).get(name, ("", record.get("target_layer", "")))
    return method_at(method, layer) if method else layer


# ----------------------------------------------------------------- training, evaluation


def training_table(records: dict[str, dict[str, Any]],
                   chosen: dict[str, tuple[str, str]] | None = None) -> Table:
    """One row per trained model, epochs counted from 1; ``chosen``: model -> (method, layer)
    of the attention analysis (else the architecture's default CAM layer)."""
    t = Table("Training (best checkpoint on validation)",
              ["model", "weights", "learning rate", "epochs run", "best epoch",
               "best validation", "threshold", "CAM", "time"], numeric_from=2)
    for name, m in records.items():
        if m.get("source"):  # audited from outside: imported_table
            continue
        best = m.get("best_epoch")
        t.add(m.get("display_name", name), m.get("weights_source", "?"),
              f"{m['lr']:g}" if is_number(m.get("lr")) else "-", m.get("epochs_run", "-"),
              best + 1 if isinstance(best, int) else "-",  # recorded from 0
              f"{m.get('monitor', '')} {fmt_num(m.get('best_score'), 3)}".strip(),
              fmt_num(m.get("threshold"), 3), _cam(chosen, name, m),
              fmt_seconds(m.get("wall_time_s")))
    return t


def imported_table(records: dict[str, dict[str, Any]],
                   chosen: dict[str, tuple[str, str]] | None = None) -> Table:
    """One row per model audited from outside dermcam (``dermcam audit``)."""
    t = Table("Audited models (trained outside dermcam)",
              ["model", "file", "form", "SHA-256", "outputs", "threshold", "CAM"],
              numeric_from=99)
    for name, m in records.items():
        if src := m.get("source"):
            t.add(m.get("display_name", name), src.get("file") or "in memory",
                  src.get("form", "?"), (src.get("sha256") or "-")[:12], src.get("read_as", "?"),
                  f"{fmt_num(m.get('threshold'), 3)} ({m.get('threshold_rule', '?')})",
                  _cam(chosen, name, m))
    return t


_MAIN = (("at_threshold", "accuracy"), ("at_threshold", "balanced_accuracy"),
         ("at_threshold", "sensitivity"), ("at_threshold", "specificity"),
         ("at_threshold", "f1_malignant"), ("threshold_free", "roc_auc"),
         ("threshold_free", "average_precision"))


def metrics_tables(result: dict[str, Any]) -> list[Table]:
    """The comparison (with the all-benign baseline), calibration before and after scaling,
    and the paired tests."""
    names = result.get("display_names") or {}
    test = result.get("test") or {}
    t = Table(f"Test set, n = {test.get('n')} ({test.get('n_malignant')} malignant): "
              "value [95 % CI]",
              ["model", "threshold", *(metric_label(k, short=True) for _, k in _MAIN)])
    for m, e in (result.get("models") or {}).items():
        t.add(names.get(m, e.get("display_name", m)), fmt_num(e.get("threshold"), 3),
              *(_entry((e.get(sec) or {}).get(k)) for sec, k in _MAIN))
    if base := (result.get("baselines") or {}).get("all_benign"):
        t.add("all benign (baseline)", "-", *(_entry(base.get(k)) for _, k in _MAIN))
    out = [t]
    if calib := result.get("calibration") or {}:
        c = Table("Calibration on the test set, before and after scaling",
                  ["model", "T, b", "ECE before", "ECE after", "Brier before", "Brier after"])
        for m, v in calib.items():
            c.add(names.get(m, m), f"{fmt_num(v.get('temperature'), 2)}, "
                                   f"{fmt_num(v.get('bias'), 2, sign=True)}",
                  *(_entry((v.get(when) or {}).get(k)) for k in ("ece", "brier")
                    for when in ("before", "after")))
        out.append(c)
    p = pairwise_table(result)
    return out + ([p] if p else [])


def pairwise_table(result: dict[str, Any]) -> Table | None:
    """The paired model comparisons of ``metrics.json`` (None with fewer than two models)."""
    names = result.get("display_names") or {}
    if not (pairs := result.get("pairwise") or []):
        return None
    p = Table("Paired comparisons (same test images)",
              ["models", "ΔAUC [95 % CI]", "DeLong p (Holm)", "Δaccuracy [95 % CI]",
               "McNemar p"], note="p >= 0.05 is inconclusive, not evidence of equal performance.")
    for r in pairs:
        auc, acc = r.get("auc") or {}, r.get("accuracy") or {}
        p.add(f"{names.get(r['b'], r['b'])} - {names.get(r['a'], r['a'])}",
              ci_cell(auc.get("diff"), auc.get("lo"), auc.get("hi"), 3, sign=True),
              fmt_num(auc.get("p_adjusted", r.get("p_holm")), 3),
              ci_cell(acc.get("diff"), acc.get("lo"), acc.get("hi"), 3, sign=True),
              fmt_num((acc.get("mcnemar") or {}).get("p"), 3))
    return p


def external_table(internal: dict[str, Any] | None,
                   externals: list[tuple[str, dict[str, Any]]],
                   names: dict[str, str] | None = None) -> Table | None:
    if not externals:
        return None
    if names is None:  # as the metrics files name them
        sets = [internal or {}, *(res for _, res in externals)]
        names = {k: e.get("display_name", k) for res in sets
                 for k, e in (res.get("models") or {}).items()}
        names.update({k: v for res in sets for k, v in (res.get("display_names") or {}).items()})
    t = Table("Internal test vs external sets: value [95 % CI]",
              ["model", "test set", "n (malignant)", *(c for _, _, c in SIDE_BY_SIDE)],
              numeric_from=2)
    notes = []
    for name, res in externals:
        if d := (res.get("external") or {}).get("duplicates"):
            ids = ", ".join((d.get("exact", []) + d.get("near", []))[:8])
            notes.append(f"{name}: {d['n_exact']} exact and {d['n_near']} near-duplicate "
                         f"image(s) of {d['against']}" + (f" ({ids})" if ids else "")
                         + ("; left out" if d.get("excluded") else
                            "; kept (--exclude-duplicates leaves them out)" if ids else ""))
    t.note = ". ".join(notes)
    for r in side_by_side(internal, externals):
        t.add(_n(names, r["model"]), r["set"], f"{r['n']} ({r['n_malignant']})",
              *(_entry(r[k]) for _, k, _ in SIDE_BY_SIDE))
    return t


def subgroup_tables(result: dict[str, Any]) -> list[Table]:
    """One table per ``--by`` column and model (:func:`dermcam.subgroups.subgroup_table`)."""
    from dermcam.subgroups import subgroup_table

    out, names = [], result.get("display_names") or {}
    for col, analysis in (result.get("subgroups") or {}).items():
        for model in analysis["models"]:
            rows = subgroup_table(analysis, model)
            out.append(Table(f"{names.get(model, model)} by {col} ({analysis['binning']})",
                             rows[0], rows[1:], heterogeneity_note(analysis, model)))
    return out


def _p_part(t: dict[str, Any]) -> str:
    v = t.get("p_adjusted", t.get("p"))
    if not is_number(v):
        return f"undefined ({t.get('reason') or 'no test'})"
    return fmt_p(v, label="p") + (" (Holm)" if "p_adjusted" in t else "")


def heterogeneity_note(analysis: dict[str, Any], model: str) -> str:
    """The note under a metrics subgroup table: both heterogeneity tests' p-values."""
    h = analysis["models"][model]["heterogeneity"]
    return (f"Heterogeneity across {analysis['column']} groups: AUC (Cochran's Q, DeLong "
            f"variances) {_p_part(h['auc'])}; accuracy (chi-square) {_p_part(h['accuracy'])}; "
            "p ≥ 0.05 is inconclusive, not evidence of equal performance.")


def kruskal_note(analysis: dict[str, Any], entry: dict[str, Any], titles=None) -> str:
    """The note under an attention or probe subgroup table: Kruskal-Wallis p per metric."""
    titles = dict(titles or {})
    parts = "; ".join(f"{titles.get(m, m)} {_p_part(t)}" for m, t in entry["heterogeneity"].items())
    return (f"Kruskal-Wallis across {analysis['column']} groups: {parts}; p ≥ 0.05 is "
            "inconclusive, not evidence of equal behaviour.")


# ----------------------------------------------------------------- attention


def localisation_table(rows: list[dict[str, Any]],
                       chosen: dict[str, tuple[str, str]] | None = None,
                       names: dict[str, str] | None = None) -> Table | None:
    """The localisation benchmark, one row per model x method x layer."""
    if not rows:
        return None
    t = Table(f"Localisation benchmark on {rows[0]['n']} {rows[0]['images']} images: "
              "median pixel AUROC [95 % CI] (0.5 = uniform attention)",
              ["model", "CAM", "grid", "pixel AUROC", "undefined", "sanity", "chosen"],
              numeric_from=2)
    for r in rows:
        verdict = {True: "passed", False: "failed", None: "inconclusive"}[r.get("sanity_passed")]
        pick = (chosen or {}).get(r["model"]) == (r["method"], r["layer"])
        t.add(_n(names, r["model"]), method_at(r["method"], r["layer"]),
              "x".join(map(str, r["grid"])),
              ci_cell(r["median_pixel_auroc"], r["ci_low"], r["ci_high"]),
              fmt_pct(r["undefined_share"], 0, missing="-"), verdict, "yes" if pick else "")
    return t


def attention_table(summary: dict[str, Any], names: dict[str, str] | None = None
                    ) -> Table | None:
    """Per model at its method: leakage by class and the size-confound test."""
    if not (tests := summary.get("tests") or {}):
        return None
    t = Table("Leakage by class and the lesion-size confound (heatmaps explain the "
              f"{summary.get('target', 'malignant')} class)",
              ["model", "CAM", "median pixel AUROC", "leakage benign", "leakage malignant",
               "uniform would leak", "gap adjusted for area", "area explains", "verdict"],
              numeric_from=2)
    caveats: dict[str, list[str]] = {}
    by = {(r["model"], r["method"], r["label"], r["metric"]): r
          for r in summary.get("by_class") or []}
    for key, e in tests.items():
        model, method = key.rsplit("/", 1)
        g = e.get("uniform_guard") or {}
        sc = e.get("size_confound") or {}
        cls = [by.get((model, method, lab, "leakage")) or {} for lab in (0, 1)]
        chance = [fmt_num((by.get((model, method, lab, "chance_leakage")) or {}).get("mean"), 3)
                  for lab in (0, 1)]
        lo, hi = (sc.get("class_ci_adjusted") or [None, None])[:2]
        for c in confound_caveats(sc, (e.get("missingness") or {}).get("leakage")):
            caveats.setdefault(c, []).append(_n(names, model))
        t.add(_n(names, model), method_at(method, e.get("layer", "")),
              ci_cell(g.get("median_pixel_auroc"), *(g.get("pixel_auroc_ci") or [None, None])[:2]),
              *(ci_cell(r.get("mean"), r.get("ci_low"), r.get("ci_high"), 3) for r in cls),
              " / ".join(chance), ci_cell(sc.get("class_coef_adjusted"), lo, hi, 3, sign=True),
              fmt_pct(sc.get("share_explained"), 0),
              sc.get("verdict", "-") if g.get("better_than_uniform") else "not interpreted")
    t.note = ("Gap: malignant minus benign mean leakage adjusted for lesion area (OLS, HC3 "
              "SEs); verdicts: remains, explained by size, inconclusive (equivalence margin "
              f"±{summary.get('equivalence_margin', 0.02):g})."
              + "".join(f" {c[0].upper()}{c[1:]}." if len(who) == len(t.rows) else
                        f" {', '.join(who)}: {c}." for c, who in caveats.items()))
    return t


def confound_caveats(sc: dict[str, Any], miss: dict[str, Any] | None = None,
                     alpha: float = 0.05) -> list[str]:
    """What a size-confound verdict (:func:`dermcam.leakage.size_confound`) rests on, in short
    phrases; with the metric's :func:`dermcam.leakage.missing_at_chance` entry ``miss``, also
    whether scoring the undefined heatmaps at chance moves the class comparison across
    ``alpha``."""
    out = []
    basis, reason = sc.get("verdict_basis") or "", sc.get("reason") or ""
    if basis.endswith("-adjusted p"):
        k = (sc.get("family_sizes") or {}).get("size_confound")
        out.append(f"verdicts on {basis}-values" + (f" ({k} tests)" if k else ""))
    if reason:
        out.append({"perfect_fit": "an exact fit in area, so no p-value",
                    "constant_metric": "the metric is constant, nothing to test"}.get(
            reason, "the size model could not be estimated"))
    if sc.get("area_model") in ("linear_few_images", "linear_few_areas"):
        out.append("linear in area (too few "
                   + ("images" if sc["area_model"] == "linear_few_images" else "distinct areas")
                   + " for a spline)")
    if sc.get("pooled_over_targets"):
        out.append("pooled over the explained classes, mixing lesion type with the class "
                   "each heatmap explains")
    if sc.get("per_image"):
        out.append(f"SEs, tests and TOST treat images of one {sc.get('cluster_name') or 'group'}"
                   " as independent")
    if miss:
        p_obs, p_imp = miss["observed"]["p_value"], miss["at_chance"]["p_value"]
        if is_number(p_obs) and is_number(p_imp) and (p_obs < alpha) != (p_imp < alpha):
            n = miss["n_imputed_benign"] + miss["n_imputed_malignant"]
            out.append(f"scoring its {n} undefined heatmaps at chance moves the class "
                       f"comparison across p = {alpha:g}")
    return out


def confound_line(sc: dict[str, Any]) -> str:
    """A size-confound result in one line: adjusted gap with CI, verdict and caveats (``""``
    without a verdict)."""
    if not sc.get("verdict"):
        return ""
    lo, hi = (sc.get("class_ci_adjusted") or [None, None])[:2]
    caveats = "; ".join(confound_caveats(sc))
    return (f"Malignant minus benign mean {sc.get('metric', 'leakage')} adjusted for lesion "
            f"area {ci_cell(sc.get('class_coef_adjusted'), lo, hi, 3, sign=True)}: "
            f"{sc['verdict']}" + (f" ({caveats})" if caveats else "") + ".")


def artifacts_table(rows: list[dict[str, Any]] | None, names: dict[str, str] | None = None
                    ) -> Table | None:
    if not (rows := [r for r in rows or [] if r.get("n", 0) >= 2]):
        return None
    t = Table("Heatmap mass on artifacts relative to their area (1 = uniform), on images "
              "that carry them", ["model", "CAM", "artifact", "n", "ratio [95 % CI]",
                                  "attends"], numeric_from=3)
    for r in rows:
        t.add(_n(names, r["model"]), method_at(r["method"], r["layer"]), r["artifact"], r["n"],
              ci_cell(r["ratio"], r["ratio_ci_low"], r["ratio_ci_high"]),
              "yes" if r.get("attends") else "no")
    return t


def summary_subgroup_tables(subgroups: dict[str, Any] | None, titles: dict[str, str],
                            label, what: str) -> list[Table]:
    """One table per ``--by`` column and entry of an attention or probe summary."""
    from dermcam.subgroups import summary_table

    out = []
    for col, analysis in (subgroups or {}).items():
        for entry in analysis["entries"]:
            rows = summary_table(analysis, entry, list(titles), list(titles.values()))
            out.append(Table(f"{what}, {label(entry)}, by {col} ({analysis['binning']}): "
                             "mean [95 % CI]", rows[0], rows[1:],
                             kruskal_note(analysis, entry, titles)))
    return out


def attention_sections(summary: dict[str, Any], names: dict[str, str] | None = None
                       ) -> list[Table]:
    """Every attention table of one ``attention_summary.json``."""
    from dermcam.stages.explain import SUBGROUP_TITLES

    chosen = chosen_layers(summary)
    return [t for t in (attention_table(summary, names),
                        localisation_table(summary.get("localisation") or [], chosen, names),
                        artifacts_table(summary.get("artifacts"), names)) if t] + \
        summary_subgroup_tables(summary.get("subgroups"), SUBGROUP_TITLES,
                                lambda e: f"{_n(names, e['model'])} {e['method']}",
                                "attention")


def probe_sections(summary: dict[str, Any], names: dict[str, str] | None = None
                   ) -> list[Table]:
    """Every probe table of one ``probe_summary.json``."""
    from dermcam.stages.probe import PROBE_TITLES, SUBGROUP_TITLES

    return [t for t in (probe_table(summary.get("entries") or [], names),
                        presence_table(summary.get("artifact_presence"), names)) if t] + \
        summary_subgroup_tables(
            summary.get("subgroups"), SUBGROUP_TITLES,
            lambda e: " ".join(filter(None, [_n(names, e["model"]), e.get("artifact"),
                                             PROBE_TITLES.get(e["probe"], e["probe"])])),
            "probe")


# ----------------------------------------------------------------- probes


def probe_table(entries: list[dict[str, Any]], names: dict[str, str] | None = None
                ) -> Table | None:
    from dermcam.stages.probe import CAVEAT, PROBE_TITLES

    if not entries:
        return None
    t = Table("Probes: change in P(malignant), mean [95 % CI]",
              ["model", "probe", "n", "ΔP(malignant)", "benign→malignant",
               "malignant→benign", "ROC AUC after", "ROC AUC intact"], numeric_from=2,
              note="Artifacts are the synthetic generator's painters: they test a model's "
                   "reaction to the painted look, not to real artifacts. " + CAVEAT)
    for e in entries:
        what = PROBE_TITLES[e["probe"]]
        t.add(_n(names, e["model"]), f"{e['artifact']} {what}" if e.get("artifact") else what,
              e["n"], ci_cell(e["delta_mean"], e["delta_ci_low"], e["delta_ci_high"], 3, sign=True),
              fmt_pct(e["flip_to_malignant"], 0), fmt_pct(e["flip_to_benign"], 0),
              ci_cell(e["auc"], e.get("auc_ci_low"), e.get("auc_ci_high"), 3) if "auc" in e else "",
              fmt_num(e.get("auc_intact"), 3) if "auc" in e else "")
    return t


def presence_table(rows: list[dict[str, Any]] | None, names: dict[str, str] | None = None
                   ) -> Table | None:
    """Lesion and background removal on images with vs without each labelled artifact."""
    from dermcam.stages.probe import PROBE_TITLES

    if not rows:
        return None
    t = Table("Removal probes with | without each labelled artifact: ΔP(malignant)",
              ["model", "probe", "artifact", "n with", "Δ with", "n without", "Δ without",
               "differs p (Holm)"], numeric_from=3,
              note="Two-sided Mann-Whitney of the per-image change; p >= 0.05 is "
                   "inconclusive.")
    for r in rows:
        t.add(_n(names, r["model"]), PROBE_TITLES.get(r["probe"], r["probe"]), r["artifact"],
              *(x for g in (r["with"], r["without"]) for x in (g["n"], ci_cell(
                  g.get("delta_mean"), g.get("delta_ci_low"), g.get("delta_ci_high"), 3, True))),
              fmt_num(r.get("delta_p_adjusted", r.get("delta_p")), 3))
    return t


def shortcut_table(exp: dict[str, Any], names: dict[str, str] | None = None) -> Table:
    """The planted-shortcut model beside its control."""
    art = exp.get("artifact", "artifact")
    t = Table(f"Planted shortcut: {exp['model']} with {art}s tied to malignancy in training "
              f"only, beside its control ({method_at(exp.get('method', ''), '')} maps)",
              ["model", "layer", f"n with a {art}", "mass / area [95 % CI]", "flagged",
               f"ΔP(malignant), {art} pasted", "test ROC AUC"], numeric_from=2,
              note=f"Mass / area: heatmap mass on the {art} over its area share (1 = uniform). "
                   "Test images have the artifact independent of the label.")
    for role in ("control", "shortcut"):
        r = exp["runs"][role]
        pr = r.get("probe") or {}
        t.add(f"{_n(names, exp['model'])} ({role})", r.get("layer"), r.get("n"),
              ci_cell(r.get("ratio"), r.get("ratio_ci_low"), r.get("ratio_ci_high")),
              "yes" if r.get("flagged") else "no",
              ci_cell(pr.get("insert_delta"), pr.get("insert_ci_low"), pr.get("insert_ci_high"),
                      3, True),
              ci_cell(r.get("test_auc"), r.get("test_auc_ci_low"), r.get("test_auc_ci_high"), 3))
    return t


# ----------------------------------------------------------------- findings


def findings_lines(findings, names: dict[str, str], topics: tuple[str, ...] = ()
                   ) -> list[tuple[str, str, str]]:
    """The findings on ``topics`` (prefixes; all when empty) as ``(model name, status, text)``:
    per model, one line per topic that is not ok, then one ``ok`` line with what is fine."""
    found = [f for f in findings if not topics or f.topic.startswith(topics)]
    out = []
    for model in dict.fromkeys(f.model for f in found):
        out += [(names[model], f.status, f"{f.topic}: {f.sentence}") for f in found
                if f.model == model and f.status != "ok"]
        if fine := fine_line(found, model):
            out.append((names[model], "ok", fine))
    return out


# ----------------------------------------------------------------- the command line's own


def dataset_tables(d: dict[str, Any], root: str | Path) -> list[Table]:
    """What :func:`dermcam.data.describe.describe` found: counts per split and class and,
    where the metadata records artifacts, the share of images carrying each."""
    t = Table(f"{d['name']} ({d['layout']} layout) — {root}",
              ["split", "images", "benign", "malignant", "malignant %", "with mask",
               "mean lesion area"],
              note=f"image sizes (sampled): {d['image_sizes']}" if d.get("image_sizes") else "")
    for split, s in d["splits"].items():
        t.add(split, s["n"], s["benign"], s["malignant"],
              f"{100 * s['malignant'] / max(s['n'], 1):.1f}", s["with_mask"],
              fmt_num(s.get("mean_lesion_area"), 3, missing="-"))
    if not (arts := d.get("artifacts")):
        return [t]
    cols = list(next(iter(arts.values())))
    a = Table("background artifacts: share of images carrying each", ["artifact", *cols])
    for art, rates in arts.items():
        a.add(art, *(f"{100 * rates[c]:.0f} %" for c in cols))
    return [t, a]


def dataset_lines(d: dict[str, Any]) -> list[str]:
    """The comparison with the published counts, then the layout's notes."""
    official = [d["official_check"]] if d.get("official_check") else []
    return official + [f"note: {n}" for n in d.get("notes", [])]


def problem_lines(report, shown: int = 10) -> list[str]:
    """A data check's problems, one line each: every error, then at most ``shown`` warnings
    of each kind (the same message but for its numbers) and a count of the rest, then the
    summary line."""
    import re

    lines = [f"error: {p}" for p in report.errors]
    kinds: dict[str, list] = {}
    for p in report.warnings:
        kinds.setdefault(re.sub(r"\d+", "#", p.message), []).append(p)
    for group in kinds.values():
        lines += [f"warning: {p}" for p in group[:shown]]
        if len(group) > shown:
            lines.append(f"warning: ... and {len(group) - shown} more like the above")
    return [*lines, report.summary()]


def models_table(image_size: int, rows: list[dict[str, Any]]) -> Table:
    """The architectures dermcam knows; ``rows``: name, display_name, cam_layer, grid (layer
    -> (h, w)) and weights (None when ImageNet weights are cached, else their path)."""
    t = Table(f"models at {image_size} px input (any other torchvision classifier also "
              "works by name)", ["name", "architecture", "study's CAM layer",
                                 "candidate layers (h x w)", "ImageNet weights"],
              numeric_from=99)
    for r in rows:
        t.add(r["name"], r["display_name"], r["cam_layer"],
              ", ".join(f"{ly} ({h}x{w})" for ly, (h, w) in r["grid"].items()),
              "cached" if r["weights"] is None else f"not cached ({r['weights']})")
    return t


def predictions_table(table, shown: int = 20) -> Table:
    """The first ``shown`` rows of :func:`dermcam.predict.predict`'s table (a DataFrame)."""
    cols = ["image_id", "prob_malignant", "decision"] + (
        ["leakage", "pixel_auroc"] if "leakage" in table else [])
    t = Table(f"predictions (threshold {table['threshold'].iloc[0]:.3f})", cols,
              numeric_from=99,
              note=f"first {shown} of {len(table)} shown" if len(table) > shown else "")
    for r in table.head(shown).to_dict(orient="records"):
        t.add(*(fmt_num(r[c], 3, missing="-") if isinstance(r[c], float) else r[c]
                for c in cols))
    return t


def labels_line(info: dict[str, Any]) -> str:
    """The line on artifact labels joined to a data set (``metrics.json["artifact_labels"]``)."""
    text = f"artifact labels from {Path(info['file']).name}"
    if "n_matched" in info:
        text += (f": {info['n_matched']} of {info['n_images']} images "
                 f"({', '.join(info.get('artifacts') or [])})")
        if info.get("n_unknown"):
            text += f"; {info['n_unknown']} id(s) in the file are not in the data set"
    return text


def external_line(ext: dict[str, Any]) -> str:
    """The external set a stage audited (its summary's ``external`` block), in one line."""
    told = [ext[k] for k in ("images", "thresholds") if ext.get(k)]
    told += [f"layers {ext['layers']}"] if ext.get("layers") else []
    return f"external set {ext['name']} ({ext['data']}, {ext['layout']} layout): " + "; ".join(told)


# ----------------------------------------------------------------- a run folder


def _maybe(path: Path) -> Any:
    try:
        return read_json(path) if path.exists() else None
    except Exception:  # an unreadable file shows as missing; the report says which
        return None


def _probes(path: Path) -> Any:
    """A probe summary, an older plain list of entries as ``{"entries": ...}``."""
    probes = _maybe(path)
    return {"entries": probes} if isinstance(probes, list) else probes


def chosen_layers(summary: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    return {c["model"]: (c["method"], c["layer"])
            for c in (summary or {}).get("layer_choice") or []}


def run_sections(run_dir: str | Path) -> dict[str, list[Table]]:
    """Every detail table of a run folder, by report section (:data:`SECTIONS`)."""
    run = runmod.Run.open(run_dir)
    out = runmod.Outputs(run.dir)
    metrics, summary = _maybe(out.metrics), _maybe(out.attention_summary)
    probes = _probes(out.probe_summary)
    chosen = chosen_layers(summary)
    names = dict(run.display_names)
    sec: dict[str, list[Table]] = {k: [] for k, _ in SECTIONS}
    sec["training"] += [t for t in (training_table(run.model_records, chosen),
                                    imported_table(run.model_records, chosen)) if t.rows]
    if metrics:
        sec["comparison"] += metrics_tables(metrics)
        sec["subgroups"] += subgroup_tables(metrics)
    ext_dir = run.dir / runmod.EXTERNAL_DIR
    folders = sorted(ext_dir.iterdir()) if ext_dir.is_dir() else []
    externals = sorted((p.name, m) for p in folders if (m := _maybe(p / runmod.METRICS)))
    if t := external_table(metrics, externals, names):
        sec["external"].append(t)
    for folder in folders:
        es, ep = _maybe(folder / runmod.ATTENTION_SUMMARY), _probes(folder / runmod.PROBE_SUMMARY)
        for t in ((attention_sections(es, names) if isinstance(es, dict) else [])
                  + (probe_sections(ep, names) if isinstance(ep, dict) else [])):
            t.title = f"{folder.name}: {t.title}"
            sec["external"].append(t)
    if summary:
        sec["attention"] += attention_sections(summary, names)
    if probes:
        sec["probe"] += probe_sections(probes, names)
    exp = _maybe(run.dir / runmod.SHORTCUT_EXPERIMENT)
    if isinstance(exp, dict) and "runs" in exp:
        sec["shortcut"].append(shortcut_table(exp, names))
    return sec


def run_facts(run: runmod.Run) -> tuple[list[tuple[str, Any]], Table]:
    """What a run's manifest records: ``(facts, stages)``, the facts as ``(label, value)``
    pairs ("not recorded" where absent) and a table of its stages."""
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
    return facts, stages
