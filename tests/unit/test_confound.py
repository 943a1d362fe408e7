"""Known-answer tests for the lesion-size confound analysis (dermcam.leakage.size_confound).

Each case has an outcome fixed by construction (an exact function of area, a
constant, a planted class effect, a non-linear size effect, a sign reversal), and
the fitted numbers are cross-checked against statsmodels' own formula interface.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_ind

from dermcam import leakage as L
from dermcam.stats import stratified_bootstrap_indices

SPLINE = "cr(lesion_area, df=4, constraints='center')"


def _uniform_case() -> pd.DataFrame:
    """The issue's case: 11 images, areas 0.05..0.60, every third malignant, leakage = 1 - area."""
    area = np.linspace(0.05, 0.60, 11)
    label = (np.arange(11) % 3 == 0).astype(int)
    return pd.DataFrame({"label": label, "lesion_area": area, "leakage": 1.0 - area})


def _table(seed: int, n: int = 379, effect: float = 0.0, f=lambda a: 1.0 - a, sd: float = 0.05,
           shift: float = 0.15) -> pd.DataFrame:
    """About 20 % malignant, malignant lesions larger by ``shift``; leakage = f(area) + effect."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.2).astype(int)
    area = np.clip(rng.normal(0.2 + shift * label, 0.1, n), 0.02, 0.9)
    leak = f(area) + effect * label + rng.normal(0, sd, n)
    return pd.DataFrame({"label": label, "lesion_area": area, "leakage": leak})


# --------------------------------------------------------------------------- degenerate fits


def test_exact_function_of_area_is_explained_not_significant():
    df = _uniform_case()
    out = L.size_confound(df)
    assert out["reason"] == "perfect_fit"
    assert math.isnan(out["class_p_adjusted"]) and all(map(math.isnan, out["class_ci_adjusted"]))
    assert out["class_coef_adjusted"] == 0.0
    assert out["verdict"] == "explained by size" and out["class_effect_survives"] is False
    assert out["equivalence"]["equivalent"] is True and math.isnan(out["equivalence"]["p"])
    assert out["share_explained"] == 1.0
    assert out["verdict_basis"] == "exact fit, no p-value" and "summary" not in out
    # the unadjusted gap is the plain difference of class means
    means = df.groupby("label")["leakage"].mean()
    assert out["class_coef_unadjusted"] == pytest.approx(means[1] - means[0])
    # statsmodels alone would hand back a round-off p-value for the class coefficient
    raw = smf.ols(f"leakage ~ label + {SPLINE}", df).fit()
    assert raw.ssr < 1e-25


def test_ols_fit_flags_perfect_fit_constant_and_leverage_one():
    df = _uniform_case()
    X = np.column_stack([np.ones(11), df["label"], df["lesion_area"]])
    fit = L.ols_fit(df["leakage"], X, ["c", "malignant", "area"])
    assert fit["reason"] == "perfect_fit" and fit["r2"] == pytest.approx(1.0)
    assert fit["coef"]["area"]["coef"] == pytest.approx(-1.0)
    assert all(math.isnan(fit["coef"]["malignant"][k]) for k in ("se", "t", "p", "ci_low"))
    const = L.ols_fit(np.full(11, 0.4), X, ["c", "malignant", "area"])
    assert const["reason"] == "constant_outcome" and math.isnan(const["coef"]["c"]["p"])
    # a column that picks out one row gives that row leverage 1: HC3 divides by zero
    rng = np.random.default_rng(0)
    y = rng.normal(size=11)
    Xl = np.column_stack([np.ones(11), np.r_[1.0, np.zeros(10)]])
    assert L.ols_fit(y, Xl, ["c", "one"])["reason"] == "leverage_one"
    assert L.ols_fit(y, Xl, ["c", "one"], cov_type="nonrobust")["reason"] == ""
    with pytest.raises(ValueError, match="cov_type"):
        L.ols_fit(y, Xl, ["c", "one"], cov_type="HC1")


def test_constant_metric_has_no_p_value_and_no_claim():
    df = _uniform_case().assign(leakage=0.3)
    out = L.size_confound(df)
    assert out["reason"] == "constant_metric" and out["verdict"] == "inconclusive"
    assert out["class_effect_survives"] is False
    assert math.isnan(out["class_p_unadjusted"]) and math.isnan(out["class_p_adjusted"])
    assert out["verdict_basis"] == "unadjusted p" and out["equivalence"]["equivalent"] is None


def test_exact_function_of_area_and_class_keeps_the_exact_gap():
    df = _uniform_case()
    df["leakage"] = 1.0 - df["lesion_area"] - 0.10 * df["label"]
    out = L.size_confound(df)
    assert out["reason"] == "perfect_fit" and math.isnan(out["class_p_adjusted"])
    assert out["class_coef_adjusted"] == pytest.approx(-0.10)
    assert out["verdict"] == "remains" and out["class_effect_survives"] is True


# --------------------------------------------------------------------------- the cases


def test_nonlinear_size_effect_is_not_a_class_effect():
    # leakage depends on area alone, non-linearly; malignant lesions are larger
    for seed in range(3):
        df = _table(seed, f=lambda a: np.exp(-8.0 * a))
        # a straight line in area leaves a class "effect" (the p = 0.0002) ...
        linear = smf.ols("leakage ~ label + lesion_area", df).fit()
        assert linear.pvalues["label"] < 0.01
        # ... the spline does not
        out = L.size_confound(df)
        assert out["verdict"] != "remains" and out["class_effect_survives"] is False
        assert out["class_p_adjusted"] > 0.05
        assert out["spline_df"] == 4


def test_planted_class_effect_remains():
    df = _table(1, effect=-0.10)
    out = L.size_confound(df)
    assert out["verdict"] == "remains" and out["class_effect_survives"] is True
    assert out["class_coef_adjusted"] == pytest.approx(-0.10, abs=0.02)
    lo, hi = out["class_ci_adjusted"]
    assert hi < 0 and out["class_coef_unadjusted"] < out["class_coef_adjusted"]
    assert out["equivalence"]["equivalent"] is False
    assert out["verdict_unadjusted"] == "remains" and out["verdict_basis"] == "unadjusted p"


def test_small_sample_whose_ci_still_holds_the_unadjusted_gap_is_inconclusive():
    # n = 14 with a real -0.10 effect: too few images to tell
    rng = np.random.default_rng(2)
    label = np.r_[np.zeros(8, int), np.ones(6, int)]
    area = np.clip(rng.normal(0.2 + 0.15 * label, 0.1, 14), 0.02, 0.9)
    leak = 1 - area - 0.1 * label + rng.normal(0, 0.1, 14)
    out = L.size_confound(pd.DataFrame({"label": label, "lesion_area": area, "leakage": leak}))
    lo, hi = out["class_ci_adjusted"]
    du = out["class_coef_unadjusted"]
    assert out["class_ci_unadjusted"][1] < 0  # a clear unadjusted gap
    assert lo < 0 < hi and lo < du < hi  # the preconditions of the case
    assert out["verdict"] == "inconclusive" and out["class_effect_survives"] is False
    assert out["spline_df"] == 1 and out["model"] == "leakage ~ 1 + malignant + lesion_area"
    assert out["area_model"] == "linear_few_images"
    assert out["class_p_adjusted"] >= 0.05 and out["equivalence"]["equivalent"] is False


def test_no_unadjusted_difference_is_not_read_as_explained():
    rng = np.random.default_rng(0)
    n = 40
    df = pd.DataFrame({"label": rng.integers(0, 2, n), "lesion_area": rng.uniform(0.05, 0.6, n),
                       "leakage": rng.normal(0.7, 0.1, n)})
    out = L.size_confound(df)
    assert out["class_p_unadjusted"] > 0.5
    assert out["verdict"] == "inconclusive"
    lo, hi = out["class_ci_unadjusted"]
    assert lo < 0 < hi  # no clear unadjusted gap
    assert out["equivalence"]["equivalent"] is False and out["class_p_adjusted"] >= 0.05


def test_sign_reversal_does_not_survive():
    # unadjusted about -0.26 (malignant much larger), adjusted +0.06: size explains
    # more than the whole gap
    df = _table(2, effect=0.06, shift=0.32)
    out = L.size_confound(df)
    assert out["class_coef_unadjusted"] < -0.2 and out["class_ci_unadjusted"][1] < 0
    assert out["class_coef_adjusted"] > 0 and out["class_ci_adjusted"][0] > 0
    assert out["verdict"] == "inconclusive" and out["class_effect_survives"] is False
    assert out["share_explained"] > 1.0
    assert out["class_p_adjusted"] < 0.05 and out["equivalence"]["equivalent"] is False


# --------------------------------------------------------------------------- cross-checks


def test_coefficients_and_hc3_errors_match_statsmodels_formula():
    df = _table(3, effect=-0.03)
    out = L.size_confound(df)
    adj = smf.ols(f"leakage ~ label + {SPLINE}", df).fit(cov_type="HC3", use_t=True)
    unadj = smf.ols("leakage ~ label", df).fit(cov_type="HC3", use_t=True)
    c2 = out["ols_class_area"]["coef"]["malignant"]
    assert c2["coef"] == pytest.approx(adj.params["label"], rel=1e-8)
    assert c2["se"] == pytest.approx(adj.bse["label"], rel=1e-8)
    assert out["class_p_adjusted"] == pytest.approx(adj.pvalues["label"], rel=1e-6)
    np.testing.assert_allclose(out["class_ci_adjusted"], adj.conf_int().loc["label"], rtol=1e-8)
    assert out["class_coef_unadjusted"] == pytest.approx(unadj.params["label"], rel=1e-10)
    assert out["class_p_unadjusted"] == pytest.approx(unadj.pvalues["label"], rel=1e-6)
    assert out["ols_class_area"]["df_resid"] == adj.df_resid == len(df) - 6


def test_hc3_standard_errors_by_hand():
    rng = np.random.default_rng(4)
    X = np.column_stack([np.ones(30), rng.random(30), rng.random(30)])
    y = X @ [0.5, 1.0, -2.0] + rng.normal(0, 0.2 + X[:, 1], 30)  # heteroscedastic
    fit = L.ols_fit(y, X, ["c", "a", "b"])
    xtx_inv = np.linalg.inv(X.T @ X)
    beta = xtx_inv @ X.T @ y
    e = y - X @ beta
    h = np.einsum("ij,jk,ik->i", X, xtx_inv, X)
    cov = xtx_inv @ (X.T * (e / (1 - h)) ** 2) @ X @ xtx_inv  # MacKinnon & White HC3
    np.testing.assert_allclose([fit["coef"][k]["se"] for k in "cab"], np.sqrt(np.diag(cov)),
                               rtol=1e-10)


def test_equivalence_test_matches_statsmodels_ttost():
    # for metric ~ 1 + malignant with classical errors, the TOST on the class coefficient
    # is the pooled two-sample TOST
    rng = np.random.default_rng(5)
    ben, mal = rng.normal(0.60, 0.05, 60), rng.normal(0.605, 0.05, 40)
    y = np.r_[ben, mal]
    X = np.column_stack([np.ones(100), np.r_[np.zeros(60), np.ones(40)]])
    c = L.ols_fit(y, X, ["c", "malignant"], cov_type="nonrobust")["coef"]["malignant"]
    for margin in (0.01, 0.02, 0.05):
        ours = L.confound._tost_p(c["coef"], c["se"], 98, margin)
        ref = ttost_ind(mal, ben, -margin, margin, usevar="pooled")[0]
        assert ours == pytest.approx(ref, rel=1e-9)


def test_equivalence_agrees_with_its_ci_and_share_with_its_bootstrap():
    df = _table(6, effect=-0.02, sd=0.08)
    out = L.size_confound(df, n_boot=60, seed=3)
    eq = out["equivalence"]
    inside = -eq["margin"] < eq["ci"][0] and eq["ci"][1] < eq["margin"]
    assert eq["equivalent"] == inside == (eq["p"] < 0.05)
    assert eq["level"] == pytest.approx(0.90) and eq["margin"] == 0.02
    assert out["share_explained"] == pytest.approx(
        1 - out["class_coef_adjusted"] / out["class_coef_unadjusted"])
    # the bootstrap refits both models on each resample (knots fixed at the full data's)
    design = smf.ols(f"leakage ~ label + {SPLINE}", df).fit().model.exog
    idx = stratified_bootstrap_indices(df["label"].to_numpy(dtype=float), 60, 3)
    shares = []
    for r in idx:
        sub = df.iloc[r]
        gap = sub.loc[sub.label == 1, "leakage"].mean() - sub.loc[sub.label == 0, "leakage"].mean()
        beta = np.linalg.lstsq(design[r], sub["leakage"].to_numpy(), rcond=None)[0]
        shares.append(1 - beta[1] / gap)
    np.testing.assert_allclose(out["share_explained_ci"], np.quantile(shares, [0.025, 0.975]),
                               rtol=1e-8)


def test_margin_and_metric_are_parameters():
    df = _table(7, effect=-0.03, sd=0.03)
    narrow = L.size_confound(df, margin=0.01)
    wide = L.size_confound(df, margin=0.5)
    assert narrow["equivalence"]["margin"] == 0.01 and narrow["verdict"] == "remains"
    assert wide["verdict"] == "explained by size" and wide["equivalence"]["margin"] == 0.5
    # it differs from zero, but by less than the margin
    assert wide["class_p_adjusted"] < 0.05 and wide["equivalence"]["equivalent"] is True
    with pytest.raises(ValueError, match="margin"):
        L.size_confound(df, margin=0)


def test_confound_runs_on_excess_leakage_and_pixel_auroc_of_uniform_heatmaps():
    # uniform heatmaps: leakage = 1 - area exactly, excess leakage 0, pixel AUROC 0.5
    rng = np.random.default_rng(8)
    n, size = 24, 32
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        h, w = rng.integers(4, 28, 2)
        masks[i, :h, :w] = True
    values, _ = L.score_batch(np.ones((n, size, size)), masks)
    df = pd.DataFrame({"label": np.arange(n) % 3 == 0, **values}).astype({"label": int})
    res = L.size_confounds(df)
    assert set(res) == set(L.CONFOUND_METRICS)
    assert res["leakage"]["reason"] == "perfect_fit"
    assert res["leakage"]["verdict"] == "explained by size"
    for metric in ("excess_leakage", "pixel_auroc"):
        assert res[metric]["reason"] == "constant_metric", metric
        assert res[metric]["class_effect_survives"] is False
    # a planted class effect on pixel AUROC, with a margin in AUROC units
    auroc = 0.7 - 0.2 * df["lesion_area"] + 0.08 * df["label"] + rng.normal(0, 0.01, n)
    res = L.size_confounds(df.assign(pixel_auroc=auroc), ["pixel_auroc"],
                           margins={"pixel_auroc": 0.03})
    out = res["pixel_auroc"]
    assert out["metric"] == "pixel_auroc" and out["equivalence"]["margin"] == 0.03
    assert out["verdict"] == "remains"
    assert out["class_coef_adjusted"] == pytest.approx(0.08, abs=0.02)


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("bad", [2, -1, 0.5, "malignant"])
def test_labels_other_than_0_1_are_rejected_in_both_analyses(bad):
    df = _table(9, n=30)
    df["label"] = df["label"].astype(object)
    df.loc[3, "label"] = bad
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        L.size_confound(df)
    with pytest.raises(ValueError, match="0 \\(benign\\) or 1 \\(malignant\\)"):
        L.compare_classes(df, "leakage")


def test_missing_labels_are_dropped_and_counted():
    df = _table(10, n=30)
    df["label"] = df["label"].astype(float)
    df.loc[[0, 1], "label"] = np.nan
    out = L.size_confound(df)
    assert out["n"] == 28 and out["n_dropped"] == 2
    assert out["n_benign"] + out["n_malignant"] == 28
    assert L.compare_classes(df, "leakage")["n_nan"] == 2
    # booleans are labels too
    out_bool = L.size_confound(_table(10, n=30).astype({"label": bool}))
    assert out_bool["n"] == 30


# --------------------------------------------------------------------------- round-off floor


def _uniform_224(n: int = 36, seed: int = 11) -> pd.DataFrame:
    """Uniform heatmaps on n random rectangular 224 x 224 masks, scored by score_batch."""
    rng = np.random.default_rng(seed)
    size = 224
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        h, w = rng.integers(20, 200, 2)
        y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
        masks[i, y0:y0 + h, x0:x0 + w] = True
    values, reasons = L.score_batch(np.ones((n, size, size), np.float32), masks)
    assert (reasons == "").all()
    return pd.DataFrame({"label": (np.arange(n) % 3 == 0).astype(int), **values})


def test_uniform_heatmaps_at_224_give_no_round_off_p_values():
    df = _uniform_224()
    ex = df["excess_leakage"].to_numpy()
    # the case: excess leakage is round-off of 0, not exactly 0, and the relative rule
    # alone (EXACT_RTOL x max|y|) would call that noise variation
    assert 0 < np.ptp(ex) < 1e-12 and np.ptp(ex) > L.EXACT_RTOL * np.abs(ex).max()
    res = L.size_confounds(df)
    assert res["leakage"]["reason"] == "perfect_fit"
    assert res["leakage"]["verdict"] == "explained by size"
    for metric in ("excess_leakage", "pixel_auroc"):
        out = res[metric]
        assert out["reason"] == "constant_metric", metric
        assert out["verdict"] == "inconclusive" and out["class_effect_survives"] is False
        assert math.isnan(out["class_p_adjusted"]) and math.isnan(out["class_p_unadjusted"])
        assert math.isnan(out["equivalence"]["p"]) and math.isnan(out["spearman_rho"])
        assert "summary" not in out
    # no Mann-Whitney on round-off either
    c = L.compare_classes(df, "excess_leakage")
    assert c["reason"] == "constant_metric" and math.isnan(c["p_value"])
    fit = L.ols_fit(ex, np.column_stack([np.ones(len(ex)), df["label"]]), ["c", "m"])
    assert fit["reason"] == "constant_outcome"


def test_absolute_floor_leaves_small_real_variation_tested():
    # a spread of 1e-6 is variation (far above the 1e-9 floor): the fit has a p-value
    rng = np.random.default_rng(12)
    x = rng.random(40)
    y = 1e-6 * (x + rng.normal(0, 0.3, 40))
    fit = L.ols_fit(y, np.column_stack([np.ones(40), x]), ["c", "x"])
    assert fit["reason"] == "" and fit["coef"]["x"]["p"] < 0.05
    assert L.round_off_tol(y) == L.EXACT_ATOL
    assert L.round_off_tol([5.0, 1e3]) == pytest.approx(L.EXACT_RTOL * 1e3)


# --------------------------------------------------------------------------- multiplicity


def _with_family(out: dict, others=(0.6, 0.9)) -> dict:
    """``out`` adjusted as one member of a Benjamini-Hochberg family with ``others``."""
    p_cls = multipletests([out["class_p_adjusted"], *others], method="fdr_bh")[1][0]
    p_eq = multipletests([out["equivalence"]["p"], *others], method="fdr_bh")[1][0]
    out["p_adjusted"], out["adjust_method"] = float(p_cls), "Benjamini-Hochberg"
    out["equivalence"]["p_adjusted"] = float(p_eq)
    return L.adjust_confound(out, 1 + len(others), 1 + len(others))


def test_remains_on_raw_p_but_not_on_adjusted_p_is_inconclusive():
    out = L.size_confound(_table(0, effect=-0.02), n_boot=50)
    raw = out["class_p_adjusted"]
    assert raw < 0.05 and out["verdict"] == "remains"  # the single-test verdict
    _with_family(out)
    assert out["p_adjusted"] >= 0.05  # the case: raw < 0.05 <= adjusted
    assert out["verdict"] == "inconclusive" and out["class_effect_survives"] is False
    assert out["verdict_unadjusted"] == "remains"
    assert out["verdict_basis"] == "Benjamini-Hochberg-adjusted p"
    assert out["family_sizes"] == {"size_confound": 3, "equivalence": 3}
    assert out["class_p_adjusted"] == raw  # the raw p stays beside the adjusted one
    assert out["equivalence"]["p_adjusted"] >= out["equivalence"]["p"]


def test_equivalent_on_raw_tost_but_not_on_adjusted_is_inconclusive():
    out = L.size_confound(_table(1), margin=0.015, n_boot=50)
    assert out["equivalence"]["p"] < 0.05 and out["verdict"] == "explained by size"
    _with_family(out)
    assert out["equivalence"]["p_adjusted"] >= 0.05
    assert out["verdict"] == "inconclusive" and out["verdict_unadjusted"] == "explained by size"
    assert out["equivalence"]["equivalent"] is False
    assert out["equivalence"]["equivalent_unadjusted"] is True
    assert out["verdict_basis"] == "Benjamini-Hochberg-adjusted p"


def test_adjusted_p_below_alpha_keeps_the_verdict():
    out = L.size_confound(_table(1, effect=-0.10), n_boot=50)
    _with_family(out)
    assert out["p_adjusted"] < 0.05 and out["verdict"] == "remains"
    assert out["verdict_basis"] == "Benjamini-Hochberg-adjusted p"
    assert out["class_effect_survives"] is True


# --------------------------------------------------------------------------- model and pooling


def test_result_records_the_model_and_the_pooling_over_explained_classes():
    df = _table(13, n=200)
    df["cam_target"] = np.where(np.arange(200) % 4 == 0, 1 - df["label"], df["label"])
    n_b, n_m = int((df["cam_target"] == 0).sum()), int((df["cam_target"] == 1).sum())
    out = L.size_confound(df, target_mode="predicted", n_boot=20)
    assert out["model"] == "leakage ~ 1 + malignant + cr(lesion_area, df=4)"
    assert out["area_model"] == "spline" and out["spline_df"] == 4
    assert out["pooled_over_targets"] is True and out["target_mode"] == "predicted"
    assert out["explained_classes"] == {"benign": n_b, "malignant": n_m}
    miss = L.missing_at_chance(df.assign(chance_leakage=1 - df["lesion_area"]),
                               ["leakage"])["leakage"]
    assert miss["pooled_over_targets"] is True
    assert miss["explained_classes"] == {"benign": n_b, "malignant": n_m}
    fixed = L.size_confound(df.assign(cam_target=1), n_boot=20)
    assert fixed["pooled_over_targets"] is False
    assert L.missing_at_chance(df.assign(cam_target=1), ["leakage"])["leakage"][
        "pooled_over_targets"] is False
    small = L.size_confound(df.iloc[:25], n_boot=20)
    assert small["area_model"] == "linear_few_images" and small["spline_df"] == 1


def test_cam_target_is_checked_like_the_labels():
    df = _table(14, n=30).assign(cam_target=1)
    df["cam_target"] = df["cam_target"].astype(object)
    df.loc[2, "cam_target"] = 2
    with pytest.raises(ValueError, match="'cam_target'.*0 \\(benign\\) or 1 \\(malignant\\)"):
        L.size_confound(df)
    with pytest.raises(ValueError, match="cam_target"):
        L.compare_classes_by_target(df, "leakage")
    df.loc[2, "cam_target"] = None  # missing is allowed, as for labels
    assert L.compare_classes_by_target(df, "leakage")["n_explained"]["malignant"] == 29
