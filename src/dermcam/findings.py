"""Findings: one model's answer to one question (``topic``), with a status, one sentence, the
number it rests on (value, 95 % CI, n), the summary file and JSON pointer it was read from and
the report's anchor. Built only from the summaries the stages wrote; the terminal, the report
and ``RUN/findings.json`` show the same objects. Rules: :data:`RULES` and docs/findings.md; a
stage that has not run gives ``not_run``, never ``ok``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dermcam import run as runmod
from dermcam.errors import DermcamError
from dermcam.formatting import fmt_ci, fmt_num, fmt_p, fmt_pct, is_number
from dermcam.io import read_json, write_json

__all__ = ["RULES", "Finding", "display_names", "STATUSES", "TOPICS", "MARGIN", "FINDINGS",
           "build_findings", "write_findings", "read_findings", "fine_line", "status_counts"]

FINDINGS = runmod.FINDINGS
SHORTCUT = runmod.SHORTCUT_EXPERIMENT
STATUSES = ("alarm", "caution", "ok", "not_run")
#: The core topics, in the order they are told; each model gets one finding for each.
TOPICS = ("discrimination", "calibration", "where it looks", "size confound",
          "lesion reliance", "context")
#: The probes' negligible change in P(malignant) (``dermcam.config.NEGLIGIBLE_DELTA``).
MARGIN = 0.02
#: A change within the margin reads as negligible only where P(malignant) on the test images
#: spans at least this many margins (5th to 95th percentile): a flat output cannot move much.
SPREAD_MARGINS = 5
ECE_OK, ECE_ALARM = 0.05, 0.15
MAX_UNDEFINED = 0.05
SCHEMA_VERSION = 1

#: The rule behind each topic's status, in words (one source: the report shows these).
RULES = {
    "discrimination, external": "alarm when the test ROC AUC's 95 % CI reaches 0.5 (no "
                                "better than chance), else ok.",
    "calibration": f"ok for ECE <= {ECE_OK}, caution up to {ECE_ALARM}, alarm above.",
    "where it looks": "caution when the maps do not beat uniform attention (median pixel "
                      "AUROC CI reaches 0.5), the sanity check did not pass, or more than "
                      f"{MAX_UNDEFINED:.0%} of maps are undefined; else ok. Maps that do not "
                      "beat uniform attention are never ok.",
    "size confound": "not run unless the maps beat uniform attention; ok when the "
                     "malignant-minus-benign leakage gap remains after a spline in lesion "
                     "area, caution when area explains it or the test is inconclusive.",
    "lesion reliance": "caution when the ROC AUC with the lesion inpainted away stays above "
                       "chance (CI above 0.5), else ok.",
    "context": "caution when replacing the surroundings moves P(malignant) beyond the margin "
               "or the CI crosses it; ok when the CI lies within it.",
    "artifact": "with the context swap (real pixels, lesion kept, donors matched) it "
                "decides: alarm when real surroundings with the artifact move P(malignant) "
                "beyond the margin, caution when inconclusive or when other evidence (the "
                "painted probe, the maps, benign lesions called malignant more often with the "
                "artifact, or less often: a false-positive gap whose 95 % CI excludes 0) says "
                "reliance while the swap is negligible, else ok; the sentence says which "
                "evidence agrees (in direction) and which does not. "
                "Without it: alarm when two of painted probe, maps and gap say reliance, "
                "caution for one or an inconclusive probe, ok for none.",
    "marked regions": "caution when the off-lesion regions a model's heatmaps mark move "
                      "P(malignant), removed or transplanted, beyond the margin (vs random "
                      "regions of the same shapes) or inconclusively; else ok.",
    "subgroups": "caution when the ROC AUC differs across a column's groups (Cochran's Q, "
                 "Holm p < 0.05), else ok (no difference detected is not proof of none).",
    "shortcut": "the shortcut-trained model is an alarm when its maps attend to the planted "
                "artifact or its probe reacts beyond the control's by more than the margin; "
                "the control is ok unless its maps attend to it.",
    "output range": "caution, and every probe's CI within the margin inconclusive (not "
                    "negligible), when the model's P(malignant) on the test images spans "
                    f"less than {SPREAD_MARGINS} margins between its 5th and 95th percentiles.",
    "not run": "the stage has not produced the result; an absent result is never ok.",
}


@dataclass(frozen=True)
class Finding:
    """One model's answer to one question."""

    model: str
    topic: str
    status: str
    sentence: str
    value: float | None = None
    ci: tuple[float, float] | None = None
    n: int | None = None
    source: str = ""  # "FILE#/json/pointer" of ``value``
    anchor: str = ""  # the report section holding the detail

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci) if self.ci is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        ci = d.get("ci")
        return cls(**{**d, "ci": tuple(ci) if ci is not None else None})


