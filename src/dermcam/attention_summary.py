"""attention_summary.json from attention.csv's rows: means with bootstrap CIs per class,
correctness and overall, and per model x method the tests, their p-values adjusted within
:data:`ATTENTION_FAMILIES`. Pure: rows in, a dict out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from dermcam import leakage as lk
from dermcam import run as runmod
from dermcam.audit_set import by_names
from dermcam.localisation import artifact_ratios, uniform_guard
from dermcam.stats import ADJUST_METHODS, adjust_in_place, resampling_label
from dermcam.subgroups import MIN_GROUP, subgroup_summary_analyses

SUMMARY_METRICS = ("leakage", "inside_score", "outside_score", "lesion_area", "chance_leakage",
                   "excess_leakage", "localisation_gain", "pixel_auroc", "rank_accuracy",
                   "pointing_game")
#: Metrics of the class comparison, the size-confound model and the missingness analysis.
TEST_METRICS = ("leakage", "excess_leakage", "pixel_auroc")

#: The scores of the attention summary by subgroup (``--by``) and their titles.
SUBGROUP_TITLES = {"leakage": "leakage", "excess_leakage": "excess leakage",
                   "pixel_auroc": "pixel AUROC"}

#: Multiplicity families of the attention summary: name -> (method, what it holds).
ATTENTION_FAMILIES = {
    "class_pooled": ("fdr_bh", "Mann-Whitney benign vs malignant, pooled over the explained "
                     "class: one test per metric x model x method (each at its layer)"),
    "class_within_target": ("fdr_bh", "Mann-Whitney benign vs malignant within heatmaps "
                            "explaining one class: one test per explained class x metric x "
                            "model x method"),
    "size_confound": ("fdr_bh", "t test of the size-adjusted class coefficient (HC3): one per "
                      "metric x model x method"),
    "equivalence": ("fdr_bh", "TOST of the size-adjusted class coefficient against the "
                    "margin: one per metric x model x method"),
    "artifact_presence": ("fdr_bh", "Mann-Whitney with vs without an artifact (artifact "
                          "labels): one test per artifact x metric x model x method"),
}

#: The raw p-value of each family's test dicts.
_RAW_P = {"class_pooled": "p_value", "class_within_target": "p_value",
          "size_confound": "class_p_adjusted", "equivalence": "p", "artifact_presence": "p"}

#: What the attention summary still computes per image when it resamples clusters.
PER_IMAGE_WHEN_CLUSTERED = (
    "Mann-Whitney p-values (class comparisons, artifact presence)",
    "size-confound models (HC3 standard errors, t tests, TOST)",
    "the bootstrap CI of the share of the class gap explained by area",
    "uniform_guard CIs (median pixel AUROC, mean excess leakage)",
    "artifact mass / area ratio CIs",
    "the sanity check's CI of the median |rank correlation|",
)


def summarise_attention(att: pd.DataFrame, target, sanity: dict, n_boot: int, seed: int,
                        margin: float = 0.02, cluster_name: str = "group", by=(),
                        min_group: int | None = None) -> dict[str, Any]:
    """attention_summary.json from attention.csv rows (docs/attention.md, "The summary file").

    ``target``: explain's ``--target``, or a Run (or manifest dict) that recorded it;
    ``margin``: the size-confound TOST margin; ``by``: columns to summarise by subgroup.
    """
    if "layer" not in att.columns:
        att = att.assign(layer="")
    cluster_col, resampling = _resampling(att, cluster_name)
    target = explained_class(target)
    stats = dict(n_boot=n_boot, seed=seed, cluster_col=cluster_col)
    by_class = lk.summarise(att, SUMMARY_METRICS, by=("model", "method", "label"), **stats)
    by_correct = lk.summarise(att, TEST_METRICS, by=("model", "method", "correct"), **stats)
    overall = lk.summarise(att, SUMMARY_METRICS, by=("model", "method"), **stats)
    tests, artifact_rows = {}, []
    families: dict[str, list[dict]] = {f: [] for f in ATTENTION_FAMILIES}
    for (model, method), g in att.groupby(["model", "method"], sort=True):
        key = f"{model}/{method}"
        tests[key], rows = _pair_tests(g, model, method, target, margin, cluster_name,
                                       cluster_col, n_boot, seed, families)
        if key in sanity:
            tests[key]["sanity"] = sanity[key]
        artifact_rows += rows
    multiplicity = {f: {"method": ADJUST_METHODS[method], "tests": what,
                        "k": adjust_in_place(families[f], f, method, _RAW_P[f])}
                    for f, (method, what) in ATTENTION_FAMILIES.items()}
    for entry in tests.values():  # the size-confound verdicts, decided on adjusted p-values
        for res in (entry.get("size_confounds") or {}).values():
            lk.adjust_confound(res, multiplicity["size_confound"]["k"],
                               multiplicity["equivalence"]["k"])
    reasons = att.loc[att["reason"] != "", "reason"].value_counts().to_dict()
    extra = {"subgroups": subgroup_summary_analyses(
        att, by_names(by), list(SUBGROUP_TITLES), ("model", "method"), n_boot=n_boot,
        seed=seed, min_group=MIN_GROUP if min_group is None else int(min_group),
        cluster_col=cluster_col, what="models x methods")} if by else {}
    return {**extra, "schema_version": 1, "n_images": int(att["image_id"].nunique()),
            "models": sorted(att["model"].unique().tolist()),
            "methods": sorted(att["method"].unique().tolist()),
            "target": target, "equivalence_margin": margin, "resampling": resampling,
            "per_image": list(PER_IMAGE_WHEN_CLUSTERED) if cluster_col is not None else [],
            "multiplicity": multiplicity,
            "undefined": reasons,
            "metric_definitions": {k: {"definition": v.definition,
                                       "higher_is_better": v.higher_is_better,
                                       "chance": lk.CHANCE.get(k)} for k, v in lk.METRICS.items()},
            "by_class": by_class.to_dict(orient="records"),
            "by_correct": by_correct.to_dict(orient="records"),
            "overall": overall.to_dict(orient="records"),
            "artifacts": artifact_rows,
            "tests": tests}


def explained_class(target) -> str | None:
    """:func:`summarise_attention`'s ``target`` as given, or as a Run (or manifest dict)
    recorded it."""
    if isinstance(target, Mapping):  # wrapped only to read it through Run's accessor
        target = runmod.Run(Path(), dict(target))
    if isinstance(target, runmod.Run):
        return target.stage_setting("explain", "target")
    return target


def _resampling(att: pd.DataFrame, cluster_name: str) -> tuple[str | None, str]:
    """``(cluster column or None, resampling label)``."""
    if "group" not in att.columns:
        return None, "images"
    per_image = att.drop_duplicates("image_id")["group"]
    resampling = resampling_label(per_image.to_numpy(dtype=object), cluster_name)
    return (None if resampling == "images" else "group"), resampling


def _pair_tests(g: pd.DataFrame, model: str, method: str, target, margin: float,
                cluster_name: str, cluster_col: str | None, n_boot: int, seed: int,
                families: dict[str, list[dict]]) -> tuple[dict[str, Any], list[dict]]:
    """``(tests entry, artifact ratio rows)`` of one model x method; p-values join
    ``families``."""
    layer = str(g["layer"].iloc[0])
    entry: dict[str, Any] = {"layer": layer,
                             "uniform_guard": uniform_guard(g, n_boot=n_boot, seed=seed)}
    _class_tests(g, entry, families)
    _confound_tests(g, entry, families, target, margin,
                    cluster_name if cluster_col is not None else None)
    rows = _artifact_tests(g, entry, families, n_boot, seed, cluster_col)
    return entry, [{"model": model, "method": method, "layer": layer, **r} for r in rows]


def _class_tests(g: pd.DataFrame, entry: dict[str, Any], families) -> None:
    """``classes_<metric>`` (benign vs malignant, pooled) and with ``cam_target``
    ``class_comparison`` (also within each explained class)."""
    comparisons = {}
    for metric in TEST_METRICS:
        try:
            if "cam_target" in g.columns:
                comparisons[metric] = lk.compare_classes_by_target(g, metric)
                entry[f"classes_{metric}"] = comparisons[metric]["pooled"]
            else:
                entry[f"classes_{metric}"] = lk.compare_classes(g, metric)
        except ValueError as exc:
            entry[f"classes_{metric}"] = {"error": str(exc)}
            continue
        families["class_pooled"].append(entry[f"classes_{metric}"])
        if metric in comparisons:
            families["class_within_target"] += comparisons[metric]["by_target"].values()
    if comparisons:
        entry["class_comparison"] = comparisons


def _confound_tests(g: pd.DataFrame, entry: dict[str, Any], families, target,
                    margin: float, cluster_name: str | None) -> None:
    """``size_confounds`` (with TOST) and ``missingness`` (undefined scores at chance)."""
    try:
        entry["size_confounds"] = lk.size_confounds(
            g, TEST_METRICS, margin=margin, target_mode=target, cluster_name=cluster_name)
        for res in entry["size_confounds"].values():
            families["size_confound"].append(res)
            families["equivalence"].append(res["equivalence"])
        entry["size_confound"] = entry["size_confounds"]["leakage"]
    except ValueError as exc:
        entry["size_confound"] = {"error": str(exc)}
    try:
        entry["missingness"] = lk.missing_at_chance(g, TEST_METRICS)
    except ValueError as exc:
        entry["missingness"] = {"error": str(exc)}


def _artifact_tests(g: pd.DataFrame, entry: dict[str, Any], families, n_boot: int,
                    seed: int, cluster_col: str | None) -> list[dict]:
    """``artifacts`` (mass on artifact pixel maps) and ``artifact_presence`` (by labelled
    presence); returns the artifact ratio rows."""
    rows: list[dict] = []
    names = [c.removeprefix("artifact_") for c in g.columns if c.startswith("artifact_")]
    arts = [a for a in names if f"mass_{a}" in g.columns]
    if arts:
        try:
            entry["artifacts"] = lk.artifact_summary(g, arts).to_dict(orient="records")
        except ValueError as exc:
            entry["artifacts"] = {"error": str(exc)}
        rows = artifact_ratios(g, arts, n_boot=n_boot, seed=seed)
    presence = [f"artifact_{a}" for a in names if a not in arts]
    if presence:  # labels without pixel maps (real images): leakage by presence
        try:
            entry["artifact_presence"] = lk.presence_comparison(
                g, presence, TEST_METRICS, n_boot=n_boot, seed=seed, cluster_col=cluster_col)
            families["artifact_presence"] += entry["artifact_presence"]
        except ValueError as exc:
            entry["artifact_presence"] = {"error": str(exc)}
    return rows


