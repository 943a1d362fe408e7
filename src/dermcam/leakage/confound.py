"""Is a class difference in a localisation metric explained by lesion size?

:func:`size_confound` estimates, then gives a verdict (:data:`VERDICTS`);
:func:`size_confounds` runs it for several metrics and :func:`adjust_confound`
decides again on multiplicity-adjusted p-values. :func:`ols_fit` is the regression
both models use.

:func:`size_confound` uses the rows where the metric, area and label are all present
(labels must be 0, 1 or missing; anything else raises ValueError). Two models, both OLS
with HC3 standard errors and t tests on ``n - p`` degrees of freedom:

- unadjusted: ``metric ~ 1 + malignant`` (its class coefficient is the
  difference of class means, malignant minus benign);
- adjusted: ``metric ~ 1 + malignant + cr(area, df=spline_df)``, a natural cubic
  spline in area, so a non-linear dependence on size is not read as a class
  effect. ``df`` is lowered to ``n // 15`` for small samples (linear in area below
  30 images) and where the distinct areas do not support it; the ``model`` key
  states what was fitted.

Its result says, for ``margin`` in the metric's units (0.02 leakage by default;
choose it for other metrics):

- ``class_coef_unadjusted``, ``class_ci_unadjusted``, ``class_p_unadjusted``;
- ``class_coef_adjusted``, ``class_ci_adjusted``, ``class_p_adjusted``;
- ``share_explained``: ``1 - adjusted / unadjusted``, the share of the gap that
  lesion area accounts for (1 = all of it, > 1 = the sign reverses, NaN when the
  unadjusted gap is 0), and ``share_explained_ci``, a percentile bootstrap
  (``n_boot`` resamples within class, ``seed``);
- ``equivalence``: ``{"margin", "p", "equivalent", "level", "ci"}``, the TOST of
  the adjusted gap against ``+-margin`` (``equivalent``: p < ``alpha``, i.e. the
  ``1 - 2 alpha`` CI in ``ci`` lies inside the margin);
- ``verdict``, one of :data:`VERDICTS`, decided in this order:

  1. ``"explained by size"``: the adjusted gap is equivalent to zero within
     ``+-margin`` (TOST p < ``alpha``). This holds even when its CI excludes 0: a difference smaller
     than the margin is taken as negligible.
  2. ``"remains"``: the adjusted gap differs from 0 (its t test's p < ``alpha``,
     i.e. its CI excludes 0), and it does not point against a
     clear unadjusted gap (one whose CI excludes 0). A gap that only appears
     after the adjustment (no clear unadjusted gap) also counts as remaining.
  3. ``"inconclusive"``: everything else. That is the adjusted CI containing 0
     but reaching beyond the margin (p >= alpha is not absence), a sign reversal
     (the adjusted gap opposite to a clear unadjusted one: area accounts for more
     than the whole difference), and cases where nothing can be estimated
     (``reason`` says which).

  The p-values the verdict reads are the raw ones here. In a family of tests
  (the attention summary's ``size_confound`` and ``equivalence`` families),
  :func:`adjust_confound` decides again on the multiplicity-adjusted p-values;
  ``verdict_unadjusted`` keeps the single-test verdict and ``verdict_basis`` says
  which p-values decided.

- ``class_effect_survives``: ``verdict == "remains"``; None when the models could
  not be fitted;
- ``model``: the adjusted model's formula (OLS, HC3 standard errors, t tests on
  n - p df; the unadjusted model drops the area term); ``area_model``: ``"spline"``
  (a natural cubic spline in area, ``spline_df`` df), ``"linear_few_images"`` or
  ``"linear_few_areas"`` (the linear fallback and why);
- ``ols_class``, ``ols_class_area``: the :func:`ols_fit` results of the
  unadjusted and the adjusted (spline) model;
- ``spearman_rho``, ``spearman_p``, ``pearson_r``, ``pearson_p``: the metric
  against the area;
- ``n``, ``n_benign``, ``n_malignant``, ``n_dropped``, ``alpha``;
- ``explained_classes``: ``{"benign": n, "malignant": n}`` heatmaps explaining each
  class among the rows used (from ``target_col``, checked like the labels; None
  without that column) and ``pooled_over_targets``: True when both classes are
  explained, i.e. lesion type is mixed with the explained class (``--target
  predicted``; ``target_mode``, the explain stage's ``--target``);
- ``per_image``: with ``cluster_name`` (the run resamples clusters of that name
  elsewhere), the numbers here that still treat images as independent;
- ``reason``: ``""`` or why a quantity is undefined (``"constant_metric"``,
  ``"perfect_fit"``, ``"ols_failed"``, ``"adjusted model: <ols reason>"``).

Degenerate data never produce a p-value from round-off: a metric that is constant
gives verdict "inconclusive" with reason ``"constant_metric"`` (there is no class
difference to explain); a metric that is an exact function of area (e.g. leakage
= 1 - area, what uniform heatmaps give) gives NaN p-values, reason
``"perfect_fit"``, verdict "explained by size".
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
    """Ordinary least squares (statsmodels ``OLS``) with robust or classical standard errors.

    ``y`` ``(n,)``, ``X`` ``(n, p)`` design matrix (include the intercept column),
    ``names`` ``p`` labels. ``cov_type``: ``"HC3"`` (default; heteroscedasticity-
    robust, MacKinnon & White 1985, the variant that holds its level in small
    samples) or ``"nonrobust"`` (classical). p-values and CIs use Student's t with
    ``n - p`` degrees of freedom for both.

    Returns ``{"n", "df_resid", "r2", "cov_type", "reason", "coef": {name: {"coef",
    "se", "t", "p", "ci_low", "ci_high"}}}``. When inference is undefined the
    coefficients are still given but ``se``, ``t``, ``p`` and the CI are NaN, and
    ``reason`` says why (never a p-value made of round-off):

    - ``"constant_outcome"``: ``y`` does not vary (spread <= :func:`round_off_tol`:
      :data:`EXACT_RTOL` x max|y|, and at least :data:`EXACT_ATOL`);
    - ``"perfect_fit"``: the residuals are round-off (RMS <= the same tolerance),
      i.e. ``y`` is an exact linear function of the columns;
    - ``"leverage_one"`` (HC3 only): a row has leverage 1, where HC3 divides by 0.

    Raises ValueError for a rank-deficient design, ``n <= p`` or an unknown ``cov_type``.
    """
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
        nan = np.full(p, np.nan)
        se, t, pval, lo, hi = nan, nan, nan, nan, nan
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


def _area_basis(area: np.ndarray, mal: np.ndarray, df: int
                ) -> tuple[np.ndarray, list[str], str]:
    """Columns for the lesion-area term, ``(n,)`` -> ``(n, k)``, its names and formula.

    A natural cubic regression spline with ``df`` degrees of freedom (patsy
    ``cr(area, df, constraints="center")``: knots at quantiles of the area, linear
    beyond the outer knots, centred so it sits beside an intercept; it contains the
    straight line, so ``1 - area`` is fitted exactly). Where that design would be
    rank deficient beside the intercept and the class column (few distinct areas),
    ``df`` is lowered; below 2 the term is the plain linear area. Raises ValueError
    when even that is rank deficient (constant area, or area equal to the class).
    """
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
    """Two one-sided t tests of H0 ``|effect| >= margin``; the larger one-sided p.

    p < alpha exactly when the ``1 - 2 alpha`` CI ``est +- t * se`` lies inside
    ``(-margin, margin)`` (Schuirmann 1987). NaN without a positive finite ``se``.
    """
    if not (np.isfinite(est) and np.isfinite(se) and se > 0):
        return np.nan
    p_lower = stats.t.sf((est + margin) / se, dof)  # H0: effect <= -margin
    p_upper = stats.t.cdf((est - margin) / se, dof)  # H0: effect >= +margin
    return float(max(p_lower, p_upper))


def _share_explained_boot(y: np.ndarray, mal: np.ndarray, design: np.ndarray, n_boot: int,
                          seed: int, level: float) -> tuple[float, float]:
    """Percentile CI of ``1 - adjusted gap / unadjusted gap``, resampling within class.

    Each resample keeps the class counts (as every dermcam bootstrap) and refits both
    models by least squares on the same area basis (knots fixed at the full data's).
    Resamples where the unadjusted gap is 0 or the design loses rank give NaN; the CI
    is NaN if more than 10 % do.
    """
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


#: Images per degree of freedom of the area spline: :func:`size_confound` uses at
#: most ``n // 15`` (below 30 images the area term is linear), so a small sample is
#: not fitted with a wiggly curve whose extrapolation swamps the class estimate.
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
    """Is a class difference in ``metric`` explained by lesion size? Estimates, then a verdict.

    The models, the verdict rule and every key of the returned dict are described in
    the module docstring (:mod:`dermcam.leakage.confound`). ``margin``: the equivalence
    margin in the metric's units (> 0); ``spline_df``: the area spline's degrees of
    freedom before the small-sample reduction; ``n_boot``, ``seed``: the bootstrap of
    the share explained; ``target_col``, ``target_mode``: the explained class per row
    and the explain stage's ``--target``; ``cluster_name``: set when the run resamples
    clusters elsewhere (``per_image`` then lists what here treats images as
    independent). Labels must be 0, 1 or missing (ValueError otherwise).
    """
    require_columns(df, [metric, area_col, label_col])
    if not margin > 0:
        raise ValueError(f"margin must be > 0 (in units of {metric}), got {margin}")
    y, area, mal, n_dropped, explained = _confound_rows(df, metric, area_col, label_col,
                                                        target_col)
    level = 1.0 - alpha
    out = _blank_result(metric, mal, n_dropped, alpha, margin, explained, target_mode,
                        cluster_name)
    _correlations(out, y, area)
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
    _record_fits(out, metric, area_term, area_names, wanted_df, m1, m2)
    du, da = out["class_coef_unadjusted"], out["class_coef_adjusted"]
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
    _equivalence(out, m2, alpha, margin)
    _decide(out)
    return out


def _confound_rows(df: pd.DataFrame, metric: str, area_col: str, label_col: str,
                   target_col: str | None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, dict | None]:
    """``(y, area, malignant, n_dropped, explained)``: the ``(n,)`` rows where the metric,
    area and label are all present, how many were dropped, and the heatmaps explaining
    each class among the rows used (None without ``target_col``)."""
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
    """The result of :func:`size_confound` before anything is estimated: every key, NaN
    estimates, verdict "inconclusive"."""
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


def _correlations(out: dict, y: np.ndarray, area: np.ndarray) -> None:
    """Spearman and Pearson correlations of the metric with the area, in place (left NaN
    below 3 rows or when either does not vary)."""
    if y.size >= 3 and not is_constant(y) and not is_constant(area):
        sp = stats.spearmanr(y, area)
        pe = stats.pearsonr(y, area)
        out.update(spearman_rho=float(sp.statistic), spearman_p=float(sp.pvalue),
                   pearson_r=float(pe.statistic), pearson_p=float(pe.pvalue))


def _record_fits(out: dict, metric: str, area_term: str, area_names: list[str],
                 wanted_df: int, m1: dict, m2: dict) -> None:
    """The fitted models' description and class coefficients, in place: ``m1`` the
    unadjusted, ``m2`` the area-adjusted :func:`ols_fit` result."""
    spline = area_term.startswith("cr(")
    out["model"] = f"{metric} ~ 1 + malignant + {area_term}"
    out["area_model"] = ("spline" if spline else "linear_few_images" if wanted_df < 2
                         else "linear_few_areas")
    out["spline_df"] = len(area_names) if spline else 1
    c1, c2 = m1["coef"]["malignant"], m2["coef"]["malignant"]
    out.update(ols_class=m1, ols_class_area=m2, class_coef_unadjusted=c1["coef"],
               class_ci_unadjusted=(c1["ci_low"], c1["ci_high"]), class_p_unadjusted=c1["p"],
               class_coef_adjusted=c2["coef"], class_ci_adjusted=(c2["ci_low"], c2["ci_high"]),
               class_p_adjusted=c2["p"])


def _decide_exact(out: dict, exact_area: bool, margin: float) -> None:
    """Verdict of an adjusted model without residual variance, in place: the adjusted gap
    is known exactly but has no p-value. ``exact_area``: the metric is an exact function
    of the area alone (the class coefficient is then round-off of an exact 0)."""
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


def _equivalence(out: dict, m2: dict, alpha: float, margin: float) -> None:
    """The TOST p-value and ``1 - 2 alpha`` CI of the adjusted class gap, in place."""
    c2 = m2["coef"]["malignant"]
    da, dof = c2["coef"], m2["df_resid"]
    q = stats.t.ppf(1.0 - alpha, dof)
    out["equivalence"].update(p=_tost_p(da, c2["se"], dof, margin),
                              ci=(da - q * c2["se"], da + q * c2["se"]))


#: The numbers of :func:`size_confound` that treat images as independent even where the
#: rest of the attention summary resamples whole clusters (lesions, patients).
CONFOUND_PER_IMAGE = ("HC3 standard errors, t tests and TOST of the size-confound models",
                      "the bootstrap CI of the share of the gap explained by area")


def _decide(r: dict) -> None:
    """Set ``verdict``, ``verdict_basis`` and ``class_effect_survives`` of a fitted result.

    Decides on the multiplicity-adjusted p-values where they exist (``p_adjusted`` of the
    size-adjusted class coefficient, ``equivalence["p_adjusted"]`` of the TOST), on the
    raw ones otherwise; ``verdict_unadjusted`` is always the raw decision.
    """
    eq = r["equivalence"]
    p_class, p_eq = r["class_p_adjusted"], eq["p"]
    r["verdict_unadjusted"] = _verdict(r, p_class, p_eq)
    eq["equivalent_unadjusted"] = bool(p_eq < r["alpha"])
    pa_class = r.get("p_adjusted", np.nan)
    pa_eq = eq.get("p_adjusted", np.nan)
    adjusted = bool(np.isfinite(pa_class) or np.isfinite(pa_eq))
    if adjusted:
        p_class = pa_class if np.isfinite(pa_class) else p_class
        p_eq = pa_eq if np.isfinite(pa_eq) else p_eq
        r["verdict_basis"] = f"{r.get('adjust_method', 'multiplicity')}-adjusted p"
    else:
        r["verdict_basis"] = "unadjusted p"
    r["verdict"] = _verdict(r, p_class, p_eq)
    eq["equivalent"] = bool(p_eq < r["alpha"])
    r["class_effect_survives"] = r["verdict"] == "remains"


def _verdict(r: dict, p_class: float, p_eq: float) -> str:
    """The verdict of :func:`size_confound` from the class and TOST p-values given."""
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


def adjust_confound(r: dict, k_class: int | None = None,
                    k_equivalence: int | None = None) -> dict:
    """Decide a :func:`size_confound` result again on its multiplicity-adjusted p-values.

    ``r`` carries ``p_adjusted`` (the size-adjusted class coefficient's p, adjusted in
    its family), ``adjust_method`` and ``equivalence["p_adjusted"]`` (the TOST p,
    adjusted in its family), as :func:`dermcam.stages.explain.summarise_attention` sets them;
    ``k_class``, ``k_equivalence`` are the family sizes (``family_sizes``). The
    verdict, ``class_effect_survives`` and ``equivalence["equivalent"]`` follow the
    adjusted p-values (the raw ones are kept beside them); ``verdict_unadjusted``
    and ``equivalence["equivalent_unadjusted"]`` keep the single-test decision. A result
    without p-values (degenerate data) is returned unchanged. Modifies and returns ``r``.
    """
    eq = r.get("equivalence") or {}
    if not (np.isfinite(r.get("class_p_adjusted", np.nan)) and np.isfinite(eq.get("p", np.nan))):
        return r
    r["family_sizes"] = {"size_confound": k_class, "equivalence": k_equivalence}
    _decide(r)
    return r


def size_confounds(df: pd.DataFrame, metrics: Sequence[str] = CONFOUND_METRICS,
                   margins: Mapping[str, float] | None = None, **kwargs) -> dict[str, dict]:
    """:func:`size_confound` for each of ``metrics``: ``{metric: result}``.

    ``margins`` maps a metric to its equivalence margin (in that metric's units);
    metrics not in it use ``kwargs["margin"]`` or the default 0.02. Other keyword
    arguments go to :func:`size_confound` unchanged.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    margins = dict(margins or {})
    out = {}
    for metric in metrics:
        kw = dict(kwargs)
        if metric in margins:
            kw["margin"] = margins[metric]
        out[metric] = size_confound(df, metric, **kw)
    return out