def _pointer(*parts: Any) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _ci2(lo: Any, hi: Any) -> tuple[float, float] | None:
    return (float(lo), float(hi)) if is_number(lo) and is_number(hi) else None


def _v(x: Any) -> float | None:
    return float(x) if is_number(x) else None


def _found(model: str, topic: str, status: str, sentence: str, value: Any, lo: Any, hi: Any,
           n: Any, source: str, anchor: str) -> Finding:
    """A :class:`Finding` whose value and CI are read as numbers (None where they are not)."""
    return Finding(model, topic, status, sentence, _v(value), _ci2(lo, hi), n, source, anchor)


def _probe_verdict(lo: Any, hi: Any, margin: float = MARGIN, narrow: bool = False) -> str:
    """``reliance`` when the CI lies beyond +-margin, ``negligible`` within it (unless the
    output is ``narrow``: :func:`output_range`), else (or undefined) ``inconclusive``."""
    defined = is_number(lo) and is_number(hi)
    if defined and (lo > margin or hi < -margin):
        return "reliance"
    within = defined and -margin <= lo and hi <= margin
    return "negligible" if within and not narrow else "inconclusive"


def output_range(model: str, entry: dict[str, Any] | None, n: int | None, source: str,
                 margin: float = MARGIN) -> Finding | None:
    """A caution where ``metrics.json``'s ``prob_range`` spans less than
    :data:`SPREAD_MARGINS` margins (no probe then reads as negligible); else None."""
    r = (entry or {}).get("prob_range") or {}
    lo, hi = r.get("p05"), r.get("p95")
    if not (is_number(lo) and is_number(hi)) or hi - lo + 1e-9 >= SPREAD_MARGINS * margin:
        return None
    return Finding(model, "output range", "caution",
                   f"Its P(malignant) barely varies: {fmt_num(lo, 3)} to {fmt_num(hi, 3)} "
                   f"on 90 % of the test images (n = {n}), so a probe's change within "
                   f"±{margin:g} is inconclusive, not negligible.", None, None, n, source,
                   "comparison")


#: What a probe's sentence says where :func:`output_range` made its CI inconclusive.
NARROW = "within the margin, but its output barely varies (output range)"


def _narrowed(lo: Any, hi: Any, margin: float, narrow: bool) -> str:
    return f"; {NARROW}" if narrow and _probe_verdict(lo, hi, margin) == "negligible" else ""


def _not_run(model: str, topic: str, why: str, anchor: str = "") -> Finding:
    return Finding(model, topic, "not_run", why, anchor=anchor)


def _delta(e: dict[str, Any]) -> str:
    """A probe entry's change with its CI, signed, 3 decimals."""
    return fmt_ci(e["delta_mean"], e.get("delta_ci_low"), e.get("delta_ci_high"), 3, sign=True)


# ----------------------------------------------------------------- rules (pure)


def discrimination(model: str, entry: dict[str, Any] | None, n: int | None,
                   n_malignant: int | None, source: str,
                   topic: str = "discrimination", anchor: str = "comparison",
                   rule: str | None = None) -> Finding:
    """From ``threshold_free.roc_auc``; ``rule``: how an audited model's threshold was set."""
    auc = ((entry or {}).get("threshold_free") or {}).get("roc_auc") or {}
    if not is_number(auc.get("value")):
        return _not_run(model, topic, "no test ROC AUC: run 'dermcam evaluate'", anchor)
    at = (entry or {}).get("at_threshold") or {}
    lo, hi = auc.get("lo"), auc.get("hi")
    chance = _ci2(lo, hi) is None or lo <= 0.5
    head = f"ROC AUC {fmt_ci(auc['value'], lo, hi, 3)}, n = {n}" + (
        f" ({n_malignant} malignant)" if n_malignant is not None else "")
    sens, spec = ((at.get(k) or {}).get("value") for k in ("sensitivity", "specificity"))
    sentence = f"No better than chance: {head}." if chance else (
        f"{head}; sensitivity {fmt_num(sens, 2)}, specificity {fmt_num(spec, 2)} "
        f"at its threshold{f' ({rule})' if rule else ''}.")
    return _found(model, topic, "alarm" if chance else "ok", sentence, auc["value"], lo, hi, n,
                  source, anchor)


