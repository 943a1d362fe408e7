"""Is a class difference in a localisation metric explained by lesion size? (docs/attention.md)

:func:`size_confound` fits ``metric ~ 1 + malignant`` and ``metric ~ 1 + malignant + cr(area)``
(OLS, HC3; a natural cubic spline, so a non-linear size effect is not read as class). Verdicts
(:data:`VERDICTS`), in order: ``"explained by size"`` when the adjusted gap is equivalent to 0
within ``+-margin`` (TOST p < alpha); ``"remains"`` when it differs from 0 and does not reverse
a clear unadjusted gap; else ``"inconclusive"``. Round-off never makes a p-value: a constant
metric is ``"constant_metric"``, an exact function of area ``"perfect_fit"``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from dermcam.leakage.checks import (
    TARGET_NAMES,
    is_constant,
    label_values,
    require_columns,
    round_off_tol,
    target_values,
)

log = logging.getLogger(__name__)

__all__ = ["ols_fit", "size_confound", "size_confounds", "adjust_confound",
           "CONFOUND_METRICS", "CONFOUND_PER_IMAGE", "VERDICTS"]


def ols_fit(y, X, names: Sequence[str], level: float = 0.95, cov_type: str = "HC3") -> dict:
    """OLS (statsmodels), HC3 (default; holds its level in small samples) or classical
    standard errors, t tests on ``n - p`` df: ``{"n", "df_resid", "r2", "cov_type", "reason",
    "coef": {name: {"coef", "se", "t", "p", "ci_low", "ci_high"}}}``. Inference is NaN with a
    ``reason`` (``constant_outcome``, ``perfect_fit``, ``leverage_one``) rather than made of
    round-off; ValueError for a rank-deficient design or ``n <= p``."""
    if cov_type not in ("HC3", "nonrobust"):
        raise ValueError(f"cov_type must be 'HC3' or 'nonrobust', got {cov_type!r}")
    y = np.asarray(y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    if y.ndim != 1 or X.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[1] != len(names):
        raise ValueError(f"ols_fit needs y (n,) and X (n, p) with p names, got y {y.shape}, "
                         f"X {X.shape}, {len(names)} names")
    n, p = X.shape
    if n <= p:
        raise ValueError(f"ols_fit needs more rows than columns, got X {X.shape}")
    if not (np.isfinite(y).all() and np.isfinite(X).all()):
        raise ValueError("ols_fit needs finite y and X (drop NaN rows first)")
    q_mat = np.linalg.qr(X)[0]  # leverages are the row sums of q_mat ** 2
    rank = int(np.linalg.matrix_rank(X))
    if rank < p:
        raise ValueError(f"ols_fit: design matrix X {X.shape} is rank deficient (rank {rank})")
    from statsmodels.regression.linear_model import OLS

    res = OLS(y, X).fit(use_t=True)
    beta = np.asarray(res.params, dtype=np.float64)
    resid = y - X @ beta
    rss = float(resid @ resid)
    tss = float(((y - y.mean()) ** 2).sum())
    tol = round_off_tol(y)
    reason = ""
    if np.ptp(y) <= tol:
        reason = "constant_outcome"
    elif np.sqrt(rss / n) <= tol:
        reason = "perfect_fit"
    elif cov_type == "HC3" and ((q_mat ** 2).sum(axis=1) > 1.0 - 1e-10).any():
        reason = "leverage_one"
    if reason:
        se = t = pval = lo = hi = np.full(p, np.nan)
    else:
        if cov_type == "HC3":
            res = res.get_robustcov_results(cov_type="HC3", use_t=True)
        se = np.asarray(res.bse, dtype=np.float64)
        t = np.asarray(res.tvalues, dtype=np.float64)
        pval = np.asarray(res.pvalues, dtype=np.float64)
        ci = np.asarray(res.conf_int(alpha=1.0 - level), dtype=np.float64)
        lo, hi = ci[:, 0], ci[:, 1]
    return {
        "n": n, "df_resid": n - p,
        "r2": 1.0 - rss / tss if tss > 0 else np.nan,
        "cov_type": cov_type, "reason": reason,
        "coef": {name: {"coef": float(b), "se": float(s), "t": float(tt), "p": float(pp),
                        "ci_low": float(lw), "ci_high": float(up)}
                 for name, b, s, tt, pp, lw, up in zip(names, beta, se, t, pval, lo, hi,
                                                       strict=True)},
    }


def _area_basis(area: np.ndarray, mal: np.ndarray, df: int) -> tuple[np.ndarray, list[str], str]:
    """``(basis (n, k), names, formula)`` of the area term: patsy's centred natural cubic
    spline ``cr(area, df)`` (it contains the straight line, so ``1 - area`` fits exactly),
    ``df`` lowered while the design is rank deficient, linear area below 2; ValueError when
    even that is (constant area, or area equal to the class)."""
    import patsy

    ones = np.ones_like(area)
    for k in range(int(df), 1, -1):
        term = f"cr(lesion_area, df={k}, constraints='center')"
        basis = np.asarray(patsy.dmatrix(f"{term} - 1", {"lesion_area": area}),
                           dtype=np.float64)
        design = np.column_stack([ones, mal, basis])
        if np.linalg.matrix_rank(design) == design.shape[1]:
            return basis, [f"area_spline_{i}" for i in range(k)], f"cr(lesion_area, df={k})"
    design = np.column_stack([ones, mal, area])
    if np.linalg.matrix_rank(design) < 3:
        raise ValueError("lesion area is constant or collinear with the class, so it "
                         "cannot be adjusted for")
    return area[:, None], ["lesion_area"], "lesion_area"


def _tost_p(est: float, se: float, dof: int, margin: float) -> float:
    """Two one-sided t tests of H0 ``|effect| >= margin`` (Schuirmann 1987): the larger
    one-sided p; NaN without a positive finite ``se``."""
    if not (np.isfinite(est) and np.isfinite(se) and se > 0):
        return np.nan
    p_lower = stats.t.sf((est + margin) / se, dof)  # H0: effect <= -margin
    p_upper = stats.t.cdf((est - margin) / se, dof)  # H0: effect >= +margin
    return float(max(p_lower, p_upper))


def _share_explained_boot(y: np.ndarray, mal: np.ndarray, design: np.ndarray, n_boot: int,
                          seed: int, level: float) -> tuple[float, float]:
    """Percentile CI of ``1 - adjusted gap / unadjusted gap``, resampling within class and
    refitting on the full data's area basis; resamples with a zero gap or lost rank are NaN."""
    from dermcam.stats import percentile_interval, stratified_bootstrap_indices

    idx = stratified_bootstrap_indices(mal, n_boot, seed)
    shares = np.full(n_boot, np.nan)
    is_mal = mal == 1
    for b, r in enumerate(idx):
        yb, mb = y[r], is_mal[r]
        gap = yb[mb].mean() - yb[~mb].mean()
        beta, _, rank, _ = np.linalg.lstsq(design[r], yb, rcond=None)
        if gap != 0 and rank == design.shape[1]:
            shares[b] = 1.0 - beta[1] / gap
    return percentile_interval(shares, alpha=1.0 - level, what="share of the gap explained")


