"""Tests for dermcam.evaluation: hand-computed cases, scikit-learn references, the report dict."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from dermcam.evaluation import (
    THRESHOLD_FREE_METRICS,
    THRESHOLD_METRICS,
    batch_ranking_metrics,
    batch_threshold_metrics,
    classification_metrics,
    evaluate_predictions,
    expected_calibration_error,
    format_comparison,
    metrics_table,
    reliability_curve,
    specificity_at_sensitivity,
    youden_threshold,
)
from dermcam.stats import bootstrap_ci, bootstrap_counts, stratified_bootstrap_indices
from dermcam.views import pairwise_table

# 10 images, hand-worked below: 4 malignant, 6 benign; at 0.5 -> TP 3, FN 1, FP 1, TN 5.
Y10 = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P10 = np.array([0.95, 0.85, 0.65, 0.35, 0.75, 0.42, 0.25, 0.15, 0.05, 0.48])


def _isic_like(
    n_neg=304,
    n_pos=75,
    models=(("resnet18", 1.2), ("efficientnet_b0", 1.3), ("mobilenet_v2", 1.0)),
    seed=0,
) -> pd.DataFrame:
    """Long predictions table shaped like the ISIC 2016 test set."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    ids = [f"ISIC_{i:07d}" for i in range(y.size)]
    frames = []
    for name, sep in models:
        p = 1 / (1 + np.exp(-(rng.normal(size=y.size) + sep * y - 1.5)))
        frames.append(
            pd.DataFrame({"image_id": ids, "model": name, "label": y, "prob_malignant": p})
        )
    return pd.concat(frames, ignore_index=True)


def _thresholds(df: pd.DataFrame, t: float = 0.3) -> dict[str, float]:
    return dict.fromkeys(df["model"].unique(), t)


# --------------------------------------------------------------------------- hand-computed


def test_ten_sample_example_by_hand():
    m = classification_metrics(Y10, P10, 0.5)
    assert m["confusion_matrix"] == [[5, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert m["precision_malignant"] == pytest.approx(3 / 4)
    assert m["f1_malignant"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["precision_benign"] == pytest.approx(5 / 6)
    assert m["f1_benign"] == pytest.approx(2 * 5 / (2 * 5 + 1 + 1))
    # 20 of the 24 (malignant, benign) pairs are ranked correctly
    assert m["roc_auc"] == pytest.approx(20 / 24)
    # ranked: P P N P N N P ... -> precision at each hit 1, 1, 3/4, 4/7
    assert m["average_precision"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 7) / 4)
    # 100 % sensitivity needs threshold 0.35, which lets 3 of 6 benign through
    assert m["spec_at_95_sens"] == pytest.approx(0.5)
    # per-bin |sum(y - p)|: .05+.15+.75+.35+(.48+.42)+.65+.25+.15+.05 = 3.30
    assert m["ece"] == pytest.approx(0.33)
    assert m["n"] == 10 and m["n_malignant"] == 4 and m["threshold"] == 0.5


def test_metrics_match_sklearn_on_random_data():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        y = (rng.random(200) < 0.25).astype(int)
        p = np.clip(rng.random(200) * 0.6 + 0.4 * y, 0, 1)
        t = float(rng.uniform(0.2, 0.7))
        m = classification_metrics(y, p, t)
        pred = (p >= t).astype(int)
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
        assert m["f1_malignant"] == pytest.approx(skm.f1_score(y, pred))
        assert m["f1_benign"] == pytest.approx(skm.f1_score(y, pred, pos_label=0))
        assert m["precision_malignant"] == pytest.approx(skm.precision_score(y, pred))
        assert m["recall_benign"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
        assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
        assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
        assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p))
        assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()


def test_undefined_metrics_are_nan_not_errors():
    m = classification_metrics(np.zeros(8, int), np.linspace(0, 0.9, 8), 0.5)
    for key in (
        "roc_auc",
        "average_precision",
        "balanced_accuracy",
        "sensitivity",
        "spec_at_95_sens",
        "recall_malignant",
    ):
        assert math.isnan(m[key]), key
    assert m["specificity"] == pytest.approx(4 / 8)
    assert m["f1_malignant"] == 0.0  # 4 false positives, no malignant: 0 / (0 + 4 + 0)
    # no predicted positives: malignant precision is 0/0, F1 is 0 (all 3 missed)
    m = classification_metrics([0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.1, 0.2], 0.5)
    assert math.isnan(m["precision_malignant"]) and m["f1_malignant"] == 0.0


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classification_metrics([0, 1], [0.2, 1.5], 0.5)
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1, 1], [0.2, 0.5], 0.5)
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics([0, 1], [0.2, np.nan], 0.5)