#: How an audited model was calibrated, as the calibration finding says it.
_CALIBRATED = {"platt": "after Platt scaling fitted on validation",
               "temperature": "after temperature scaling fitted on validation",
               "none": "as the model outputs it, uncalibrated"}


def calibration(model: str, entry: dict[str, Any] | None, n: int | None,
                source: str, method: str | None = None) -> Finding:
    """From ``threshold_free.ece``; ``method``: an audited model's, named in the sentence."""
    ece = ((entry or {}).get("threshold_free") or {}).get("ece") or {}
    v, lo, hi = ece.get("value"), ece.get("lo"), ece.get("hi")
    if not is_number(v):
        return _not_run(model, "calibration", "no ECE: run 'dermcam evaluate'", "comparison")
    status = "ok" if v <= ECE_OK else "caution" if v <= ECE_ALARM else "alarm"
    word = {"ok": "Well calibrated", "caution": "Somewhat miscalibrated",
            "alarm": "Miscalibrated"}[status]
    return _found(model, "calibration", status,
                  f"{word}: expected calibration error {fmt_ci(v, lo, hi, 3)}, n = {n}"
                  + (f" ({_CALIBRATED[method]})." if method else "."), v, lo, hi, n, source,
                  "comparison")


def where_it_looks(model: str, test: dict[str, Any] | None, undefined_share: float | None,
                   source: str) -> Finding:
    """From ``attention_summary.json`` ``tests[model/method]`` (uniform guard, sanity)."""
    guard = (test or {}).get("uniform_guard") or {}
    med = guard.get("median_pixel_auroc")
    if not is_number(med):
        return _not_run(model, "where it looks", "no heatmaps scored against lesion masks: "
                        "run 'dermcam explain' on a data set with masks", "attention")
    lo, hi = (guard.get("pixel_auroc_ci") or [None, None])[:2]
    where = f"{test.get('method', '')} at {test.get('layer', '')}".strip()
    num = f"median pixel AUROC {fmt_ci(med, lo, hi, 2)}, n = {guard.get('n')}, {where}"
    san = test.get("sanity") or {}
    san = san.get("full") if isinstance(san.get("full"), dict) else san
    verdict = san.get("verdict") if isinstance(san, dict) else None
    problems = [] if guard.get("better_than_uniform") else ["maps no better than uniform attention"]
    if verdict and verdict != "passed":
        problems.append(f"sanity check {verdict}")
    if is_number(undefined_share) and undefined_share > MAX_UNDEFINED:
        problems.append(f"{fmt_pct(undefined_share, 0)} of maps undefined")
    sentence = (f"Heatmaps not to be read: {'; '.join(problems)} ({num})." if problems else
                f"Looks at the lesion: {num}" + ("; sanity check passed." if verdict else "."))
    return _found(model, "where it looks", "caution" if problems else "ok", sentence, med, lo,
                  hi, guard.get("n"), source, "attention")


#: The size-confound verdict's status and sentence head (None: inconclusive).
_CONFOUND_HEADS = {
    "remains": ("ok", "Malignant-minus-benign leakage gap remains after adjusting for area"),
    "explained by size": ("caution", "Leakage gap between classes is explained by lesion size"),
    None: ("caution", "Leakage gap after adjusting for area is inconclusive")}


def size_confound(model: str, test: dict[str, Any] | None, source: str) -> Finding:
    """Benign vs malignant leakage after adjusting for lesion area (``size_confound``); only
    read when the maps beat uniform attention."""
    test = test or {}
    sc = test.get("size_confound") or {}
    if not sc or not is_number(sc.get("class_coef_adjusted")):
        return _not_run(model, "size confound", "no size-confound test: run 'dermcam explain'",
                        "attention")
    if not (test.get("uniform_guard") or {}).get("better_than_uniform"):
        return _not_run(model, "size confound", "Not interpreted: the maps do not beat uniform "
                        "attention, so their leakage says nothing about the classes.",
                        "attention")
    v, (lo, hi) = sc["class_coef_adjusted"], (sc.get("class_ci_adjusted") or [None, None])[:2]
    status, head = _CONFOUND_HEADS.get(sc.get("verdict"), _CONFOUND_HEADS[None])
    return _found(model, "size confound", status,
                  f"{head}: {fmt_ci(v, lo, hi, 3, sign=True)} (area explains "
                  f"{fmt_pct(sc.get('share_explained'), 0)} of it), n = {sc.get('n')}.", v, lo,
                  hi, sc.get("n"), source, "attention")