#: Images per degree of freedom of the area spline: a small sample is not fitted with a
#: wiggly curve whose extrapolation swamps the class estimate.
_N_PER_AREA_DF = 15

#: Metrics :func:`size_confounds` runs the confound analysis on by default.
CONFOUND_METRICS = ("leakage", "excess_leakage", "pixel_auroc")

#: The three verdicts of :func:`size_confound`.
VERDICTS = ("remains", "explained by size", "inconclusive")


def size_confound(df: pd.DataFrame, metric: str = "leakage", area_col: str = "lesion_area",
                  label_col: str = "label", alpha: float = 0.05, margin: float = 0.02,
                  spline_df: int = 4, n_boot: int = 1000, seed: int = 0,
                  target_col: str | None = "cam_target", target_mode: str | None = None,
                  cluster_name: str | None = None) -> dict:
    """Is a class difference in ``metric`` explained by lesion size? See the module docstring.

    ``margin``: the equivalence margin in the metric's units; ``target_col``/``target_mode``:
    the explained class per row and explain's ``--target``; ``cluster_name``: set when the run
    resamples clusters elsewhere (``per_image`` then lists what here is per image).
    """
    require_columns(df, [metric, area_col, label_col])
    if not margin > 0:
        raise ValueError(f"margin must be > 0 (in units of {metric}), got {margin}")
    y, area, mal, n_dropped, explained = _confound_rows(df, metric, area_col, label_col,
                                                        target_col)
    level = 1.0 - alpha
    out = _blank_result(metric, mal, n_dropped, alpha, margin, explained, target_mode,
                        cluster_name)
    if y.size >= 3 and not is_constant(y) and not is_constant(area):  # else NaN
        sp, pe = stats.spearmanr(y, area), stats.pearsonr(y, area)
        out.update(spearman_rho=float(sp.statistic), spearman_p=float(sp.pvalue),
                   pearson_r=float(pe.statistic), pearson_p=float(pe.pvalue))
    ones = np.ones_like(y)
    wanted_df = min(spline_df, y.size // _N_PER_AREA_DF)
    try:
        basis, area_names, area_term = _area_basis(area, mal, wanted_df)
        design = np.column_stack([ones, mal, basis])
        m1 = ols_fit(y, np.column_stack([ones, mal]), ["intercept", "malignant"], level)
        m2 = ols_fit(y, design, ["intercept", "malignant", *area_names], level)
    except ValueError as exc:
        log.warning("size confound of %s not fitted (%d usable rows): %s", metric, out["n"],
                    exc)
        out["reason"] = "ols_failed"
        return out
    spline = area_term.startswith("cr(")  # the fitted models and their class coefficients
    c1, c2 = m1["coef"]["malignant"], m2["coef"]["malignant"]
    out.update(model=f"{metric} ~ 1 + malignant + {area_term}",
               area_model=("spline" if spline else "linear_few_images" if wanted_df < 2
                           else "linear_few_areas"),
               spline_df=len(area_names) if spline else 1,
               ols_class=m1, ols_class_area=m2, class_coef_unadjusted=c1["coef"],
               class_ci_unadjusted=(c1["ci_low"], c1["ci_high"]), class_p_unadjusted=c1["p"],
               class_coef_adjusted=c2["coef"], class_ci_adjusted=(c2["ci_low"], c2["ci_high"]),
               class_p_adjusted=c2["p"])
    du, da = c1["coef"], c2["coef"]
    if m1["reason"] == "constant_outcome":
        out.update(reason="constant_metric", class_effect_survives=False)
        return out
    if abs(du) > round_off_tol(y):
        out["share_explained"] = 1.0 - da / du
        out["share_explained_ci"] = _share_explained_boot(y, mal, design, n_boot, seed, level)
    if m2["reason"] == "perfect_fit":
        only_area = ols_fit(y, np.column_stack([ones, basis]), ["intercept", *area_names],
                            level)
        _decide_exact(out, only_area["reason"] == "perfect_fit", margin)
        return out
    if m2["reason"]:
        out["reason"] = f"adjusted model: {m2['reason']}"
        return out
    dof = m2["df_resid"]  # the TOST p and 1 - 2 alpha CI of the adjusted gap
    q = stats.t.ppf(1.0 - alpha, dof)
    out["equivalence"].update(p=_tost_p(c2["coef"], c2["se"], dof, margin),
                              ci=(c2["coef"] - q * c2["se"], c2["coef"] + q * c2["se"]))
    _decide(out)
    return out


def _confound_rows(df: pd.DataFrame, metric: str, area_col: str, label_col: str,
                   target_col: str | None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, dict | None]:
    """``(y, area, malignant, n_dropped, explained)`` of the rows with metric, area and
    label present; ``explained``: heatmaps explaining each class (None without ``target_col``)."""
    y = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=np.float64)
    area = pd.to_numeric(df[area_col], errors="coerce").to_numpy(dtype=np.float64)
    lab = label_values(df, label_col)
    ok = np.isfinite(y) & np.isfinite(area) & ~np.isnan(lab)
    explained = None
    if target_col is not None and target_col in df.columns:
        tgt = target_values(df, target_col)[ok]
        explained = {name: int((tgt == code).sum()) for code, name in TARGET_NAMES.items()}
    return y[ok], area[ok], lab[ok], int((~ok).sum()), explained