# --------------------------------------------------------------------------- thresholds


def test_youden_known_optimum():
    assert youden_threshold([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]) == 0.7


def test_youden_tie_goes_to_threshold_nearest_half():
    # J = 0.5 at both 0.9 and 0.4; 0.4 is nearer 0.5
    assert youden_threshold([0, 1, 0, 1], [0.1, 0.4, 0.6, 0.9]) == 0.4


def test_youden_maximises_j_on_random_data():
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.3).astype(int)
    p = rng.random(300) * 0.7 + 0.3 * y
    t = youden_threshold(y, p)

    def j(thr):
        pred = p >= thr
        return pred[y == 1].mean() + (~pred[y == 0]).mean() - 1

    best = max(j(c) for c in np.unique(p))
    assert j(t) == pytest.approx(best)
    m = classification_metrics(y, p, t)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(best)


def test_youden_one_class_raises():
    with pytest.raises(ValueError, match="both classes"):
        youden_threshold([0, 0, 0], [0.1, 0.2, 0.3])


def test_specificity_at_sensitivity():
    assert specificity_at_sensitivity(Y10, P10, 0.95) == pytest.approx(0.5)
    # 75 % sensitivity reachable at threshold 0.65: benign above it: 0.75 -> spec 5/6
    assert specificity_at_sensitivity(Y10, P10, 0.75) == pytest.approx(5 / 6)


# --------------------------------------------------------------------------- calibration


def test_ece_perfectly_calibrated_is_zero():
    centres = np.arange(0.05, 1.0, 0.1)  # 10 bin centres
    y, p = [], []
    for c in centres:
        n_pos = round(20 * c)  # 1, 3, 5, ... 19 of 20 are malignant
        y += [1] * n_pos + [0] * (20 - n_pos)
        p += [c] * 20
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)


def test_ece_known_miscalibration():
    y = np.r_[np.ones(50, int), np.zeros(50, int)]
    assert expected_calibration_error(y, np.full(100, 0.9)) == pytest.approx(0.4)
    # two bins: 0.8 predicted for 60 % positives, 0.1 predicted for 10 % positives
    y = np.r_[np.ones(6), np.zeros(4), np.ones(1), np.zeros(9)].astype(int)
    p = np.r_[np.full(10, 0.8), np.full(10, 0.1)]
    assert expected_calibration_error(y, p) == pytest.approx((10 * 0.2 + 10 * 0.0) / 20)


def test_reliability_matches_sklearn_calibration_curve():
    rng = np.random.default_rng(2)
    p = rng.random(500) ** 2
    y = (rng.random(500) < p).astype(int)
    rel = reliability_curve(y, p, n_bins=10)
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="uniform")
    ok = rel["count"] > 0
    np.testing.assert_allclose(rel["fraction_positive"][ok], frac)
    np.testing.assert_allclose(rel["mean_predicted"][ok], mean)
    assert rel["count"].sum() == 500


# --------------------------------------------------------------------------- fast path


def test_vectorised_bootstrap_metrics_match_sklearn_on_resamples():
    rng = np.random.default_rng(5)
    y = np.r_[np.zeros(90, int), np.ones(30, int)]
    p = np.round(np.clip(rng.random(120) * 0.7 + 0.3 * y, 0, 1), 2)  # ties on purpose
    idx = stratified_bootstrap_indices(y, 25, seed=1)
    w = bootstrap_counts(idx, y.size)
    thr = batch_threshold_metrics(w, y, p >= 0.45)
    rank = batch_ranking_metrics(w, y, p, n_bins=10)
    for b, r in enumerate(idx):
        ref = classification_metrics(y[r], p[r], 0.45)
        for key in THRESHOLD_METRICS:
            assert thr[key][b] == pytest.approx(ref[key], nan_ok=True), key
        for key in THRESHOLD_FREE_METRICS:
            assert rank[key][b] == pytest.approx(ref[key]), key


# --------------------------------------------------------------------------- evaluate_predictions