def lesion_reliance(model: str, entry: dict[str, Any] | None, source: str) -> Finding:
    """From the ``lesion_removed`` probe entry: ROC AUC with the lesion inpainted away."""
    if not entry or not is_number(entry.get("auc")):
        return _not_run(model, "lesion reliance", "lesion-removed probe not run: run "
                        "'dermcam probe'", "probe")
    lo, hi, n = entry.get("auc_ci_low"), entry.get("auc_ci_high"), entry.get("n")
    if not (is_number(lo) and is_number(hi)):
        return _found(model, "lesion reliance", "caution", "Lesion reliance inconclusive: "
                      f"ROC AUC {fmt_num(entry['auc'], 2)} with the lesion removed has no CI, "
                      f"n = {n}.", entry["auc"], None, None, n, source, "probe")
    auc, intact = fmt_ci(entry["auc"], lo, hi, 2), fmt_num(entry.get("auc_intact"), 2)
    sentence = (f"Still classifies with the lesion removed: ROC AUC {auc} (intact {intact}), "
                f"n = {n}." if lo > 0.5 else f"Relies on the lesion: ROC AUC falls from "
                f"{intact} to {auc} with it removed, n = {n}.")
    return _found(model, "lesion reliance", "caution" if lo > 0.5 else "ok", sentence,
                  entry["auc"], lo, hi, n, source, "probe")


def context(model: str, entry: dict[str, Any] | None, source: str,
            margin: float = MARGIN, narrow: bool = False) -> Finding:
    """From the ``background_removed`` probe entry: change in P(malignant)."""
    if not entry or not is_number(entry.get("delta_mean")):
        return _not_run(model, "context", "background-removed probe not run: run "
                        "'dermcam probe'", "probe")
    lo, hi = entry.get("delta_ci_low"), entry.get("delta_ci_high")
    verdict = _probe_verdict(lo, hi, margin, narrow)
    text = {"reliance": "Depends on the surroundings",
            "negligible": "Surroundings barely matter",
            "inconclusive": "Reliance on the surroundings is inconclusive"}[verdict]
    return _found(model, "context", "ok" if verdict == "negligible" else "caution",
                  f"{text}: replacing them changes P(malignant) by {_delta(entry)} (margin "
                  f"±{margin:g}), n = {entry.get('n')}{_narrowed(lo, hi, margin, narrow)}.",
                  entry["delta_mean"], lo, hi, entry.get("n"), source, "probe")