def _blank_result(metric: str, mal: np.ndarray, n_dropped: int, alpha: float, margin: float,
                  explained: dict | None, target_mode: str | None,
                  cluster_name: str | None) -> dict:
    """Every key of a :func:`size_confound` result, NaN estimates, verdict "inconclusive"."""
    return {
        "metric": metric, "n": int(mal.size), "n_benign": int((mal == 0).sum()),
        "n_malignant": int((mal == 1).sum()), "n_dropped": n_dropped,
        "alpha": alpha, "model": "", "area_model": "", "spline_df": None,
        "spearman_rho": np.nan, "spearman_p": np.nan, "pearson_r": np.nan, "pearson_p": np.nan,
        "ols_class": None, "ols_class_area": None,
        "class_coef_unadjusted": np.nan, "class_ci_unadjusted": (np.nan, np.nan),
        "class_p_unadjusted": np.nan,
        "class_coef_adjusted": np.nan, "class_ci_adjusted": (np.nan, np.nan),
        "class_p_adjusted": np.nan,
        "share_explained": np.nan, "share_explained_ci": (np.nan, np.nan),
        "equivalence": {"margin": margin, "p": np.nan, "equivalent": None,
                        "level": 1.0 - 2.0 * alpha, "ci": (np.nan, np.nan)},
        "verdict": "inconclusive", "verdict_unadjusted": "inconclusive",
        "verdict_basis": "unadjusted p", "class_effect_survives": None, "reason": "",
        "explained_classes": explained,
        "pooled_over_targets": bool(explained and all(explained.values())),
        "target_mode": target_mode,
        "per_image": list(CONFOUND_PER_IMAGE) if cluster_name else [],
        "cluster_name": cluster_name,
    }