def _no_numpy(obj) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _no_numpy(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_no_numpy(v) for v in obj)
    return obj is None or type(obj) in (bool, int, float, str)


def test_evaluate_predictions_structure_and_json():
    df = _isic_like()
    res = evaluate_predictions(df, _thresholds(df), n_boot=200, seed=0)
    text = json.dumps(res, allow_nan=False)  # no NaN/inf anywhere
    assert _no_numpy(json.loads(text)) and _no_numpy(res)
    assert res["schema_version"] == 1 and res["n_boot"] == 200 and res["seed"] == 0
    assert res["test"] == {
        "n": 379,
        "n_malignant": 75,
        "n_benign": 304,
        "prevalence": pytest.approx(75 / 379),
    }
    assert list(res["models"]) == ["resnet18", "efficientnet_b0", "mobilenet_v2"]
    for name, entry in res["models"].items():
        assert set(entry["at_threshold"]) == set(THRESHOLD_METRICS)
        assert set(entry["at_0.5"]) == set(THRESHOLD_METRICS)
        assert set(entry["threshold_free"]) == set(THRESHOLD_FREE_METRICS)
        for block in ("at_threshold", "at_0.5", "threshold_free"):
            for key, ci in entry[block].items():
                if ci["value"] is not None and ci["lo"] is not None:
                    assert ci["lo"] <= ci["value"] + 1e-12, (name, key)
                    assert ci["value"] <= ci["hi"] + 1e-12, (name, key)
        cm = np.array(entry["confusion_matrix"])
        assert cm.sum() == 379 and cm[1].sum() == 75
        assert len(entry["roc_curve"]["fpr"]) == len(entry["roc_curve"]["tpr"]) > 2
        assert len(entry["reliability"]["count"]) == 10
    pairs = [(p["a"], p["b"]) for p in res["pairwise"]]
    assert pairs == [
        ("resnet18", "efficientnet_b0"),
        ("resnet18", "mobilenet_v2"),
        ("efficientnet_b0", "mobilenet_v2"),
    ]
    for pw in res["pairwise"]:
        a, b = res["models"][pw["a"]], res["models"][pw["b"]]
        auc_diff = b["threshold_free"]["roc_auc"]["value"] - a["threshold_free"]["roc_auc"]["value"]
        assert pw["auc"]["diff"] == pytest.approx(auc_diff)  # b - a
        assert pw["auc_bootstrap"]["diff"] == pytest.approx(auc_diff)
        assert pw["accuracy"]["mcnemar"]["method"] in ("exact", "chi2_cc")
        assert pw["p_holm"] >= pw["auc"]["p"]
        assert pw["significant"] == (pw["p_holm"] < 0.05)
        assert pw["auc_test"] == "DeLong" and "sentence" not in pw


def test_all_benign_baseline_on_isic_2016_shape():
    df = _isic_like()
    res = evaluate_predictions(df, _thresholds(df), n_boot=100, seed=0)
    base = res["baselines"]["all_benign"]
    assert base["accuracy"]["value"] == pytest.approx(304 / 379)
    assert 304 / 379 == pytest.approx(0.802, abs=5e-4)
    # class counts are fixed by the stratified bootstrap: the constant rule has no spread
    assert base["accuracy"]["lo"] == pytest.approx(304 / 379)
    assert base["balanced_accuracy"]["value"] == 0.5
    assert base["f1_malignant"]["value"] == 0.0
    assert base["sensitivity"]["value"] == 0.0
    assert base["precision_malignant"]["value"] is None  # 0/0, reported as undefined
    assert base["roc_auc"]["value"] == 0.5
    assert base["average_precision"]["value"] == pytest.approx(75 / 379)
    assert res["baselines"]["chance_average_precision"] == pytest.approx(75 / 379)


def test_bootstrap_cis_match_generic_bootstrap_ci():
    df = _isic_like(n_neg=120, n_pos=40, models=(("a", 1.0),), seed=3)
    res = evaluate_predictions(df, {"a": 0.4}, n_boot=150, seed=11)
    one = df.sort_values("image_id")
    y, p = one["label"].to_numpy(), one["prob_malignant"].to_numpy()
    ci = res["models"]["a"]["threshold_free"]["roc_auc"]
    point, lo, hi = bootstrap_ci(skm.roc_auc_score, y, p, n_boot=150, seed=11)
    assert (ci["value"], ci["lo"], ci["hi"]) == pytest.approx((point, lo, hi))
    acc = res["models"]["a"]["at_threshold"]["accuracy"]
    point, lo, hi = bootstrap_ci(
        lambda yy, pp: skm.accuracy_score(yy, pp >= 0.4), y, p, n_boot=150, seed=11
    )
    assert (acc["value"], acc["lo"], acc["hi"]) == pytest.approx((point, lo, hi))


