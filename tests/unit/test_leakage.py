"""Known-answer tests for dermcam.leakage: metrics, undefined cases, statistics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from dermcam import leakage as L

H = W = 12


def _disc_masks(n=3, h=H, w=W):
    """Three masks of different sizes: a 4x4, a 6x6 and an 8x10 block."""
    m = np.zeros((3, h, w), bool)
    m[0, 2:6, 3:7] = True
    m[1, 3:9, 3:9] = True
    m[2, 1:9, 1:11] = True
    return m[:n]


# ---------------------------------------------------------------------------
# Closed-form cases
# ---------------------------------------------------------------------------

def test_uniform_heatmap_scores_chance():
    masks = _disc_masks()
    cams = np.full(masks.shape, 0.3, dtype=np.float32)
    v, reasons = L.score_batch(cams, masks)
    area = masks.reshape(3, -1).mean(axis=1)
    assert list(reasons) == ["", "", ""]
    np.testing.assert_allclose(v["lesion_area"], area)
    np.testing.assert_allclose(v["chance_leakage"], 1 - area)
    np.testing.assert_allclose(v["leakage"], 1 - area)
    np.testing.assert_allclose(v["excess_leakage"], 0, atol=1e-12)
    np.testing.assert_allclose(v["localisation_gain"], 1)
    np.testing.assert_allclose(v["pixel_auroc"], 0.5)
    # Tie-fair rank accuracy and pointing game score chance (= area), not a free hit.
    np.testing.assert_allclose(v["rank_accuracy"], area)
    np.testing.assert_allclose(v["pointing_game"], area)
    np.testing.assert_allclose(v["inside_score"], 0.3, rtol=1e-6)
    np.testing.assert_allclose(v["outside_score"], 0.3, rtol=1e-6)


def test_heatmap_equal_to_mask_is_perfect():
    masks = _disc_masks()
    v, reasons = L.score_batch(masks.astype(np.float32), masks)
    area = masks.reshape(3, -1).mean(axis=1)
    assert list(reasons) == ["", "", ""]
    np.testing.assert_array_equal(v["leakage"], 0.0)
    np.testing.assert_array_equal(v["pixel_auroc"], 1.0)
    np.testing.assert_array_equal(v["rank_accuracy"], 1.0)
    np.testing.assert_array_equal(v["pointing_game"], 1.0)
    np.testing.assert_allclose(v["excess_leakage"], -(1 - area))
    np.testing.assert_allclose(v["localisation_gain"], 1 / area)
    np.testing.assert_array_equal(v["outside_score"], 0.0)
    np.testing.assert_array_equal(v["inside_score"], 1.0)
    # bool heatmaps are accepted too
    np.testing.assert_array_equal(L.leakage(masks, masks), 0.0)


def test_inverted_heatmap_auroc_zero():
    masks = _disc_masks()
    cams = (~masks).astype(np.float64)
    np.testing.assert_array_equal(L.pixel_auroc(cams, masks), 0.0)
    np.testing.assert_array_equal(L.leakage(cams, masks), 1.0)
    np.testing.assert_array_equal(L.pointing_game(cams, masks), 0.0)
    # The 80-pixel lesion outnumbers the 64 background pixels: the last 16 top-k slots
    # go to the tied zeros, all of them lesion.
    k = masks.reshape(3, -1).sum(1)
    np.testing.assert_allclose(L.rank_accuracy(cams, masks), np.maximum(0, 2 * k - H * W) / k)


def test_worked_example_3x3():
    # cam               mask
    # 1 2 0             0 1 0
    # 0 4 2             0 1 1
    # 0 2 0             0 0 0
    cam = np.array([[1, 2, 0], [0, 4, 2], [0, 2, 0]], dtype=np.float32)[None]
    mask = np.array([[0, 1, 0], [0, 1, 1], [0, 0, 0]], dtype=np.uint8)[None]
    # inside: 2 + 4 + 2 = 8 over 3 pixels; outside: 1 + 2 = 3 over 6 pixels; total 11
    assert L.leakage(cam, mask)[0] == pytest.approx(3 / 11)
    assert L.inside_score(cam, mask)[0] == pytest.approx(8 / 3)
    assert L.outside_score(cam, mask)[0] == pytest.approx(3 / 6)
    assert L.lesion_area(mask)[0] == pytest.approx(1 / 3)
    assert L.chance_leakage(mask)[0] == pytest.approx(2 / 3)
    assert L.excess_leakage(cam, mask)[0] == pytest.approx(3 / 11 - 2 / 3)
    assert L.localisation_gain(cam, mask)[0] == pytest.approx((8 / 11) / (1 / 3))
    # AUROC: 3 x 6 pairs; each lesion 2 beats five background pixels and ties one
    # (5.5 each), the 4 beats all six: (5.5 + 5.5 + 6) / 18.
    assert L.pixel_auroc(cam, mask)[0] == pytest.approx(17 / 18)
    # Top-3 = the 4 plus two of three tied 2s (two of those in the lesion):
    # expected hits 1 + 2 * 2/3, over k = 3.
    assert L.rank_accuracy(cam, mask)[0] == pytest.approx(7 / 9)
    # Stable raster order takes the two lesion 2s first (positions 1 and 5).
    assert L.rank_accuracy(cam, mask, ties="stable")[0] == pytest.approx(1.0)
    assert L.pointing_game(cam, mask)[0] == 1.0


def test_pointing_game_ties_share():
    cam = np.zeros((1, 2, 4), np.float32)
    cam[0, 0, :] = 1.0  # four tied maxima, one inside the lesion
    mask = np.zeros((1, 2, 4), bool)
    mask[0, 0, 0] = True
    mask[0, 1, :] = True
    assert L.pointing_game(cam, mask)[0] == pytest.approx(0.25)


def test_pixel_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    cams = rng.integers(0, 6, size=(25, 9, 11)).astype(np.float32)  # many ties
    cams[:5] = 0.0
    cams[:5, 2:4, 2:5] = rng.integers(1, 3, size=(5, 2, 3))
    masks = rng.random((25, 9, 11)) < 0.35
    ref = [roc_auc_score(m.ravel(), c.ravel()) for c, m in zip(cams, masks, strict=True)]
    np.testing.assert_allclose(L.pixel_auroc(cams, masks), ref, atol=1e-12)
    np.testing.assert_allclose(L.pixel_auroc(cams.astype(np.float64), masks), ref, atol=1e-12)
    # and the rank formula with scipy's average ranks
    r = stats.rankdata(cams.reshape(25, -1), axis=1)
    m = masks.reshape(25, -1)
    npos, nneg = m.sum(1), (~m).sum(1)
    u = (r * m).sum(1) - npos * (npos + 1) / 2
    np.testing.assert_allclose(L.pixel_auroc(cams, masks), u / (npos * nneg), atol=1e-12)


def test_continuous_random_against_brute_force():
    rng = np.random.default_rng(4)
    cams = rng.random((6, 7, 8))
    masks = rng.random((6, 7, 8)) < 0.4
    for c, m, ra, pg in zip(cams, masks, L.rank_accuracy(cams, masks),
                            L.pointing_game(cams, masks), strict=True):
        k = m.sum()
        top = np.argsort(-c.ravel())[:k]
        assert ra == pytest.approx(m.ravel()[top].mean())
        assert pg == float(m.ravel()[np.argmax(c)])


# ---------------------------------------------------------------------------
# Quantus cross-checks (not the weighted AttributionLocalisation: known axis bug)
# ---------------------------------------------------------------------------

def _quantus(metric_cls, cams, masks):
    n = cams.shape[0]
    x = np.zeros((n, 3, *cams.shape[1:]), np.float32)
    metric = metric_cls(normalise=False, abs=False, disable_warnings=True)
    out = metric(model=None, x_batch=x, y_batch=np.zeros(n, int), a_batch=cams[:, None],
                 s_batch=masks[:, None].astype(np.float32), channel_first=True)
    return np.asarray(out, dtype=float)


def test_quantus_cross_check():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(5)
    cams = rng.random((8, 10, 10))  # continuous: no ties, so rank accuracy is unambiguous
    masks = rng.random((8, 10, 10)) < 0.3
    rma = _quantus(quantus.RelevanceMassAccuracy, cams, masks)
    np.testing.assert_allclose(1 - L.leakage(cams, masks), rma, atol=1e-12)
    np.testing.assert_allclose(L.localisation_gain(cams, masks) * L.lesion_area(masks), rma,
                               atol=1e-12)
    rra = _quantus(quantus.RelevanceRankAccuracy, cams, masks)
    np.testing.assert_allclose(L.rank_accuracy(cams, masks), rra, atol=1e-12)
    np.testing.assert_allclose(L.rank_accuracy(cams, masks, ties="stable"), rra, atol=1e-12)
    # Quantus AUC uses roc_curve + trapezoids, which handles ties like average ranks.
    tied = np.round(cams * 4).astype(np.float32)
    auc = _quantus(quantus.AUC, tied, masks)
    np.testing.assert_allclose(L.pixel_auroc(tied, masks), auc, atol=1e-12)


# ---------------------------------------------------------------------------
# Undefined cases and input checks
# ---------------------------------------------------------------------------

def test_undefined_cases_nan_and_reason():
    masks = np.zeros((7, 4, 4), bool)
    masks[:, 1:3, 1:3] = True
    cams = np.ones((7, 4, 4), np.float32)
    masks[1] = False                  # empty mask
    masks[2] = True                   # full mask
    cams[3] = 0.0                     # zero heatmap
    cams[4, 0, 0] = np.nan            # non-finite
    cams[5, 0, 0] = -0.5              # negative
    cams[6, 0, 0] = np.inf
    v, reasons = L.score_batch(cams, masks)
    assert list(reasons) == ["", "empty_mask", "full_mask", "zero_heatmap",
                             "nonfinite_heatmap", "negative_heatmap", "nonfinite_heatmap"]
    assert reasons.dtype == object
    for i, reason in enumerate(reasons):
        blank = L.UNDEFINED_WHEN.get(reason, frozenset())
        for name, arr in v.items():
            assert np.isnan(arr[i]) == (name in blank), (i, reason, name)
    # mask-only descriptors always defined
    np.testing.assert_allclose(v["lesion_area"], [0.25, 0, 1, 0.25, 0.25, 0.25, 0.25])
    # the empty mask's outside score and the full mask's inside score are real numbers
    assert v["outside_score"][1] == 1.0 and v["inside_score"][2] == 1.0
    # the single-metric functions follow the same rules
    np.testing.assert_array_equal(np.isnan(L.leakage(cams, masks)), np.isnan(v["leakage"]))
    assert np.isnan(L.rank_accuracy(cams, masks, ties="stable")[1:]).all()


def test_negative_zero_is_not_negative():
    masks = _disc_masks(1)
    cams = np.where(masks, 1.0, -0.0).astype(np.float32)
    v, reasons = L.score_batch(cams, masks)
    assert reasons[0] == ""
    assert v["pixel_auroc"][0] == 1.0 and v["leakage"][0] == 0.0


def test_shape_and_value_errors():
    c = np.ones((2, 4, 4))
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        L.leakage(np.ones((4, 4)), np.ones((4, 4), bool))
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(2, 4, 5\)"):
        L.score_batch(c, np.ones((2, 4, 5), bool))
    with pytest.raises(ValueError, match=r"\(2, 0, 4\)"):
        L.score_batch(np.ones((2, 0, 4)), np.ones((2, 0, 4), bool))
    with pytest.raises(ValueError, match="255"):
        L.leakage(c, np.full((2, 4, 4), 255, np.uint8))
    with pytest.raises(ValueError, match="ties"):
        L.rank_accuracy(c, np.ones((2, 4, 4), bool), ties="random")
    with pytest.raises(ValueError, match="dtype"):
        L.leakage(c.astype(complex), np.ones((2, 4, 4), bool))


def test_empty_batch():
    v, reasons = L.score_batch(np.zeros((0, 5, 5)), np.zeros((0, 5, 5), bool))
    assert reasons.shape == (0,) and all(a.shape == (0,) for a in v.values())


# ---------------------------------------------------------------------------
# Registry, batch scoring and speed
# ---------------------------------------------------------------------------

def test_registry_and_score_batch_agree():
    rng = np.random.default_rng(6)
    cams = rng.random((5, 10, 10)).astype(np.float32)
    masks = _disc_masks(3, 10, 10)
    masks = np.concatenate([masks, masks[:2]])
    v, _ = L.score_batch(cams, masks)
    assert list(v) == list(L.METRICS)
    for name, (func, higher, definition) in L.METRICS.items():  # a 3-tuple
        assert higher in (True, False, None) and definition
        assert v[name].shape == (5,) and v[name].dtype == np.float64
        got = func(masks) if name in ("lesion_area", "chance_leakage") else func(cams, masks)
        np.testing.assert_allclose(got, v[name], err_msg=name)
    assert L.METRICS["leakage"].higher_is_better is False
    assert L.CHANCE["pixel_auroc"] == 0.5 and set(L.CHANCE) <= set(L.METRICS)


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(7)
    cams = np.round(rng.random((37, 9, 9)) * 3).astype(np.float32)
    masks = rng.random((37, 9, 9)) < 0.4
    whole, _ = L.score_batch(cams, masks)
    monkeypatch.setattr(L.metrics, "_CHUNK", 5)
    parts, _ = L.score_batch(cams, masks)
    for k in whole:
        np.testing.assert_array_equal(whole[k], parts[k])


def test_score_batch_at_full_size_matches_the_definitions():
    """96 heatmaps of 224 x 224 (several chunks), 30 % exact zeros as ReLU'd Grad-CAM
    gives: each score equals its definition computed directly, image by image.
    (Its speed is measured in benchmarks/bench_explain.py, not asserted here.)"""
    rng = np.random.default_rng(8)
    n = 96
    cams = rng.random((n, 224, 224), dtype=np.float32)
    cams[cams < 0.3] = 0.0
    masks = rng.random((n, 224, 224)) < 0.3
    v, reasons = L.score_batch(cams, masks)
    assert (reasons == "").all()
    c, m = cams.reshape(n, -1).astype(np.float64), masks.reshape(n, -1)
    area = m.mean(axis=1)
    leak = (c * ~m).sum(axis=1) / c.sum(axis=1)
    np.testing.assert_allclose(v["lesion_area"], area)
    np.testing.assert_allclose(v["leakage"], leak, rtol=1e-6)
    np.testing.assert_allclose(v["excess_leakage"], leak - (1 - area), atol=1e-6)
    np.testing.assert_allclose(v["localisation_gain"], (1 - leak) / area, rtol=1e-5)
    np.testing.assert_allclose(v["inside_score"], (c * m).sum(axis=1) / m.sum(axis=1),
                               rtol=1e-6)
    np.testing.assert_allclose(v["outside_score"], (c * ~m).sum(axis=1) / (~m).sum(axis=1),
                               rtol=1e-6)
    k = m.sum(axis=1)
    for i in range(n):
        top = c[i].max()
        assert v["pointing_game"][i] == pytest.approx(m[i][c[i] == top].mean())
        kth = np.sort(c[i])[-k[i]]  # the k-th largest value; ties there share the slots left
        above, tied = c[i] > kth, c[i] == kth
        hits = m[i][above].sum() + (k[i] - above.sum()) * m[i][tied].mean()
        assert v["rank_accuracy"][i] == pytest.approx(hits / k[i], rel=1e-9)
    for i in (0, 37, n - 1):
        assert v["pixel_auroc"][i] == pytest.approx(roc_auc_score(m[i], c[i]), rel=1e-9)


def test_import_is_light():
    code = ("import sys, dermcam.leakage; "
            "assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# Artifacts
# ---------------------------------------------------------------------------

def test_artifact_mass_label_map_and_stack():
    cams = np.ones((2, 4, 4), np.float32)
    cams[0, 0, :] = 3.0               # image 0: 4 pixels of 3 + 12 pixels of 1
    labels = np.zeros((2, 4, 4), np.int64)
    labels[0, 0, :2] = 1              # hair on two pixels of value 3
    labels[0, 3, :] = 2               # ruler on four pixels of value 1
    labels[1, 0, 0] = 1               # image 1: hair on one pixel, no ruler
    total0 = 4 * 3 + 12 * 1
    out = L.artifact_mass(cams, labels, {"hair": 1, "ruler": 2})
    np.testing.assert_allclose(out["hair"], [6 / total0, 1 / 16])
    assert out["ruler"][0] == pytest.approx(4 / total0) and np.isnan(out["ruler"][1])
    stack = np.stack([labels == 1, labels == 2], axis=1)
    out2 = L.artifact_mass(cams, stack, ["hair", "ruler"])
    for k in out:
        np.testing.assert_array_equal(out[k], out2[k])
    out3 = L.artifact_mass(np.zeros_like(cams), labels, [1])
    assert np.isnan(out3[1]).all()
    with pytest.raises(ValueError, match="A=2"):
        L.artifact_mass(cams, stack, ["hair"])
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        L.artifact_mass(cams, labels[:, :3], [1])


def test_artifact_summary():
    df = pd.DataFrame({
        "model": ["a"] * 4, "method": ["gradcam"] * 4,
        "artifact_hair": [1, 1, 0, 0], "mass_hair": [0.2, 0.4, np.nan, np.nan],
        "excess_leakage": [0.1, 0.3, -0.1, np.nan],
    })
    s = L.artifact_summary(df, ["hair"])
    present = s[s["present"]].iloc[0]
    absent = s[~s["present"]].iloc[0]
    assert present["n"] == 2 and present["mean_mass"] == pytest.approx(0.3)
    assert present["mean_excess_leakage"] == pytest.approx(0.2)
    assert absent["n"] == 2 and np.isnan(absent["mean_mass"]) and absent["n_excess"] == 1
    assert absent["mean_excess_leakage"] == pytest.approx(-0.1)


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------

def test_bootstrap_ci_contains_mean_and_narrows():
    rng = np.random.default_rng(9)
    small = rng.normal(0.5, 0.1, 20)
    big = rng.normal(0.5, 0.1, 2000)
    lo_s, hi_s = L.bootstrap_mean_ci(small, n_boot=1000, seed=0)
    lo_b, hi_b = L.bootstrap_mean_ci(big, n_boot=1000, seed=0)
    assert lo_s < small.mean() < hi_s and lo_b < big.mean() < hi_b
    assert (hi_b - lo_b) < (hi_s - lo_s) / 5
    assert L.bootstrap_mean_ci(small, seed=0) == L.bootstrap_mean_ci(small, seed=0)
    assert np.isnan(L.bootstrap_mean_ci([1.0, np.nan])).all()


def test_summarise_counts_nans_and_matches_pandas():
    rng = np.random.default_rng(10)
    df = pd.DataFrame({
        "model": np.repeat(["a", "b"], 30), "method": "gradcam",
        "label": np.tile([0, 1], 30), "leakage": rng.random(60),
    })
    df.loc[[0, 2, 4], "leakage"] = np.nan
    s = L.summarise(df, ["leakage"], n_boot=200)
    assert len(s) == 4
    row = s[(s.model == "a") & (s.label == 0)].iloc[0]
    ref = df[(df.model == "a") & (df.label == 0)]["leakage"]
    assert row["n"] == 12 and row["n_nan"] == 3
    assert row["mean"] == pytest.approx(ref.mean()) and row["median"] == pytest.approx(ref.median())
    assert row["ci_low"] < row["mean"] < row["ci_high"]
    assert row["higher_is_better"] == False  # noqa: E712  (None would fail)
    overall = L.summarise(df, "leakage", by=(), n_boot=100)
    assert overall["n"].iloc[0] == 57 and overall["n_nan"].iloc[0] == 3
    with pytest.raises(ValueError, match="nope"):
        L.summarise(df, ["nope"])


def test_summarise_uses_wilson_for_hit_or_miss_scores():
    from statsmodels.stats.proportion import proportion_confint

    hits = np.r_[np.ones(10), np.ones(7), np.zeros(3)]
    df = pd.DataFrame({"model": "m", "method": "gradcam", "label": np.repeat([0, 1], 10),
                       "pointing_game": hits, "leakage": np.linspace(0.1, 0.9, 20)})
    s = L.summarise(df, ["pointing_game", "leakage"], n_boot=200).set_index(["label", "metric"])
    perfect = s.loc[(0, "pointing_game")]  # 10 hits of 10: a bootstrap would say [1, 1]
    assert perfect["ci_method"] == "wilson" and perfect["mean"] == 1.0
    assert perfect["ci_high"] == pytest.approx(1.0)
    assert perfect["ci_low"] == pytest.approx(10 / (10 + 1.959964 ** 2), rel=1e-6)
    seven = s.loc[(1, "pointing_game")]
    ref = proportion_confint(7, 10, alpha=0.05, method="wilson")
    assert (seven["ci_low"], seven["ci_high"]) == pytest.approx(ref)
    assert s.loc[(1, "leakage"), "ci_method"] == "percentile bootstrap"
    # tied maxima give fractional pointing-game scores: no longer a proportion
    frac = L.summarise(df.assign(pointing_game=np.r_[0.5, hits[1:]]), ["pointing_game"],
                       by=("label",), n_boot=200)
    assert frac["ci_method"].tolist() == ["percentile bootstrap", "wilson"]


def test_compare_classes_against_scipy():
    rng = np.random.default_rng(11)
    ben = rng.normal(0.6, 0.1, 40)
    mal = rng.normal(0.5, 0.1, 30)
    df = pd.DataFrame({"label": [0] * 40 + [1] * 30 + [1], "leakage": [*ben, *mal, np.nan]})
    out = L.compare_classes(df, "leakage")
    ref = stats.mannwhitneyu(mal, ben, alternative="two-sided")
    assert out["p_value"] == pytest.approx(ref.pvalue)
    assert out["u_statistic"] == pytest.approx(ref.statistic)
    pairs = (mal[:, None] > ben[None, :]).mean() + 0.5 * (mal[:, None] == ben[None, :]).mean()
    assert out["cles"] == pytest.approx(pairs)
    assert out["rank_biserial"] == pytest.approx(2 * pairs - 1)
    assert out["median_benign"] == pytest.approx(np.median(ben))
    assert (out["n_benign"], out["n_malignant"], out["n_nan"]) == (40, 30, 1)
    assert L.compare_classes(df[df.label == 0], "leakage")["reason"] == "too_few"


def test_ols_against_hand_calculation():
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([1.0, 2.9, 5.2, 7.1, 8.8, 11.3])
    fit = L.ols_fit(y, np.column_stack([np.ones_like(x), x]), ["intercept", "x"],
                    cov_type="nonrobust")
    assert fit["cov_type"] == "nonrobust" and fit["reason"] == ""
    # closed form simple regression
    sxx = ((x - x.mean()) ** 2).sum()
    b = ((x - x.mean()) * (y - y.mean())).sum() / sxx
    a = y.mean() - b * x.mean()
    resid = y - (a + b * x)
    s2 = (resid ** 2).sum() / (len(x) - 2)
    se_b = np.sqrt(s2 / sxx)
    se_a = np.sqrt(s2 * (1 / len(x) + x.mean() ** 2 / sxx))
    assert fit["coef"]["x"]["coef"] == pytest.approx(b)
    assert fit["coef"]["intercept"]["coef"] == pytest.approx(a)
    assert fit["coef"]["x"]["se"] == pytest.approx(se_b)
    assert fit["coef"]["intercept"]["se"] == pytest.approx(se_a)
    lr = stats.linregress(x, y)
    assert fit["coef"]["x"]["p"] == pytest.approx(lr.pvalue)
    assert fit["coef"]["x"]["se"] == pytest.approx(lr.stderr)
    q = stats.t.ppf(0.975, 4)
    assert fit["coef"]["x"]["ci_low"] == pytest.approx(b - q * se_b)
    assert fit["r2"] == pytest.approx(lr.rvalue ** 2)
    # multiple regression coefficients equal numpy least squares
    rng = np.random.default_rng(12)
    X = np.column_stack([np.ones(50), rng.random(50), rng.random(50)])
    yy = X @ [0.2, -0.5, 1.5] + rng.normal(0, 0.1, 50)
    fit2 = L.ols_fit(yy, X, ["c", "a", "b"])
    ref = np.linalg.lstsq(X, yy, rcond=None)[0]
    np.testing.assert_allclose([fit2["coef"][k]["coef"] for k in "cab"], ref)
    with pytest.raises(ValueError, match="rank"):
        L.ols_fit(yy, np.column_stack([X, X[:, 1]]), ["c", "a", "b", "a2"])


def _confound_table(class_effect: float, seed: int = 13, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = np.repeat([0, 1], n // 2)
    area = np.where(label == 1, rng.uniform(0.25, 0.6, n), rng.uniform(0.05, 0.35, n))
    leak = 1 - 0.9 * area + class_effect * label + rng.normal(0, 0.03, n)
    return pd.DataFrame({"label": label, "lesion_area": area, "leakage": leak})


def test_size_confound_detects_pure_size_effect():
    out = L.size_confound(_confound_table(class_effect=0.0))
    assert out["class_p_unadjusted"] < 1e-6 and out["class_coef_unadjusted"] < 0
    assert out["class_effect_survives"] is False
    assert out["class_p_adjusted"] > 0.05
    assert out["spearman_rho"] < -0.8 and out["pearson_p"] < 1e-6
    lo, hi = out["class_ci_adjusted"]
    assert lo < 0 < hi
    # noise sd 0.03, n = 400: the adjusted gap is pinned inside +-0.02
    assert out["equivalence"]["equivalent"] is True and out["equivalence"]["p"] < 0.05
    assert out["verdict"] == "explained by size"
    assert out["verdict_unadjusted"] == "explained by size"
    assert out["verdict_basis"] == "unadjusted p"
    assert out["share_explained"] == pytest.approx(1.0, abs=0.1)
    assert out["model"] == "leakage ~ 1 + malignant + cr(lesion_area, df=4)"
    assert out["area_model"] == "spline" and out["spline_df"] == 4
    assert out["ols_class_area"]["cov_type"] == "HC3"


def test_size_confound_keeps_a_real_class_effect():
    out = L.size_confound(_confound_table(class_effect=-0.05))
    assert out["class_effect_survives"] is True and out["verdict"] == "remains"
    assert out["class_coef_adjusted"] == pytest.approx(-0.05, abs=0.015)
    assert out["verdict_unadjusted"] == "remains"
    assert out["equivalence"]["equivalent"] is False


def test_size_confound_too_few_rows():
    df = pd.DataFrame({"label": [0, 1], "lesion_area": [0.1, 0.2], "leakage": [0.5, np.nan]})
    out = L.size_confound(df)
    assert out["class_effect_survives"] is None and out["reason"] == "ols_failed"


