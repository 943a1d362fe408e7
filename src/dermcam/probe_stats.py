"""The probes' statistics: ``probe.csv`` rows -> the entries of ``probe_summary.json``.

Pure functions (no I/O). Bootstrap CIs are over images, each image's placements averaged
first; the context swap's also resample its donor images (:func:`crossed_side_means`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix

from dermcam.audit_set import by_names
from dermcam.data.artifact_labels import PREFIX, split_by_presence
from dermcam.evaluation import batch_ranking_metrics
from dermcam.perturb import PerturbConfig, probe_order
from dermcam.stats import (
    adjust_pvalues,
    bootstrap_indices,
    delong_test,
    percentile_interval,
    resampling_weights,
    spearman_ci,
)
from dermcam.subgroups import MIN_GROUP, subgroup_summary_analyses

#: The per-image scores :func:`probe_subgroups` summarises per group, and their titles.
SUBGROUP_TITLES = {"delta": "Δ P(malignant)", "flip_rate": "flip rate"}


def normalise_rows(df: pd.DataFrame) -> pd.DataFrame:
    """``probe.csv`` rows with ``artifact`` a string, "" where none."""
    return df.assign(artifact=df["artifact"].fillna("").astype(str))


def entry_key(e: dict[str, Any]) -> tuple[str, int, str]:
    """The order entries are reported in: model, then the order the probes run, artifact."""
    return str(e["model"]), probe_order(e["probe"]), e["artifact"] or ""


def find(entries: Sequence[dict[str, Any]], model: str, probe: str,
         artifact: str | None = None) -> dict[str, Any] | None:
    for e in entries:
        if e["model"] == model and e["probe"] == probe and (e.get("artifact") or None) == artifact:
            return e
    return None


def mean_ci(v: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of ``(N,)`` changes, percentile bootstrap CI; NaN CI below 2 values."""
    v = np.asarray(v, np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    if v.size < 2:
        return float(v.mean()), math.nan, math.nan
    idx = bootstrap_indices(v, n_boot, seed, stratified=False)
    lo, hi = percentile_interval(v[idx].mean(1), what="mean probability change")
    return float(v.mean()), lo, hi


def rate(num: int, den: int) -> float:
    return num / den if den else math.nan


def by_class(labels: np.ndarray, stat, prefix: str = "delta", valid: np.ndarray | None = None,
             overall: bool = True) -> dict[str, Any]:
    """``stat(keep) -> (mean, lo, hi)`` over all ``valid`` images (``overall``) and per class,
    keyed ``delta_mean, delta_ci_low, delta_ci_high, n``, ``delta_benign, ..., n_benign``..."""
    valid = np.ones(len(labels), bool) if valid is None else valid
    out: dict[str, Any] = {}
    tags = (("", valid),) if overall else ()
    for tag, keep in tags + (("_benign", valid & (labels == 0)),
                             ("_malignant", valid & (labels == 1))):
        m, lo, hi = stat(keep)
        out.update({f"{prefix}{tag or '_mean'}": m, f"{prefix}{tag}_ci_low": lo,
                    f"{prefix}{tag}_ci_high": hi, f"n{tag}": int(keep.sum())})
    return out


def diff_summary(d: np.ndarray, labels: np.ndarray, n_boot: int, seed: int,
                 prefix: str = "delta", overall: bool = True) -> dict[str, Any]:
    """Mean paired difference with its bootstrap CI, overall and per class (:func:`by_class`)."""
    return by_class(labels, lambda keep: mean_ci(d[keep], n_boot, seed), prefix, overall=overall)


def crossed_side_means(owner: np.ndarray, donor: np.ndarray, side: np.ndarray, p: np.ndarray,
                       n: int, n_boot: int, seed: int
                       ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Each of ``n`` images (``owner``) scored on other images (``donor``), ``(R,)`` rows with
    a side code and score ``p``. Per side, each image's mean score ``(N,)`` and its crossed
    bootstrap replicates ``(N, B)`` with the donors resampled (Owen 2007: the surroundings
    are a sample too); also the images' own resampling counts ``(N, B)``."""
    w_donor = np.random.default_rng([seed, 1]).multinomial(
        n, np.full(n, 1 / n), n_boot).T.astype(np.float64)  # (N donors, B)
    w_image = np.random.default_rng([seed, 2]).multinomial(
        n, np.full(n, 1 / n), n_boot).T.astype(np.float64)  # (N images, B)
    means = {}
    for code in np.unique(side):
        rows = side == code
        total = csr_matrix((p[rows], (owner[rows], donor[rows])), shape=(n, n))
        count = csr_matrix((np.ones(rows.sum()), (owner[rows], donor[rows])), shape=(n, n))
        with np.errstate(invalid="ignore", divide="ignore"):
            means[int(code)] = (np.asarray(total.sum(1)).ravel() / np.asarray(count.sum(1)).ravel(),
                                (total @ w_donor) / (count @ w_donor))
    return means, w_image


def crossed_diff_summary(means: dict[int, tuple[np.ndarray, np.ndarray]], w_image: np.ndarray,
                         labels: np.ndarray, a: int, b: int, prefix: str = "delta"
                         ) -> dict[str, Any]:
    """:func:`diff_summary` of :func:`crossed_side_means`: each image's mean on side ``a``
    minus on side ``b`` (images lacking one left out), CIs resampling images and donors."""
    (pa, ba), (pb, bb) = means[a], means[b]
    d, boot = pa - pb, ba - bb

    def stat(keep: np.ndarray) -> tuple[float, float, float]:
        ok = keep[:, None] & np.isfinite(boot)
        weight = np.where(ok, w_image, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = (np.where(ok, boot, 0.0) * weight).sum(0) / weight.sum(0)
        lo, hi = (percentile_interval(reps, what="mean probability change")
                  if keep.sum() > 1 else (math.nan, math.nan))
        return float(d[keep].mean()) if keep.any() else math.nan, lo, hi

    return by_class(labels, stat, prefix, valid=np.isfinite(d))


def _method(probe: str, artifact: str, cfg: PerturbConfig, placements: int) -> str:
    """How a probe changed the images, in words (an entry's ``method``)."""
    if probe == "lesion_removed":
        return (f"OpenCV inpainting ({cfg.inpaint}) of the lesion dilated by "
                f"{cfg.dilate:.0%} of the side")
    if probe == "background_removed":
        return "pixels outside the dilated lesion set to the median skin colour"
    if probe == "artifact_inserted":
        return (f"the synthetic generator's {artifact} painter, outside the dilated "
                f"lesion, {placements} seeded placement(s) per image")
    return f"OpenCV inpainting ({cfg.inpaint}) of the {artifact} pixels"


def summarise(df: pd.DataFrame, cfg: PerturbConfig | None = None, n_boot: int = 1000,
              seed: int = 0, attention: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """``probe.csv`` rows -> one entry per model x probe [x artifact] (docs/probes.md): the mean
    change with a bootstrap CI over images (placements averaged first), flip rates, and for
    removal probes AUC/AP intact vs perturbed and, with ``attention``, rho with leakage."""
    entries: list[dict[str, Any]] = []
    cfg = cfg or PerturbConfig()
    df = normalise_rows(df)
    for (model, probe, artifact), g in df.groupby(["model", "probe", "artifact"], sort=False,
                                                  dropna=False):
        per_img = g.groupby("image_id", sort=True).agg(
            delta=("delta", "mean"), label=("label", "first"),
            prob_intact=("prob_intact", "first"), prob_perturbed=("prob_perturbed", "mean"))
        d = per_img["delta"].to_numpy(np.float64)
        mean, lo, hi = mean_ci(d, n_boot, seed)
        ben, mal = g[g["decision_intact"] == 0], g[g["decision_intact"] == 1]
        e: dict[str, Any] = {
            "model": model, "probe": probe, "artifact": artifact or None,
            "n": int(len(per_img)), "placements": int(g["placement"].nunique()),
            "delta_mean": mean, "delta_ci_low": lo, "delta_ci_high": hi,
            "flip_to_malignant": rate(int((ben["decision_perturbed"] == 1).sum()), len(ben)),
            "flip_to_benign": rate(int((mal["decision_perturbed"] == 0).sum()), len(mal)),
            "n_decided_benign": int(len(ben)), "n_decided_malignant": int(len(mal)),
            "changed_share": float(g["changed_share"].mean()),
            **diff_summary(d, per_img["label"].to_numpy(), n_boot, seed, overall=False),
        }
        if probe in ("lesion_removed", "background_removed"):
            e.update(auc_fast(per_img["label"].to_numpy(np.int64),
                              per_img["prob_intact"].to_numpy(np.float64),
                              per_img["prob_perturbed"].to_numpy(np.float64), n_boot, seed))
        e["method"] = _method(probe, artifact, cfg, e["placements"])
        if probe in ("lesion_removed", "background_removed") and attention is not None:
            e.update(_tracking(attention, model, per_img, n_boot, seed))
        entries.append(e)
    entries.sort(key=entry_key)
    return entries


def per_image(df: pd.DataFrame) -> pd.DataFrame:
    """``probe.csv`` rows -> one row per model x probe x artifact x image: ``delta`` and
    ``prob_perturbed`` averaged over placements, ``flip_rate`` (share of placements whose
    decision changed, either way), ``label``, ``prob_intact``, ``placements``."""
    d = normalise_rows(df)
    d = d.assign(flipped=(d["decision_perturbed"] != d["decision_intact"]).astype(float))
    return d.groupby(["model", "probe", "artifact", "image_id"], sort=True).agg(
        delta=("delta", "mean"), flip_rate=("flipped", "mean"), label=("label", "first"),
        prob_intact=("prob_intact", "first"), prob_perturbed=("prob_perturbed", "mean"),
        placements=("placement", "nunique")).reset_index()


def probe_subgroups(df: pd.DataFrame, columns: pd.DataFrame, by, n_boot: int = 1000,
                    seed: int = 0, min_group: int | None = None) -> dict[str, Any]:
    """``probe_summary.json["subgroups"]``: per ``--by`` column, model x probe [x artifact]
    and group, the mean change and flip rate with CIs and Kruskal-Wallis across groups
    (:func:`dermcam.subgroups.subgroup_summary_analyses`); ``columns``: ``image_id`` and
    the ``by`` columns."""
    table = per_image(df).merge(columns, on="image_id", how="left")
    out = subgroup_summary_analyses(
        table, by_names(by), list(SUBGROUP_TITLES), ("model", "probe", "artifact"),
        n_boot=n_boot, seed=seed, min_group=MIN_GROUP if min_group is None else int(min_group),
        what="models x probes")
    for analysis in out.values():  # in the order the probes run, as the entries
        analysis["entries"].sort(key=entry_key)
    return out


def auc_fast(y: np.ndarray, p_intact: np.ndarray, p_pert: np.ndarray, n_boot: int,
             seed: int) -> dict[str, Any]:
    """ROC AUC and AP, perturbed and intact, with stratified bootstrap CIs (the same
    resamples for all four, as evaluate does) and the DeLong p of the AUC change; NaN with
    ``auc_reason`` when the images hold fewer than two classes."""
    y = np.asarray(y, np.int64)
    if np.unique(y).size < 2:
        return {**{f"{k}{s}{c}": math.nan for k in ("auc", "ap") for s in ("", "_intact")
                   for c in ("", "_ci_low", "_ci_high")},
                "auc_reason": "no images" if y.size == 0 else "the images are of one class"}
    w = np.vstack([np.ones(y.size), resampling_weights(y, n_boot, seed, stratified=True)])
    out: dict[str, Any] = {}
    for suffix, p in (("", p_pert), ("_intact", p_intact)):
        m = batch_ranking_metrics(w, y, np.asarray(p, np.float64), 10)
        for key, name in (("auc", "roc_auc"), ("ap", "average_precision")):
            lo, hi = percentile_interval(m[name][1:], what=f"{key}{suffix}")
            out.update({f"{key}{suffix}": float(m[name][0]), f"{key}{suffix}_ci_low": lo,
                        f"{key}{suffix}_ci_high": hi})
    out["auc_diff_p"] = delong_test(y, p_intact, p_pert).get("p")
    return out


def artifact_presence(df: pd.DataFrame, flags: pd.DataFrame, n_boot: int = 1000,
                      seed: int = 0) -> list[dict[str, Any]]:
    """Lesion and background removal on images with versus without each artifact
    (``flags``: ``image_id`` and 0/1 ``artifact_<name>``; a missing flag is on neither
    side). Per model x removal probe x artifact: ``with``/``without`` blocks (n, mean
    change, AUCs), ``delta_diff`` and a Mann-Whitney ``delta_p``, Holm-adjusted
    over all records."""
    cols = [c for c in flags.columns if c.startswith(PREFIX)]
    pi = per_image(df)
    pi = pi[pi["probe"].isin(("lesion_removed", "background_removed"))]
    flags = flags.assign(**{c: pd.to_numeric(flags[c], errors="coerce").astype("float64")
                            for c in cols})  # a missing flag (NA) becomes NaN
    pi = pi.merge(flags[["image_id", *cols]], on="image_id", how="left")
    rows: list[dict[str, Any]] = []
    for (model, probe), g in pi.groupby(["model", "probe"], sort=True):
        tests = {r["artifact"]: r for r in split_by_presence(g, cols, ("delta",))}
        for col in cols:
            art = col.removeprefix(PREFIX)
            flag = g[col]
            row: dict[str, Any] = {"model": model, "probe": probe, "artifact": art,
                                   "delta_diff": tests[art]["diff"], "delta_p": tests[art]["p"],
                                   "test": "Mann-Whitney of the per-image change, with vs "
                                           "without"}
            for side, sel in (("with", flag == 1), ("without", flag == 0)):
                h = g[sel.to_numpy()]
                y = h["label"].to_numpy(np.int64)
                mean, lo, hi = mean_ci(h["delta"].to_numpy(np.float64), n_boot, seed)
                row[side] = {"n": int(len(h)), "n_malignant": int(y.sum()), "delta_mean": mean,
                             "delta_ci_low": lo, "delta_ci_high": hi,
                             **auc_fast(y, h["prob_intact"].to_numpy(np.float64),
                                        h["prob_perturbed"].to_numpy(np.float64), n_boot, seed)}
            rows.append(row)
    rows.sort(key=entry_key)
    adj = adjust_pvalues([r["delta_p"] for r in rows], "holm") if rows else []
    for r, pa in zip(rows, adj):
        r.update(delta_p_adjusted=float(pa), adjust_method="Holm",
                 family="artifact presence: models x removal probes x artifacts")
    return rows


def _tracking(att: pd.DataFrame, model: str, per_img: pd.DataFrame, n_boot: int, seed: int
              ) -> dict[str, Any]:
    """Spearman's rho (bootstrap CI) of each image's (excess) leakage and ``|delta|``."""
    a = att[att["model"] == model].drop_duplicates("image_id").set_index("image_id")
    ids = per_img.index.intersection(a.index)
    if len(ids) == 0:
        return {}
    mag = np.abs(per_img.loc[ids, "delta"].to_numpy(np.float64))
    out: dict[str, Any] = {"cam": str(a["cam"].iloc[0])}
    for metric in ("leakage", "excess_leakage"):
        if metric not in a.columns:
            continue
        x = a.loc[ids, metric].to_numpy(np.float64)
        rho, lo, hi, n = spearman_ci(x, mag, n_boot, seed)
        out.update({f"{metric}_rho": rho, f"{metric}_rho_ci_low": lo,
                    f"{metric}_rho_ci_high": hi, "rho_n": n})
    return out