def test_prob_range_is_the_5th_and_95th_percentile_of_p_malignant():
    """Known answer: P(malignant) 0.00, 0.01, ..., 1.00 (101 images) spans 0.05 to 0.95."""
    p = np.round(np.linspace(0, 1, 101), 2)
    df = pd.DataFrame({"image_id": [f"i{k:03d}" for k in range(101)], "model": "a",
                       "label": (p > 0.7).astype(int), "prob_malignant": p[::-1]})
    res = evaluate_predictions(df, {"a": 0.5}, n_boot=20)
    assert res["models"]["a"]["prob_range"] == pytest.approx({"p05": 0.05, "p95": 0.95})


def test_identical_models_are_not_significant():
    df = _isic_like(models=(("a", 1.0),))
    df = pd.concat([df, df.assign(model="b")], ignore_index=True)
    res = evaluate_predictions(df, {"a": 0.3, "b": 0.3}, n_boot=100)
    pw = res["pairwise"][0]
    assert pw["auc"]["diff"] == 0 and pw["auc"]["p"] == 1.0
    assert pw["accuracy"]["mcnemar"]["p"] == 1.0
    assert not pw["significant"]


def test_zero_variance_delong_pair_is_undefined_not_significant():
    # a perfect model against a constant score: DeLong's variance is exactly 0
    y = np.r_[np.zeros(20, int), np.ones(10, int)]
    ids = [f"img{i}" for i in range(y.size)]
    df = pd.concat([
        pd.DataFrame({"image_id": ids, "model": "a", "label": y, "prob_malignant": 0.1 + 0.8 * y}),
        pd.DataFrame({"image_id": ids, "model": "b", "label": y, "prob_malignant": 0.5}),
    ], ignore_index=True)
    res = evaluate_predictions(df, {"a": 0.5, "b": 0.5}, n_boot=50)
    pw = res["pairwise"][0]
    assert pw["auc"]["diff"] == -0.5 and pw["auc"]["reason"] == "zero_variance"
    assert pw["auc"]["p"] is None and pw["p_holm"] is None  # NaN, stored as JSON null
    assert pw["significant"] is False


def test_seeded_and_order_independent():
    df = _isic_like()
    r1 = evaluate_predictions(df, _thresholds(df), n_boot=100, seed=4)
    r2 = evaluate_predictions(
        df.sample(frac=1.0, random_state=0), _thresholds(df), n_boot=100, seed=4
    )
    r3 = evaluate_predictions(df, _thresholds(df), n_boot=100, seed=5)
    assert r1["models"] == r2["models"]  # row order of the input does not matter
    ci1 = r1["models"]["resnet18"]["threshold_free"]["roc_auc"]
    ci3 = r3["models"]["resnet18"]["threshold_free"]["roc_auc"]
    assert ci1["value"] == ci3["value"] and ci1["lo"] != ci3["lo"]


def test_evaluate_predictions_rejects_bad_input():
    df = _isic_like(n_neg=40, n_pos=10)
    thr = _thresholds(df)
    with pytest.raises(ValueError, match="same images"):
        evaluate_predictions(df.drop(index=df.index[-1]), thr, n_boot=10)
    other = df.copy()
    other.loc[other["model"] == "resnet18", "image_id"] += "_x"
    with pytest.raises(ValueError, match="same images"):
        evaluate_predictions(other, thr, n_boot=10)
    with pytest.raises(ValueError, match="no threshold"):
        evaluate_predictions(df, {"resnet18": 0.5}, n_boot=10)
    with pytest.raises(ValueError, match="duplicated"):
        evaluate_predictions(pd.concat([df, df.iloc[:1]]), thr, n_boot=10)
    bad = df.copy()
    bad.loc[bad.index[0], "label"] = 1 - bad.loc[bad.index[0], "label"]
    with pytest.raises(ValueError, match="different labels"):
        evaluate_predictions(bad, thr, n_boot=10)
    with pytest.raises(ValueError, match="lack columns"):
        evaluate_predictions(df.drop(columns="label"), thr, n_boot=10)