def _decide_exact(out: dict, exact_area: bool, margin: float) -> None:
    """Verdict of an adjusted model without residual variance (exact gap, no p-value), in
    place; ``exact_area``: the metric is an exact function of the area alone."""
    eq = out["equivalence"]
    within = exact_area or abs(out["class_coef_adjusted"]) < margin
    eq["equivalent"] = eq["equivalent_unadjusted"] = bool(within)
    out["verdict"] = out["verdict_unadjusted"] = ("explained by size" if within
                                                  else "remains")
    out["verdict_basis"] = "exact fit, no p-value"
    out["class_effect_survives"] = out["verdict"] == "remains"
    out["reason"] = "perfect_fit"
    if exact_area:
        out["class_coef_adjusted"] = 0.0
        if np.isfinite(out["share_explained"]):
            out["share_explained"] = 1.0


#: The numbers of :func:`size_confound` that treat images as independent even where the
#: rest of the attention summary resamples whole clusters (lesions, patients).
CONFOUND_PER_IMAGE = ("HC3 standard errors, t tests and TOST of the size-confound models",
                      "the bootstrap CI of the share of the gap explained by area")


def _decide(r: dict) -> None:
    """Set ``verdict``, ``verdict_basis`` and ``class_effect_survives``: on the
    multiplicity-adjusted p-values where they exist, else the raw ones
    (``verdict_unadjusted`` is always the raw decision)."""
    eq = r["equivalence"]
    p_class, p_eq = r["class_p_adjusted"], eq["p"]
    r["verdict_unadjusted"] = _verdict(r, p_class, p_eq)
    eq["equivalent_unadjusted"] = bool(p_eq < r["alpha"])
    pa_class, pa_eq = r.get("p_adjusted", np.nan), eq.get("p_adjusted", np.nan)
    r["verdict_basis"] = "unadjusted p"
    if np.isfinite(pa_class) or np.isfinite(pa_eq):
        p_class = pa_class if np.isfinite(pa_class) else p_class
        p_eq = pa_eq if np.isfinite(pa_eq) else p_eq
        r["verdict_basis"] = f"{r.get('adjust_method', 'multiplicity')}-adjusted p"
    r["verdict"] = _verdict(r, p_class, p_eq)
    eq["equivalent"] = bool(p_eq < r["alpha"])
    r["class_effect_survives"] = r["verdict"] == "remains"


def _verdict(r: dict, p_class: float, p_eq: float) -> str:
    """The verdict from the class and TOST p-values given (module docstring's order)."""
    alpha = r["alpha"]
    du, da = r["class_coef_unadjusted"], r["class_coef_adjusted"]
    lo_u, hi_u = r["class_ci_unadjusted"]
    clear_u = lo_u > 0 or hi_u < 0
    clear_a = bool(p_class < alpha)
    reversed_ = clear_u and clear_a and np.sign(da) != np.sign(du)
    if p_eq < alpha:
        return "explained by size"
    if clear_a and not reversed_:
        return "remains"
    return "inconclusive"


def adjust_confound(r: dict, k_class: int | None = None, k_equivalence: int | None = None) -> dict:
    """Decide a :func:`size_confound` result ``r`` again on its adjusted p-values
    (``p_adjusted``, ``equivalence["p_adjusted"]``; family sizes ``k_class``,
    ``k_equivalence``), raw decisions kept; unchanged without p-values. Returns ``r``."""
    eq = r.get("equivalence") or {}
    if not (np.isfinite(r.get("class_p_adjusted", np.nan)) and np.isfinite(eq.get("p", np.nan))):
        return r
    r["family_sizes"] = {"size_confound": k_class, "equivalence": k_equivalence}
    _decide(r)
    return r


def size_confounds(df: pd.DataFrame, metrics: Sequence[str] = CONFOUND_METRICS,
                   margins: Mapping[str, float] | None = None, **kwargs) -> dict[str, dict]:
    """``{metric: size_confound(df, metric, ...)}``; ``margins`` maps a metric to its
    equivalence margin, other keyword arguments go to :func:`size_confound`."""
    margins = dict(margins or {})
    return {m: size_confound(df, m, **({**kwargs, "margin": margins[m]} if m in margins
                                       else kwargs))
            for m in ([metrics] if isinstance(metrics, str) else list(metrics))}