def artifact_gap(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """Benign lesions called malignant with minus without the artifact, from one model's
    ``artifact_<name>`` subgroup result (groups ``"1"``, ``"0"``): false-positive rates,
    their difference with its 95 % CI (Newcombe, statsmodels), n benign."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    groups = {str(g.get("group")): g for g in (result or {}).get("groups") or []}
    g1, g0 = groups.get("1"), groups.get("0")
    if not (g1 and g0):
        return None
    spec1, spec0 = (g.get("specificity") or {} for g in (g1, g0))
    n1, n0 = int(g1.get("n_benign") or 0), int(g0.get("n_benign") or 0)
    if not (n1 and n0 and is_number(spec1.get("value")) and is_number(spec0.get("value"))):
        return None
    fp1, fp0 = round((1 - spec1["value"]) * n1), round((1 - spec0["value"]) * n0)
    lo, hi = confint_proportions_2indep(fp1, n1, fp0, n0, method="newcomb")
    return {"fpr_with": fp1 / n1, "fpr_without": fp0 / n0, "diff": fp1 / n1 - fp0 / n0,
            "ci": (float(lo), float(hi)), "n_with": n1, "n_without": n0}


def _sign(x: float) -> int:
    return int(x > 0) - int(x < 0)


def _gap_direction(gap: dict[str, Any]) -> int:
    """+1 (-1) when more (fewer) benign lesions are called malignant with the artifact, the
    CI excluding 0; else 0."""
    return int(gap["ci"][0] > 0) - int(gap["ci"][1] < 0)


def _gap_text(gap: dict[str, Any]) -> str:
    return (f"benign lesions called malignant {fmt_num(gap['fpr_with'], 2)} with it vs "
            f"{fmt_num(gap['fpr_without'], 2)} without "
            f"({fmt_ci(gap['diff'], *gap['ci'], 2, sign=True)}, n = "
            f"{gap['n_with']}/{gap['n_without']})")


def artifact(model: str, name: str, inserted: dict[str, Any] | None,
             attention: dict[str, Any] | None, probe_source: str, attention_source: str,
             margin: float = MARGIN, swap: dict[str, Any] | None = None,
             swap_source: str = "", gap: dict[str, Any] | None = None,
             narrow: bool = False) -> Finding:
    """One artifact's evidence combined: the real-pixel context swap decides where it ran,
    else the painted insertion probe, the maps' mass on it and the false-positive gap."""
    topic = f"artifact: {name}"
    if swap and is_number(swap.get("delta_mean")):
        return _artifact_by_swap(model, name, swap, inserted, attention, swap_source, margin,
                                 gap, narrow)
    parts, evidence, inconclusive = [], 0, False
    value, ci, n, source = None, None, None, ""
    if inserted and is_number(inserted.get("delta_mean")):
        lo, hi = inserted.get("delta_ci_low"), inserted.get("delta_ci_high")
        verdict = _probe_verdict(lo, hi, margin, narrow)
        evidence += verdict == "reliance"
        inconclusive = verdict == "inconclusive"
        value, ci, n, source = _v(inserted["delta_mean"]), _ci2(lo, hi), inserted.get("n"), \
            probe_source
        parts.append(f"painted in, it moves P(malignant) {_delta(inserted)} (n = {n})"
                     f"{_narrowed(lo, hi, margin, narrow)}")
    if attention and is_number(attention.get("ratio")):
        evidence += bool(attention.get("attends"))
        lo, hi = attention.get("ratio_ci_low"), attention.get("ratio_ci_high")
        parts.append(f"maps give it {fmt_ci(attention['ratio'], lo, hi, 2)}x its area share "
                     f"(n = {attention.get('n')})")
        if value is None:
            value, n, source = _v(attention["ratio"]), attention.get("n"), attention_source
            ci = _ci2(lo, hi)
    if gap:
        evidence += _gap_direction(gap) != 0
        parts.append(_gap_text(gap))
    if not parts:
        return _not_run(model, topic, f"no {name} probe or attention evidence", "probe")
    status, head = (("alarm", f"Relies on the {name}") if evidence >= 2 else
                    ("caution", f"May rely on the {name}") if evidence == 1 or inconclusive else
                    ("ok", f"Ignores the {name}"))
    return Finding(model, topic, status, f"{head}: {'; '.join(parts)}.", value, ci, n, source,
                   "probe")


def _artifact_by_swap(model: str, name: str, swap: dict[str, Any],
                      inserted: dict[str, Any] | None, attention: dict[str, Any] | None,
                      source: str, margin: float, gap: dict[str, Any] | None = None,
                      narrow: bool = False) -> Finding:
    """The real-pixel verdict decides; the other evidence is said to agree or not (the
    painted artifact tests the painter's look, the swap the real artifact)."""
    lo, hi = swap.get("delta_ci_low"), swap.get("delta_ci_high")
    verdict = _probe_verdict(lo, hi, margin, narrow)
    # each line of evidence as a direction: +1 towards malignant, -1 towards benign, 0 none
    direction = _sign(swap["delta_mean"]) if verdict == "reliance" else 0
    agree, disagree = [], []
    if inserted and is_number(inserted.get("delta_mean")):
        says = _probe_verdict(inserted.get("delta_ci_low"), inserted.get("delta_ci_high"),
                              margin) == "reliance"
        (agree if says * _sign(inserted["delta_mean"]) == direction else disagree).append(
            f"painted {name} {fmt_num(inserted['delta_mean'], 3, sign=True)}")
    if attention and is_number(attention.get("ratio")):
        (agree if bool(attention.get("attends")) == (direction != 0) else
         disagree).append(f"maps {fmt_num(attention['ratio'], 2)}x its area")
    if gap:
        (agree if _gap_direction(gap) == direction else disagree).append(_gap_text(gap))
    carry = f", {swap['images_with']} carry it" if swap.get("images_with") else ""
    text = (f"surroundings with real {name} move P(malignant) {_delta(swap)} vs without "
            f"(n = {swap.get('n')}{carry}; control "
            f"{fmt_num(swap.get('control_mean'), 3, sign=True)})"
            f"{_narrowed(lo, hi, margin, narrow)}")
    status, head = (
        ("alarm", f"Relies on the {name}") if verdict == "reliance" else
        ("caution", f"Reliance on the {name} inconclusive") if verdict == "inconclusive" else
        ("caution", f"Negligible reaction to real {name} in the surroundings; other evidence "
                    "does not agree") if disagree else ("ok", f"Ignores the {name}"))
    text += f"; agrees: {', '.join(agree)}" if agree else ""
    text += f"; disagrees: {', '.join(disagree)} (the real-pixel swap decides)" if disagree else ""
    return _found(model, f"artifact: {name}", status, f"{head}: {text}.", swap["delta_mean"], lo,
                  hi, swap.get("n"), source, "probe")


def marked_regions(model: str, removed: dict[str, Any] | None,
                   pasted: dict[str, Any] | None, source: str,
                   margin: float = MARGIN, narrow: bool = False) -> Finding | None:
    """From the ``hot_removed`` / ``hot_transplanted`` entries: does the model use what its
    maps mark off the lesion? None when the (optional) probe did not run; the sentence names
    an artifact whose images give the regions more often than its share."""
    if not (pasted and is_number(pasted.get("delta_mean"))):
        return None
    done = [e for e in (removed, pasted) if e and is_number(e.get("delta_mean"))]
    verdicts = [_probe_verdict(e.get("delta_ci_low"), e.get("delta_ci_high"), margin, narrow)
                for e in done]
    text = (f"off-lesion regions its maps mark, pasted into other images, move P(malignant) "
            f"{_delta(pasted)} vs random regions")
    if removed and is_number(removed.get("delta_mean")):
        text += ", removed " + _delta(removed)
    text += f" (n = {pasted.get('n')})"
    if any(_narrowed(e.get("delta_ci_low"), e.get("delta_ci_high"), margin, narrow)
           for e in done):
        text += f"; {NARROW}"
    over = sorted(((v["share"] - v["share_all"], a, v) for a, v in
                   (pasted.get("sources") or {}).items()
                   if is_number(v.get("share")) and v["share"] - v["share_all"] >= 0.1),
                  reverse=True)
    if over:
        _, a, v = over[0]
        text += (f"; {fmt_pct(v['share'], 0)} come from images with {a} "
                 f"(vs {fmt_pct(v['share_all'], 0)})")
    status, head = (
        ("caution", "Uses what its maps mark off the lesion") if "reliance" in verdicts else
        ("caution", "Use of what its maps mark off the lesion inconclusive")
        if "inconclusive" in verdicts else
        ("ok", "What its maps mark off the lesion does not move it"))
    return _found(model, "marked regions", status, f"{head}: {text}.", pasted["delta_mean"],
                  pasted.get("delta_ci_low"), pasted.get("delta_ci_high"), pasted.get("n"),
                  source, "probe")


def subgroups(model: str, column: str, result: dict[str, Any] | None,
              source: str) -> Finding:
    """From ``metrics.json['subgroups'][column]['models'][model]``."""
    topic = f"subgroups: {column}"
    if not result:
        return _not_run(model, topic, f"no subgroups by {column}", "subgroups")
    het = (result.get("heterogeneity") or {}).get("auc") or {}
    groups = [g for g in result.get("groups") or [] if g.get("estimable")]
    if len(groups) < 2:
        return _not_run(model, topic, f"fewer than two {column} groups large enough to "
                        "compare", "subgroups")
    low = min(groups, key=lambda g: (g.get("roc_auc") or {}).get("value", math.inf))
    source = f"{source}/groups/{(result.get('groups') or []).index(low)}/roc_auc/value"
    auc = low.get("roc_auc") or {}
    p = het.get("p_adjusted", het.get("p"))
    differs = is_number(p) and p < 0.05
    where = (f"lowest in {column} = {low.get('group')}: ROC AUC "
             f"{fmt_ci(auc.get('value'), auc.get('lo'), auc.get('hi'), 2)}, n = {low.get('n')}")
    smallest = min(int(g.get("n") or 0) for g in groups)
    sentence = (f"ROC AUC differs across {column} groups (Holm {fmt_p(p, label='p')}); "
                f"{where}." if differs else
                f"No AUC difference detected across {len(groups)} {column} groups "
                f"(Holm {fmt_p(p, label='p')}; smallest n = {smallest}); {where}.")
    return _found(model, topic, "caution" if differs else "ok", sentence, auc.get("value"),
                  auc.get("lo"), auc.get("hi"), low.get("n"), source, "subgroups")


def shortcut(exp: dict[str, Any], role: str) -> Finding:
    """The demo's planted shortcut, for the ``"control"`` or the ``"shortcut"``-trained
    model, from ``shortcut_experiment.json``."""
    r = exp["runs"][role]
    art = exp.get("artifact", "artifact")
    lo, hi = r.get("ratio_ci_low"), r.get("ratio_ci_high")
    ratio = fmt_ci(r.get("ratio"), lo, hi, 2)
    pvc = exp.get("probe_vs_control") or {}
    model = exp["model"] if role == "control" else f"{exp['model']} (shortcut-trained)"
    src = f"{SHORTCUT}#{_pointer('runs', role, 'ratio')}"
    flagged = bool(r.get("flagged"))
    if role == "shortcut":
        probe_more = is_number(pvc.get("ci_low")) and pvc["ci_low"] > pvc.get("margin", MARGIN)
        caught = flagged or probe_more
        extra = (f"; pasted in, it adds "
                 f"{fmt_ci(pvc.get('diff'), pvc.get('ci_low'), pvc.get('ci_high'), 2, sign=True)}"
                 f" vs the control (n = {pvc.get('n')})") if is_number(pvc.get("diff")) else ""
        head = f"Relies on the planted {art}" if caught else f"Planted {art} not detected"
        return _found(model, "shortcut", "alarm" if caught else "caution",
                      f"{head}: maps give it {ratio}x its area share (n = {r['n']}){extra}.",
                      r.get("ratio"), lo, hi, r.get("n"), src, "shortcut")
    return _found(model, "shortcut", "caution" if flagged else "ok",
                  f"Control ({art}s independent of the label): maps give the {art} {ratio}x "
                  f"its area share (n = {r['n']}), {'flagged' if flagged else 'not flagged'}.",
                  r.get("ratio"), lo, hi, r.get("n"), src, "shortcut")


# ----------------------------------------------------------------- a run's findings


def _read(path: Path) -> Any:
    return read_json(path) if path.exists() else None


def build_findings(run_dir: str | Path) -> list[Finding]:
    """Every model's findings from a run folder's summaries: core topics in :data:`TOPICS`
    order, then artifacts, subgroups, external sets and the shortcut."""
    run = runmod.Run.open(run_dir)
    out = runmod.Outputs(run.dir)
    metrics = _read(out.metrics) or {}
    summary = _read(out.attention_summary) or {}
    probes = _read(out.probe_summary)
    entries = (probes.get("entries") if isinstance(probes, dict) else probes) or []
    margin = float(summary.get("equivalence_margin") or MARGIN)
    models = list(run.trained_models) or list(metrics.get("models") or {})
    test = metrics.get("test") or {}
    chosen = {c["model"]: c for c in summary.get("layer_choice") or []}
    idx = {(e["model"], e["probe"], e.get("artifact") or None): i
           for i, e in enumerate(entries)}
    sub = metrics.get("subgroups") or {}
    findings: list[Finding] = []
    for m in models:
        entry = (metrics.get("models") or {}).get(m)
        ptr = f"{runmod.METRICS}#{_pointer('models', m, 'threshold_free')}"
        rec = run.model_record(m)  # an audited model records how it was decided
        rule = rec.get("threshold_rule")
        findings.append(discrimination(m, entry, test.get("n"), test.get("n_malignant"),
                                       f"{ptr}/roc_auc/value", rule=rule))
        findings.append(calibration(m, entry, test.get("n"), f"{ptr}/ece/value",
                                    (rec.get("calibration") or {}).get("method") if rule
                                    else None))
        key = _test_key(summary, m, chosen.get(m))
        t = dict(summary["tests"][key], method=key.split("/", 1)[1]) if key else None
        tptr = f"{runmod.ATTENTION_SUMMARY}#{_pointer('tests', key or '')}"
        findings.append(where_it_looks(m, t, _undefined_share(summary, m, t),
                                       f"{tptr}/uniform_guard/median_pixel_auroc"))
        findings.append(size_confound(m, t, f"{tptr}/size_confound/class_coef_adjusted"))

        def probe(name, art=None, field="delta_mean", model=m):
            i = idx.get((model, name, art))
            return (entries[i] if i is not None else None,
                    f"{runmod.PROBE_SUMMARY}#{_pointer('entries', i, field)}")

        findings.append(lesion_reliance(m, *probe("lesion_removed", field="auc")))
        spread = output_range(m, entry, test.get("n"),
                              f"{runmod.METRICS}#{_pointer('models', m, 'prob_range')}", margin)
        narrow = spread is not None
        findings.append(context(m, *probe("background_removed"), margin, narrow))
        findings += [spread] if spread else []
        att_rows = {r["artifact"]: (i, r) for i, r in enumerate(summary.get("artifacts") or [])
                    if r.get("model") == m and (not t or r.get("method") == t["method"])}
        names = sorted({k[2] for k in idx if k[0] == m and k[2]
                        and k[1] in ("artifact_inserted", "context_swap")} | set(att_rows))
        found = marked_regions(m, probe("hot_removed")[0], *probe("hot_transplanted"), margin,
                               narrow)
        findings += [found] if found else []
        for a in names:
            i, row = att_rows.get(a, (None, None))
            gap = artifact_gap(((sub.get(f"artifact_{a}") or {}).get("models") or {}).get(m))
            e, src = probe("artifact_inserted", a)
            att_src = f"{runmod.ATTENTION_SUMMARY}#{_pointer('artifacts', i, 'ratio')}"
            findings.append(artifact(m, a, e, row, src, att_src, margin,
                                     *probe("context_swap", a), gap, narrow))
        for col, res in sub.items():
            sptr = f"{runmod.METRICS}#{_pointer('subgroups', col, 'models', m)}"
            findings.append(subgroups(m, col, ((res or {}).get("models") or {}).get(m), sptr))
        for name in _external_names(run):
            em = _read(run.external(name).metrics) or {}
            et = em.get("test") or {}
            findings.append(discrimination(
                m, (em.get("models") or {}).get(m), et.get("n"), et.get("n_malignant"),
                f"{runmod.EXTERNAL_DIR}/{name}/{runmod.METRICS}#"
                f"{_pointer('models', m, 'threshold_free', 'roc_auc', 'value')}",
                topic=f"external: {name}", anchor="external"))
    exp = _read(run.dir / SHORTCUT)
    if isinstance(exp, dict) and "runs" in exp:
        findings += [shortcut(exp, "control"), shortcut(exp, "shortcut")]
    return findings


def _test_key(summary: dict[str, Any], model: str, chosen: dict[str, Any] | None) -> str | None:
    tests = summary.get("tests") or {}
    if chosen and f"{model}/{chosen['method']}" in tests:
        return f"{model}/{chosen['method']}"
    return next((k for k in tests if k.split("/", 1)[0] == model), None)


def _undefined_share(summary: dict[str, Any], model: str, test: dict | None) -> float | None:
    """Share of ``model``'s heatmaps at its method with no pixel AUROC (``overall`` rows)."""
    if not test:
        return None
    for r in summary.get("overall") or []:
        if (r.get("model"), r.get("method"), r.get("metric")) == (model, test["method"],
                                                                   "pixel_auroc"):
            n, k = r.get("n"), r.get("n_nan", 0)
            return float(k) / n if is_number(n) and n and is_number(k) else None
    return None


def _external_names(run: runmod.Run) -> list[str]:
    folder = run.dir / runmod.EXTERNAL_DIR
    return sorted(p.name for p in folder.iterdir()
                  if (p / runmod.METRICS).is_file()) if folder.is_dir() else []


def display_names(run: runmod.Run, findings: list[Finding]) -> dict[str, str]:
    """Each finding's model as the run names it (a qualifier such as ``(shortcut-trained)``
    kept)."""
    names, out = run.display_names, {}
    for f in findings:
        base, _, rest = f.model.partition(" ")
        out[f.model] = names.get(f.model) or (names.get(base, base) + (f" {rest}" if rest else ""))
    return out


def write_findings(run_dir: str | Path) -> tuple[Path, list[Finding]]:
    """Build the run's findings and write ``RUN/findings.json``."""
    run = runmod.Run.open(run_dir)
    findings = build_findings(run.dir)
    path = run.dir / FINDINGS
    write_json(path, {"schema_version": SCHEMA_VERSION, "margin": MARGIN,
                      "display_names": display_names(run, findings),
                      "findings": [f.to_dict() for f in findings]})
    return path, findings


def read_findings(run_dir: str | Path) -> list[Finding]:
    """``RUN/findings.json`` as :class:`Finding` objects (built and written if absent)."""
    path = Path(run_dir) / FINDINGS
    if not path.exists():
        return write_findings(run_dir)[1]
    obj = read_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("findings"), list):
        raise DermcamError("findings.json holds no list of findings", path)
    return [Finding.from_dict(d) for d in obj["findings"]]


def status_counts(findings: list[Finding]) -> dict[str, int]:
    return {s: sum(f.status == s for f in findings) for s in STATUSES}


def fine_line(findings: list[Finding], model: str) -> str | None:
    """``"fine: discrimination, calibration, ..."`` for a model's ``ok`` topics (None if none)."""
    ok = [f.topic for f in findings if f.model == model and f.status == "ok"]
    return f"fine: {', '.join(ok)}" if ok else None