def test_single_class_test_set_does_not_crash():
    df = _isic_like(n_neg=30, n_pos=0, models=(("a", 1.0), ("b", 0.5)))
    res = evaluate_predictions(df, {"a": 0.5, "b": 0.5}, n_boot=50)
    json.dumps(res, allow_nan=False)
    assert res["models"]["a"]["threshold_free"]["roc_auc"]["value"] is None
    assert res["pairwise"][0]["significant"] is False


def test_three_models_379_images_1000_resamples_match_the_generic_bootstrap():
    """At the ISIC 2016 size the vectorised path shares one set of resamples across models:
    every model's AUC CI and a pair's paired AUC difference equal a per-resample loop.
    (Its speed is a benchmark's business, not a test's.)"""
    from scipy.stats import rankdata

    def auc(yy, p):  # Mann-Whitney with average ranks: sklearn's AUC, without its overhead
        n1 = yy.sum()
        return (rankdata(p)[yy == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * (yy.size - n1))

    df = _isic_like()
    res = evaluate_predictions(df, _thresholds(df), n_boot=1000, seed=0)
    wide = df.pivot(index="image_id", columns="model", values="prob_malignant").sort_index()
    y = df[df["model"] == "resnet18"].set_index("image_id").loc[wide.index, "label"].to_numpy()
    for name in ("resnet18", "efficientnet_b0", "mobilenet_v2"):
        p = wide[name].to_numpy()
        assert auc(y, p) == pytest.approx(skm.roc_auc_score(y, p))
        ci = res["models"][name]["threshold_free"]["roc_auc"]
        assert (ci["value"], ci["lo"], ci["hi"]) == pytest.approx(
            bootstrap_ci(auc, y, p, n_boot=1000, seed=0)), name
        acc = res["models"][name]["at_threshold"]["accuracy"]
        assert acc["value"] == pytest.approx(skm.accuracy_score(y, p >= 0.3)), name
    pa, pb = wide["resnet18"].to_numpy(), wide["mobilenet_v2"].to_numpy()
    pair = next(pw for pw in res["pairwise"] if (pw["a"], pw["b"]) == ("resnet18",
                                                                        "mobilenet_v2"))
    diff = pair["auc_bootstrap"]
    ref = bootstrap_ci(lambda yy, a, b: auc(yy, b) - auc(yy, a), y, pa, pb, n_boot=1000, seed=0)
    assert (diff["diff"], diff["lo"], diff["hi"]) == pytest.approx(ref)
    assert diff["n_valid"] == 1000  # stratified: every resample holds both classes


# --------------------------------------------------------------------------- tables


def test_metrics_table_and_format_comparison():
    df = _isic_like()
    res = evaluate_predictions(df, _thresholds(df), n_boot=100)
    table = metrics_table(res)
    assert list(table["model"]) == ["resnet18", "efficientnet_b0", "mobilenet_v2", "all_benign"]
    cols = list(table.columns)
    assert cols[:6] == [
        "model",
        "display_name",
        "threshold",
        "accuracy",
        "accuracy_lo",
        "accuracy_hi",
    ]
    assert cols.index("f1_malignant") < cols.index("roc_auc") < cols.index("ece")
    for metric in (
        "balanced_accuracy",
        "roc_auc",
        "average_precision",
        "sensitivity",
        "specificity",
        "spec_at_95_sens",
        "ece",
    ):
        assert {metric, f"{metric}_lo", f"{metric}_hi"} <= set(cols)
    assert table.loc[3, "accuracy"] == pytest.approx(304 / 379)
    assert math.isnan(table.loc[3, "precision_malignant"])
    assert (metrics_table(res, at="at_0.5")["threshold"].iloc[:3] == 0.5).all()
    rows = format_comparison(res)
    assert rows[0][0] == "Model" and len(rows) == 5
    assert all(len(r) == len(rows[0]) for r in rows)
    assert all(isinstance(c, str) for r in rows for c in r)
    assert rows[1][0] == "ResNet18"  # from the model registry
    named = evaluate_predictions(df, _thresholds(df), n_boot=20, display_names={"resnet18": "R"})
    assert named["models"]["resnet18"]["display_name"] == "R"


def test_format_comparison_by_hand():
    """Header from the metric-label registry's short labels; cells ``value (lo–hi)`` with a
    typographic minus, the value alone without a CI, ``n/a`` when undefined."""
    from dermcam.formatting import metric_label

    def ci(v, lo=None, hi=None):
        return {"value": v, "lo": lo, "hi": hi}

    keys = ("accuracy", "balanced_accuracy", "f1_malignant", "sensitivity", "specificity",
            "roc_auc", "average_precision", "ece")
    free = {"roc_auc", "average_precision", "ece"}
    cells = {"accuracy": ci(0.8166, 0.75, 0.8834), "balanced_accuracy": ci(0.5),
             "f1_malignant": ci(None, 0.1, 0.2), "sensitivity": ci(-0.1, -0.2, 0.05),
             "specificity": ci(1.0, 1.0, 1.0), "roc_auc": ci(0.5, None, 0.7),
             "average_precision": ci(0.25, 0.2, 0.3), "ece": ci(0.0004, 0.0, 0.001)}
    entry = {"display_name": "M", "threshold": 0.3,
             "at_threshold": {k: v for k, v in cells.items() if k not in free},
             "at_0.5": {k: v for k, v in cells.items() if k not in free},
             "threshold_free": {k: v for k, v in cells.items() if k in free}}
    res = {"models": {"m": entry}, "baselines": {"all_benign": cells}}
    rows = format_comparison(res)
    assert rows[0] == ["Model", "Threshold", "Accuracy", "Balanced acc.", "F1 malignant",
                       "Sensitivity", "Specificity", "ROC AUC", "Avg. precision", "ECE"]
    assert rows[0][2:] == [metric_label(k, short=True) for k in keys]
    expected = ["0.817 (0.750\u20130.883)", "0.500", "n/a", "\u22120.100 (\u22120.200\u20130.050)",
                "1.000 (1.000\u20131.000)", "0.500", "0.250 (0.200\u20130.300)",
                "0.000 (0.000\u20130.001)"]
    assert rows[1] == ["M", "0.300"] + expected
    assert rows[2] == ["All benign (baseline)", "\u2014"] + expected
    assert format_comparison(res, at="at_0.5")[1][1] == "0.500"


def test_pairwise_table_shows_each_pairs_numbers():
    df = _isic_like(models=(("resnet18", 1.2), ("efficientnet_b0", 0.2)))
    res = evaluate_predictions(df, _thresholds(df), n_boot=100)
    pw = res["pairwise"][0]
    dl, acc = pw["auc"], pw["accuracy"]
    t = pairwise_table(res)
    assert t.rows == [["efficientnet_b0 - resnet18",
                       f"{dl['diff']:+.3f} [{dl['lo']:+.3f}, {dl['hi']:+.3f}]",
                       f"{dl['p_adjusted']:.3f}",
                       f"{acc['diff']:+.3f} [{acc['lo']:+.3f}, {acc['hi']:+.3f}]",
                       f"{acc['mcnemar']['p']:.3f}"]]
    assert pairwise_table({"pairwise": []}) is None


# --------------------------------------------------------------------------- issue #13:
# multiplicity families (item 6) and clustered resampling (item 8)


def test_every_pairwise_family_is_holm_adjusted_with_raw_p_kept():
    from statsmodels.stats.multitest import multipletests

    df = _isic_like(n_neg=150, n_pos=40)
    res = evaluate_predictions(df, _thresholds(df), n_boot=200, seed=0)
    pw = res["pairwise"]
    fams = res["multiplicity"]["families"]
    assert res["multiplicity"]["method"] == "Holm" and res["resampling"] == "images"
    getters = {"auc_delong": lambda r: r["auc"], "auc_bootstrap": lambda r: r["auc_bootstrap"],
               "average_precision": lambda r: r["average_precision"],
               "accuracy_bootstrap": lambda r: r["accuracy"],
               "accuracy_mcnemar": lambda r: r["accuracy"]["mcnemar"]}
    assert set(fams) == set(getters)
    for fam, get in getters.items():
        raw = np.array([get(r)["p"] for r in pw], dtype=float)
        want = multipletests(raw, method="holm")[1]
        got = np.array([get(r)["p_adjusted"] for r in pw], dtype=float)
        np.testing.assert_allclose(got, want)
        assert all(get(r)["family"] == fam for r in pw) and fams[fam]["k"] == len(pw)
        assert (got >= raw - 1e-15).all()
    for r in pw:  # the primary AUC test is DeLong without clusters
        assert r["auc_test"] == "DeLong" and r["p_holm"] == r["auc"]["p_adjusted"]


def _duplicated(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Every image k times under new ids, one group per original image."""
    parts = []
    for j in range(k):
        parts.append(df.assign(group=df["image_id"], image_id=df["image_id"] + f"_copy{j}"))
    return pd.concat(parts, ignore_index=True)


def test_cluster_bootstrap_ci_of_duplicated_images_equals_single_copy_naive_shrinks():
    df = _isic_like(n_neg=120, n_pos=40, models=(("a", 1.0), ("b", 1.4)), seed=2)
    thr = {"a": 0.3, "b": 0.3}
    k = 4
    single = evaluate_predictions(df, thr, n_boot=400, seed=7)
    clustered = evaluate_predictions(_duplicated(df, k), thr, n_boot=400, seed=7)
    naive = evaluate_predictions(_duplicated(df, k).drop(columns="group"), thr, n_boot=400,
                                 seed=7)
    assert clustered["resampling"] == "cluster (group), 160 clusters"
    assert single["resampling"] == naive["resampling"] == "images"
    assert "cluster bootstrap" in clustered["ci_method"]
    for block, metric in (("threshold_free", "roc_auc"), ("threshold_free", "average_precision"),
                          ("at_threshold", "accuracy")):
        s = single["models"]["b"][block][metric]
        c = clustered["models"]["b"][block][metric]
        n = naive["models"]["b"][block][metric]
        assert c["value"] == pytest.approx(s["value"])
        assert (c["lo"], c["hi"]) == pytest.approx((s["lo"], s["hi"]), abs=1e-9)
        assert (n["hi"] - n["lo"]) < 0.7 * (s["hi"] - s["lo"])  # about 1/sqrt(4) as wide
    sp, cp = single["pairwise"][0], clustered["pairwise"][0]
    assert (cp["auc_bootstrap"]["lo"], cp["auc_bootstrap"]["hi"], cp["auc_bootstrap"]["p"]) == \
        pytest.approx((sp["auc_bootstrap"]["lo"], sp["auc_bootstrap"]["hi"],
                       sp["auc_bootstrap"]["p"]))
    # with clusters the verdict uses the cluster bootstrap, not DeLong (which assumes
    # independent images)
    assert cp["auc_test"] == "paired cluster bootstrap"
    assert cp["p_holm"] == cp["auc_bootstrap"]["p_adjusted"]
    assert clustered["resampling"] == "cluster (group), 160 clusters"
    assert clustered["multiplicity"]["primary_auc"] == "auc_bootstrap"


def test_groups_that_are_all_distinct_change_nothing():
    df = _isic_like(n_neg=100, n_pos=30)
    plain = evaluate_predictions(df, _thresholds(df), n_boot=150, seed=3)
    grouped = evaluate_predictions(df.assign(group=df["image_id"] + "_lesion"),
                                   _thresholds(df), n_boot=150, seed=3)
    assert json.dumps(plain, sort_keys=True) == json.dumps(grouped, sort_keys=True)


def test_groups_must_agree_across_models():
    df = _isic_like(n_neg=20, n_pos=10, models=(("a", 1.0), ("b", 1.0)))
    df["group"] = np.where(df["model"] == "a", df["image_id"], "one")
    with pytest.raises(ValueError, match="different groups"):
        evaluate_predictions(df, {"a": 0.5, "b": 0.5}, n_boot=20)


def test_labels_info_counts_the_join(make_generic, dh, tmp_path):
    from test_artifact_labels import bias_csv

    from dermcam.data import load_dataset
    from dermcam.stages.evaluate import labels_info

    labels = dh.generic_labels(6, 4)
    root = make_generic(labels, masks=True)
    rows = [(f"{i}.jpg", 1, 0) for i in list(labels)[:8]] + [("ISIC_9999999.jpg", 1, 1)]
    path = bias_csv(tmp_path / "isic_bias.csv", rows)
    info = labels_info(path, load_dataset(root, artifacts=path))
    assert info["file"] == str(path.resolve())
    assert (info["n_images"], info["n_matched"], info["n_unknown"]) == (10, 8, 1)
    assert set(info["artifacts"]) == {"dark_corner", "hair", "gel_border", "gel_bubble",
                                      "ruler", "ink", "patches"}
    assert labels_info(None) is None
