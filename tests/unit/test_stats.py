"""Tests for dermcam.stats: closed-form cases, scikit-learn/scipy references, brute force."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats as sstats
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, roc_auc_score

from dermcam.stats import (
    adjust_pvalues,
    as_labels,
    bootstrap_ci,
    bootstrap_counts,
    bootstrap_indices,
    delong_test,
    mcnemar,
    stratified_bootstrap_indices,
    summarise_paired_diff,
)


def _scores(n_neg: int, n_pos: int, sep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    return y, rng.normal(size=y.size) + sep * y


# --------------------------------------------------------------------------- resampling


def test_stratified_resamples_keep_class_counts_and_stay_in_class():
    y = np.r_[np.zeros(304, int), np.ones(75, int)]
    np.random.default_rng(0).shuffle(y)
    idx = stratified_bootstrap_indices(y, 500, seed=1)
    assert idx.shape == (500, 379)
    assert (y[idx].sum(axis=1) == 75).all()
    # positions of each class hold only members of that class
    assert (y[idx] == np.sort(y)[None, :]).all()


def test_resamples_are_seeded():
    y = np.r_[np.zeros(30, int), np.ones(10, int)]
    a = stratified_bootstrap_indices(y, 50, seed=7)
    b = stratified_bootstrap_indices(y, 50, seed=7)
    c = stratified_bootstrap_indices(y, 50, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_plain_bootstrap_does_not_keep_counts():
    y = np.r_[np.zeros(30, int), np.ones(10, int)]
    idx = bootstrap_indices(y, 200, seed=0, stratified=False)
    assert idx.shape == (200, 40)
    assert len(np.unique(y[idx].sum(axis=1))) > 1


def test_bootstrap_counts_are_multiplicities():
    idx = np.array([[0, 0, 2], [1, 2, 2]])
    np.testing.assert_array_equal(bootstrap_counts(idx, 4), [[2, 0, 1, 0], [0, 1, 2, 0]])


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="1-D"):
        stratified_bootstrap_indices(np.zeros((3, 2)), 10, 0)
    with pytest.raises(ValueError, match="n_boot"):
        stratified_bootstrap_indices(np.zeros(3), 0, 0)
    with pytest.raises(ValueError, match="0/1"):
        delong_test([0, 2, 1], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="shape"):
        delong_test([0, 1, 1], [0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="equal length"):
        mcnemar([True, False], [True])


# --------------------------------------------------------------------------- bootstrap CI


def test_bootstrap_ci_covers_point_and_narrows_with_n():
    widths = {}
    for n in (100, 2000):
        rng = np.random.default_rng(n)
        y = (rng.random(n) < 0.3).astype(int)
        pred = np.where(rng.random(n) < 0.8, y, 1 - y)  # ~80 % accurate
        point, lo, hi = bootstrap_ci(accuracy_score, y, pred, n_boot=400, seed=0)
        assert point == pytest.approx(accuracy_score(y, pred))
        assert lo <= point <= hi
        widths[n] = hi - lo
    # width shrinks like 1/sqrt(n): expected ratio sqrt(100/2000) = 0.22
    assert widths[2000] < 0.4 * widths[100]
    # and the n=100 width is near the binomial normal-approximation width
    assert widths[100] == pytest.approx(2 * 1.96 * math.sqrt(0.8 * 0.2 / 100), rel=0.35)


# the undefined AUCs of one-class resamples are what this test is about
@pytest.mark.filterwarnings(
    "ignore:Only one class is present in y_true:sklearn.exceptions.UndefinedMetricWarning")
def test_bootstrap_ci_nan_safe_and_stratification_keeps_auc_defined():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(19, int), 1]
    s = rng.random(20)
    # Plain resampling loses the single positive in (19/20)^20 ~ 36 % of resamples:
    # too many undefined AUCs, so the interval is NaN (not a crash, not a biased CI).
    point, lo, hi = bootstrap_ci(roc_auc_score, y, s, n_boot=300, seed=0, stratified=False)
    assert point == pytest.approx(roc_auc_score(y, s))
    assert math.isnan(lo) and math.isnan(hi)
    # Stratified resampling always keeps both classes.
    point, lo, hi = bootstrap_ci(roc_auc_score, y, s, n_boot=300, seed=0)
    assert lo <= point <= hi


def test_bootstrap_ci_undefined_point_is_nan():
    y = np.zeros(10, int)
    with pytest.warns(UndefinedMetricWarning, match="Only one class"):  # sklearn says so too
        point, lo, hi = bootstrap_ci(roc_auc_score, y, np.linspace(0, 1, 10), n_boot=20)
    assert math.isnan(point) and math.isnan(lo) and math.isnan(hi)


# --------------------------------------------------------------------------- paired bootstrap


def test_summarise_paired_diff_p_value():
    d = np.r_[np.full(90, 1.0), np.full(10, -1.0)]
    out = summarise_paired_diff(0.5, d, alpha=0.05)
    assert out["p"] == pytest.approx(2 * 11 / 101)


# --------------------------------------------------------------------------- DeLong


def _delong_brute_force(y, a, b):
    """DeLong, DeLong & Clarke-Pearson (1988) from the O(m n) kernel definition."""
    pos, neg = y == 1, y == 0
    comps10, comps01, aucs = [], [], []
    for s in (a, b):
        x, z = s[pos][:, None], s[neg][None, :]
        psi = (x > z) + 0.5 * (x == z)
        aucs.append(psi.mean())
        comps10.append(psi.mean(axis=1))  # one per positive
        comps01.append(psi.mean(axis=0))  # one per negative
    s10, s01 = np.cov(np.array(comps10)), np.cov(np.array(comps01))
    cov = s10 / pos.sum() + s01 / neg.sum()
    return aucs, cov


def test_delong_identical_scores():
    y, s = _scores(60, 30, 1.0, 2)
    out = delong_test(y, s, s)
    assert out["diff"] == 0 and out["se"] == 0 and out["z"] == 0 and out["p"] == 1.0
    assert out["auc_a"] == pytest.approx(roc_auc_score(y, s))


def test_delong_matches_brute_force_with_ties():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(70, int), np.ones(30, int)]
    a = np.round(rng.normal(size=100) + y, 1)  # rounding creates ties
    b = np.round(0.5 * a + rng.normal(size=100) + 0.5 * y, 1)
    out = delong_test(y, a, b)
    aucs, cov = _delong_brute_force(y, a, b)
    assert out["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert out["auc_b"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert out["auc_a"] == pytest.approx(aucs[0], abs=1e-12)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert out["se"] == pytest.approx(math.sqrt(var), rel=1e-9)
    assert out["se_a"] == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-9)
    z = (aucs[1] - aucs[0]) / math.sqrt(var)
    assert out["p"] == pytest.approx(2 * sstats.norm.sf(abs(z)), rel=1e-9)
    assert out["lo"] < out["diff"] < out["hi"]


def test_delong_se_agrees_with_bootstrap_se():
    rng = np.random.default_rng(4)
    y = np.r_[np.zeros(250, int), np.ones(80, int)]
    a = rng.normal(size=y.size) + 1.0 * y
    b = 0.6 * a + 0.8 * rng.normal(size=y.size) + 0.5 * y
    out = delong_test(y, a, b)
    idx = stratified_bootstrap_indices(y, 2000, seed=0)
    m, n = int(y.sum()), int((1 - y).sum())

    def aucs(s):  # Mann-Whitney AUC of every resample at once
        ranks = sstats.rankdata(s[idx], axis=1)
        return ((ranks * (y[idx] == 1)).sum(axis=1) - m * (m + 1) / 2) / (m * n)

    auc_a, auc_b = aucs(a), aucs(b)
    assert auc_a[0] == pytest.approx(roc_auc_score(y[idx[0]], a[idx[0]]))
    assert out["se"] == pytest.approx((auc_b - auc_a).std(ddof=1), rel=0.2)
    assert out["se_a"] == pytest.approx(auc_a.std(ddof=1), rel=0.2)
    assert out["se_b"] == pytest.approx(auc_b.std(ddof=1), rel=0.2)


def test_delong_one_class_is_nan():
    out = delong_test(np.zeros(5, int), np.arange(5.0), np.arange(5.0))
    assert out.pop("reason") == "one_class"
    assert all(math.isnan(v) for v in out.values())
    few = delong_test([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3], [0.2, 0.1, 0.3, 0.4])
    assert few["reason"] == "too_few" and few["auc_a"] == 1.0 and math.isnan(few["p"])


def test_delong_zero_variance_is_undefined_not_significant():
    # A perfect model against a constant score: every placement value is constant,
    # so the DeLong variance is exactly 0 while the AUCs differ by 0.5.
    out = delong_test([1, 1, 0, 0], [1, 1, 0, 0], [0.5, 0.5, 0.5, 0.5])
    assert (out["auc_a"], out["auc_b"], out["diff"]) == (1.0, 0.5, -0.5)
    assert out["se"] == 0.0 and out["reason"] == "zero_variance"
    assert all(math.isnan(out[k]) for k in ("z", "p", "lo", "hi"))
    # the Holm adjustment leaves it NaN (not counted, never below alpha)
    adj = adjust_pvalues([out["p"], 0.01], "holm")
    assert math.isnan(adj[0]) and adj[1] == pytest.approx(0.01)
    # equal AUCs with zero variance (two perfect models): exactly no difference
    same = delong_test([1, 1, 0, 0], [1, 1, 0, 0], [5, 4, 1, 2])
    assert same["reason"] == "zero_variance" and same["p"] == 1.0
    assert (same["lo"], same["hi"]) == (0.0, 0.0)
    # a defined test has an empty reason
    y, s = _scores(40, 20, 1.0, 5)
    assert delong_test(y, s, s + np.random.default_rng(6).normal(size=s.size))["reason"] == ""


# --------------------------------------------------------------------------- McNemar


def _table(b: int, c: int, both: int = 50, neither: int = 5):
    ca = np.r_[np.ones(b, bool), np.zeros(c, bool), np.ones(both, bool), np.zeros(neither, bool)]
    cb = np.r_[np.zeros(b, bool), np.ones(c, bool), np.ones(both, bool), np.zeros(neither, bool)]
    return ca, cb


def test_mcnemar_exact_hand_computed():
    out = mcnemar(*_table(10, 2))
    # 2 * P(X <= 2 | n = 12, p = 1/2) = 2 * (1 + 12 + 66) / 4096
    assert out["b"] == 10 and out["c"] == 2 and out["method"] == "exact"
    assert out["p"] == pytest.approx(2 * 79 / 4096)
    assert out["p"] == pytest.approx(0.0386, abs=1e-4)
    assert out["statistic"] == 2


def test_mcnemar_chi2_with_continuity_correction():
    out = mcnemar(*_table(30, 10))
    stat = (abs(30 - 10) - 1) ** 2 / 40  # 9.025
    assert out["method"] == "chi2_cc"
    assert out["statistic"] == pytest.approx(stat)
    assert out["p"] == pytest.approx(math.erfc(math.sqrt(stat / 2)))  # chi2(1) survival


def test_mcnemar_switch_point_and_no_discordance():
    assert mcnemar(*_table(12, 12))["method"] == "exact"  # b + c = 24
    assert mcnemar(*_table(13, 12))["method"] == "chi2_cc"  # b + c = 25
    out = mcnemar(*_table(0, 0))
    assert out["p"] == 1.0 and out["b"] == 0 and out["c"] == 0


def test_mcnemar_is_statsmodels_and_equals_the_former_formulas_exactly():
    """statsmodels' test gives, bit for bit, what the hand-written one did (scipy's
    binomtest below 25 discordant pairs, the corrected chi-square from 25 on), so
    metrics.json is unchanged."""
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    for b in range(40):
        for c in range(40):
            out = mcnemar(*_table(b, c))
            n = b + c
            if n < 25:
                p = 1.0 if n == 0 else min(float(sstats.binomtest(b, n, 0.5).pvalue), 1.0)
                assert (out["statistic"], out["p"]) == (min(b, c), p)
            else:
                stat = (abs(b - c) - 1) ** 2 / n
                assert (out["statistic"], out["p"]) == (stat, float(sstats.chi2.sf(stat, 1)))
            ref = sm_mcnemar([[0, b], [c, 0]], exact=n < 25, correction=True)
            assert out["p"] == float(ref.pvalue)


def test_holm_known_values():
    np.testing.assert_allclose(adjust_pvalues([0.01, 0.04, 0.03], "holm"), [0.03, 0.06, 0.06])
    out = adjust_pvalues([0.5, np.nan, 0.9], "holm")
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [1.0, 1.0])


# --------------------------------------------------------------------------- multiplicity
# (issue #13 item 6) and clustered resampling (item 8)


def test_adjust_pvalues_matches_statsmodels_multipletests_and_skips_nan():
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.001, 0.2, np.nan, 0.03, 0.04, 0.5])
    ok = np.isfinite(p)
    for method in ("holm", "fdr_bh"):
        got = adjust_pvalues(p, method)
        assert math.isnan(got[2])
        np.testing.assert_allclose(got[ok], multipletests(p[ok], method=method)[1])
    # BH by hand: sorted 0.001 0.03 0.04 0.2 0.5 -> min over j >= i of p_j * 5 / j:
    # 0.001*5, min(0.03*5/2, 0.04*5/3), 0.04*5/3, 0.2*5/4, 0.5
    np.testing.assert_allclose(adjust_pvalues([0.001, 0.03, 0.04, 0.2, 0.5], "fdr_bh"),
                               [0.005, 0.2 / 3, 0.2 / 3, 0.25, 0.5])
    with pytest.raises(ValueError):
        adjust_pvalues(p, "bonferroni-ish")
    # Holm is computed here (statsmodels' runs gc.collect(), a fraction of a second each in
    # this process, hence few families): equal on random ones, ties and p near 1 included
    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 7, 20):
        q = np.round(rng.uniform(0, 1, k) ** 3, 2)  # rounding makes ties
        np.testing.assert_allclose(adjust_pvalues(q, "holm"),
                                   multipletests(q, method="holm")[1], rtol=0, atol=1e-15)


def test_cluster_info_singletons_and_missing_ids():
    from dermcam.stats import cluster_info

    assert cluster_info(None) is None
    assert cluster_info(["a", "b", "c"]) is None  # every cluster one image: no clustering
    assert cluster_info(["a", None, float("nan"), ""]) is None  # missing ids: own clusters
    cl, k = cluster_info(["b", "a", "b", None])
    assert k == 3 and cl[0] == cl[2] and len({cl[0], cl[1], cl[3]}) == 3


def test_cluster_bootstrap_with_one_image_per_cluster_is_the_plain_bootstrap():
    from dermcam.stats import bootstrap_indices, cluster_bootstrap_counts

    y = np.array([0, 1, 0, 0, 1, 1, 0, 1, 0, 0])
    for stratified in (True, False):
        plain = bootstrap_counts(bootstrap_indices(y, 50, 3, stratified=stratified), y.size)
        clus = cluster_bootstrap_counts(y, np.arange(y.size), y.size, 50, 3, stratified)
        np.testing.assert_array_equal(plain, clus)


def test_cluster_bootstrap_moves_whole_clusters_and_keeps_cluster_counts_per_class():
    from dermcam.stats import cluster_info, resampling_weights

    # clusters: a (3 benign), b (2 malignant), c (1 benign + 1 malignant -> malignant),
    # d (1 benign), e (2 benign)
    groups = ["a", "a", "a", "b", "b", "c", "c", "d", "e", "e"]
    y = np.array([0, 0, 0, 1, 1, 0, 1, 0, 0, 0])
    w = resampling_weights(y, 200, seed=1, groups=groups)
    cl, k = cluster_info(groups)
    assert w.shape == (200, 10) and k == 5
    for c in range(k):  # one weight per cluster in every resample
        members = np.flatnonzero(cl == c)
        assert (w[:, members] == w[:, members[:1]]).all()
    per_cluster = np.stack([w[:, np.flatnonzero(cl == c)[0]] for c in range(k)], axis=1)
    # malignant clusters b, c (2 of them) and benign a, d, e (3): counts kept per resample
    np.testing.assert_array_equal(per_cluster[:, [1, 2]].sum(axis=1), 2)
    np.testing.assert_array_equal(per_cluster[:, [0, 3, 4]].sum(axis=1), 3)


def test_cluster_bootstrap_ci_ignores_duplicated_images_naive_one_shrinks():
    from dermcam.leakage import bootstrap_mean_ci

    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    k = 4
    dup = np.repeat(x, k)  # every image k times, e.g. k photos of one lesion
    groups = np.repeat([f"lesion{i:03d}" for i in range(x.size)], k)
    single = bootstrap_mean_ci(x, n_boot=2000, seed=5)
    clustered = bootstrap_mean_ci(dup, n_boot=2000, seed=5, groups=groups)
    naive = bootstrap_mean_ci(dup, n_boot=2000, seed=5)
    # same cluster draws as the single copy's image draws: the same interval
    np.testing.assert_allclose(clustered, single, rtol=0, atol=1e-12)
    w_single, w_naive = single[1] - single[0], naive[1] - naive[0]
    assert w_naive / w_single == pytest.approx(1 / math.sqrt(k), rel=0.15)  # falsely narrow
    # groups that are all distinct change nothing
    assert bootstrap_mean_ci(x, n_boot=500, seed=2, groups=[str(i) for i in range(60)]) == \
        bootstrap_mean_ci(x, n_boot=500, seed=2)


# --------------------------------------------------------------------------- labels


def test_one_label_check_with_and_without_missing_labels():
    import pandas as pd

    from dermcam import leakage as L

    np.testing.assert_array_equal(as_labels([0, 1, True, 1.0]), [0, 1, 1, 1])
    assert as_labels([0, 1]).dtype == np.int64
    got = as_labels(pd.Series([0, None, 1], dtype=object), "label", allow_missing=True)
    np.testing.assert_array_equal(got, [0.0, np.nan, 1.0])
    nullable = as_labels(pd.array([1, pd.NA, 0], dtype="Int64"), allow_missing=True)
    np.testing.assert_array_equal(nullable, [1.0, np.nan, 0.0])
    with pytest.raises(ValueError, match="missing labels are not allowed"):
        as_labels([0, np.nan, 1])
    for bad in (2, -1, 0.5, "malignant", "1"):
        with pytest.raises(ValueError, match=f"found 1 value.*{re.escape(repr(bad))}"):
            as_labels(np.array([0, bad, 1], dtype=object), allow_missing=True)
    with pytest.raises(ValueError, match=r"1-D \(N,\), got shape \(2, 2\)"):
        as_labels(np.zeros((2, 2)))
    # the same rule serves the DeLong test (no missing) and the attention tables (missing
    # allowed): a 2 is refused by both, a missing label only by the former
    with pytest.raises(ValueError, match="0 \\(benign\\) or 1 \\(malignant\\)"):
        delong_test([0, 2, 1, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="missing"):
        delong_test([0, np.nan, 1, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])
    df = pd.DataFrame({"label": [0, 0, 1, 1, None], "x": [0.1, 0.2, 0.3, 0.4, 0.5]})
    assert L.compare_classes(df, "x")["n_nan"] == 1
    with pytest.raises(ValueError, match="'label'"):
        L.compare_classes(df.assign(label=[0, 0, 1, 2, 1]), "x")
