"""Subgroup metrics: a planted effect recovered with the right CI, too-small groups,
binning, and the heterogeneity tests on known cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from dermcam import subgroups as sg
from dermcam.stats import delong_test
from dermcam.views import heterogeneity_note, kruskal_note


def _planted(n=300, seed=0, effect=True):
    """Site 'head': the score separates the classes (AUC about 0.9); site 'trunk': the
    score is noise (AUC about 0.5) when ``effect``, else as good as 'head'."""
    rng = np.random.default_rng(seed)
    frames = []
    for site, good in (("head", True), ("trunk", not effect)):
        y = (np.arange(n) % 3 == 0).astype(int)
        z = rng.normal(size=n) + (1.8 * y if good else 0.0)
        frames.append(pd.DataFrame({"image_id": [f"{site}{i}" for i in range(n)],
                                    "model": "m", "label": y,
                                    "prob_malignant": 1 / (1 + np.exp(-z)), "site": site}))
    return pd.concat(frames, ignore_index=True)


def test_planted_subgroup_effect_recovered_with_the_right_ci():
    preds = _planted()
    res = sg.subgroup_metrics(preds, "site", {"m": 0.5}, n_boot=2000, seed=1)
    groups = {g["group"]: g for g in res["models"]["m"]["groups"]}
    for site in ("head", "trunk"):
        d = preds[preds["site"] == site]
        g = groups[site]
        assert g["n"] == 300 and g["n_malignant"] == 100 and g["estimable"]
        auc = g["roc_auc"]
        assert auc["value"] == pytest.approx(roc_auc_score(d["label"], d["prob_malignant"]))
        # the bootstrap interval agrees with DeLong's normal interval for one AUC
        dl = delong_test(d["label"], d["prob_malignant"], d["prob_malignant"])
        half = 1.96 * dl["se_a"]
        assert auc["lo"] == pytest.approx(auc["value"] - half, abs=0.02)
        assert auc["hi"] == pytest.approx(auc["value"] + half, abs=0.02)
        acc = ((d["prob_malignant"] >= 0.5).astype(int) == d["label"]).mean()
        assert g["accuracy"]["value"] == pytest.approx(acc)
    assert groups["head"]["roc_auc"]["lo"] > 0.8
    assert groups["trunk"]["roc_auc"]["lo"] < 0.5 < groups["trunk"]["roc_auc"]["hi"]
    het = res["models"]["m"]["heterogeneity"]
    assert het["auc"]["df"] == 1 and het["auc"]["p"] < 1e-6
    assert het["accuracy"]["p"] < 0.01


def test_no_effect_is_not_flagged():
    res = sg.subgroup_metrics(_planted(effect=False), "site", {"m": 0.5}, n_boot=200)
    assert res["models"]["m"]["heterogeneity"]["auc"]["p"] > 0.05


def test_too_few_to_estimate_below_min_group_or_min_per_class():
    preds = _planted(n=30)
    preds.loc[preds["image_id"].isin([f"trunk{i}" for i in range(10)]), "site"] = "arm"
    res = sg.subgroup_metrics(preds, "site", {"m": 0.5}, n_boot=100, min_group=20)
    groups = {g["group"]: g for g in res["models"]["m"]["groups"]}
    assert groups["arm"]["note"] == sg.TOO_FEW and not groups["arm"]["estimable"]
    assert "roc_auc" not in groups["arm"]
    assert groups["trunk"]["n"] == 20 and groups["trunk"]["estimable"]
    assert groups["head"]["estimable"]
    strict = sg.subgroup_metrics(preds, "site", {"m": 0.5}, n_boot=100, min_group=20,
                                 min_per_class=8)  # trunk has 6 malignant
    g = {g["group"]: g for g in strict["models"]["m"]["groups"]}
    assert not g["trunk"]["estimable"] and g["head"]["estimable"]
    assert strict["models"]["m"]["heterogeneity"]["auc"]["reason"] == \
        "fewer than 2 estimable groups"


def test_binning_numbers_text_ita_and_missing():
    age = pd.Series([float(a) for a in range(20, 80)] + [np.nan])
    labels, how = sg.bin_column(age, "age")
    assert "quartile" in how and labels.iloc[-1] == sg.MISSING
    assert labels.iloc[:-1].nunique() == 4
    assert (labels.iloc[:-1].value_counts() == 15).all()
    sex, how = sg.bin_column(pd.Series(["male", "female", None, " male"]), "sex")
    assert list(sex) == ["male", "female", sg.MISSING, "male"]
    few, _ = sg.bin_column(pd.Series([0, 1, 1, 0]), "flag")
    assert list(few) == ["0", "1", "1", "0"]
    ita, how = sg.bin_column(pd.Series([60.0, 50.0, -40.0, np.nan]), "ita")
    assert list(ita) == ["very light", "light", "dark", sg.MISSING] and "ITA" in how


def test_cochran_q_known_value_and_undefined_cases():
    # AUC 0.9 and 0.7, variances 0.001 and 0.003: weights 1000 and 333.3, pooled 0.85,
    # Q = 1000 * 0.05^2 + 333.3 * 0.15^2 = 10, and for 1 df P(chi2 > Q) = erfc(sqrt(Q / 2))
    r = sg.cochran_q_auc([0.9, 0.7], [0.001, 0.003])
    assert r["pooled_auc"] == pytest.approx(0.85)
    assert r["q"] == pytest.approx(10.0)
    assert r["df"] == 1 and r["p"] == pytest.approx(math.erfc(math.sqrt(5.0)), rel=1e-9)
    assert sg.cochran_q_auc([0.9], [0.01])["reason"] == "fewer than 2 estimable groups"
    assert "zero variance" in sg.cochran_q_auc([1.0, 0.7], [0.0, 0.01])["reason"]


def test_holm_across_columns_and_printed_table():
    preds = _planted(n=60)
    preds["half"] = np.where(preds.index % 2 == 0, "even", "odd")
    res = sg.subgroup_analyses(preds, ["site", "half"], {"m": 0.5}, n_boot=100)
    ps = [res[c]["models"]["m"]["heterogeneity"]["auc"] for c in ("site", "half")]
    raw = sorted(t["p"] for t in ps)
    assert min(t["p_adjusted"] for t in ps) == pytest.approx(min(1.0, 2 * raw[0]))
    rows = sg.subgroup_table(res["site"], "m")
    assert rows[0][:3] == ["group", "n", "malignant"] and len(rows) == 3
    assert "Holm" in heterogeneity_note(res["site"], "m")


# ------------------------------------------- attention and probe summaries by subgroup


def _attention(n=40, seed=0):
    """Two models x one method; site 'head' leaks about 0.6, 'trunk' about 0.3, 'arm' has 5
    images; pixel AUROC the same distribution everywhere; one undefined leakage per model."""
    rng = np.random.default_rng(seed)
    sites = ["head"] * n + ["trunk"] * n + ["arm"] * 5
    ids = [f"i{k:03d}" for k in range(len(sites))]
    frames = []
    for model in ("a", "b"):
        leak = np.where(np.array(sites) == "head", 0.6, 0.3) + rng.normal(0, 0.05, len(ids))
        leak[0] = np.nan
        frames.append(pd.DataFrame({"image_id": ids, "model": model, "method": "gradcam",
                                    "site": sites, "leakage": leak,
                                    "pixel_auroc": rng.uniform(0.6, 0.9, len(ids))}))
    return pd.concat(frames, ignore_index=True)


def test_attention_by_group_recovers_a_planted_difference():
    att = _attention()
    res = sg.subgroup_summaries(att, "site", ["leakage", "pixel_auroc"], ["model", "method"],
                                n_boot=2000, seed=0, min_group=10)
    assert res["column"] == "site" and len(res["entries"]) == 2
    entry = next(e for e in res["entries"] if e["model"] == "a")
    assert entry["method"] == "gradcam"
    groups = {g["group"]: g for g in entry["groups"]}
    assert groups["arm"]["note"] == sg.TOO_FEW and "leakage" not in groups["arm"]
    for site in ("head", "trunk"):
        v = att[(att["model"] == "a") & (att["site"] == site)]["leakage"]
        got = groups[site]["leakage"]
        assert groups[site]["n"] == 40
        assert got["n"] == v.notna().sum() and got["n_nan"] == v.isna().sum()
        assert got["value"] == pytest.approx(v.mean())
        # the bootstrap CI of a mean is about the normal one, 1.96 sd / sqrt(n)
        half = 1.96 * v.std(ddof=1) / math.sqrt(v.notna().sum())
        assert got["lo"] == pytest.approx(got["value"] - half, abs=0.006)
        assert got["hi"] == pytest.approx(got["value"] + half, abs=0.006)
    assert groups["head"]["n"] == 40 and groups["head"]["leakage"]["n"] == 39
    assert groups["head"]["leakage"]["lo"] > groups["trunk"]["leakage"]["hi"]
    het = entry["heterogeneity"]
    assert het["leakage"]["df"] == 1 and het["leakage"]["p"] < 1e-10  # arm left out
    assert het["pixel_auroc"]["p"] > 0.05


def test_attention_by_group_holm_over_columns_and_bins_each_image_once():
    att = _attention()
    att["age"] = att["image_id"].map({i: 20 + k for k, i in
                                      enumerate(att["image_id"].unique())})
    res = sg.subgroup_summary_analyses(att, ["site", "age"], ["leakage"], ["model", "method"],
                                       n_boot=200, min_group=10, what="models x methods")
    levels, how = sg.image_levels(att, "age")
    assert "quartile" in how and len(levels) == 85 and (levels.value_counts() >= 21).all()
    age = res["age"]["entries"][0]["groups"]
    assert sum(g["n"] for g in age) == 85  # images, not rows of both models
    tests = [e["heterogeneity"]["leakage"] for c in ("site", "age")
             for e in res[c]["entries"]]
    raw = np.array([t["p"] for t in tests])
    from dermcam.stats import adjust_pvalues

    assert np.allclose([t["p_adjusted"] for t in tests], adjust_pvalues(raw, "holm"))
    assert all(t["adjust_method"] == "Holm" and "2 column(s)" in t["family"] for t in tests)
    entry = res["site"]["entries"][0]
    rows = sg.summary_table(res["site"], entry, ["leakage"], ["leakage"])
    assert rows[0] == ["group", "n", "leakage"] and rows[1][2] == sg.TOO_FEW
    assert "Kruskal-Wallis across site groups: leakage p < 0.001 (Holm)" in \
        kruskal_note(res["site"], entry)


def test_kruskal_undefined_cases():
    assert sg.kruskal_across([np.ones(5)])["reason"] == "fewer than 2 estimable groups"
    assert sg.kruskal_across([np.ones(5), np.ones(4)])["reason"] == "every value is the same"
    from scipy.stats import kruskal

    a, b = np.arange(6.0), np.arange(6.0) + 3
    assert sg.kruskal_across([a, b, np.array([np.nan])])["p"] == pytest.approx(
        kruskal(a, b).pvalue)


def test_printed_tables_cells_and_registry_headers():
    """Cells are ``value [lo, hi]`` with n/a for an undefined bound and n/a for an
    undefined value; metric headers are the registry's short labels."""
    analysis = {"models": {"m": {"groups": [
        {"group": "head", "n": 30, "n_malignant": 6, "estimable": True,
         "roc_auc": {"value": 0.8125, "lo": 0.7, "hi": 0.9}, "accuracy": {"value": 0.5},
         "sensitivity": {"value": float("nan"), "lo": 0.1, "hi": 0.2},
         "specificity": {"value": 1.0, "lo": None, "hi": 1.0}},
        {"group": "arm", "n": 3, "n_malignant": 0, "estimable": False,
         "note": "too few to estimate"}]}}}
    rows = sg.subgroup_table(analysis, "m")
    assert rows == [["group", "n", "malignant", "ROC AUC", "Accuracy", "Sensitivity",
                     "Specificity"],
                    ["head", "30", "6", "0.81 [0.70, 0.90]", "0.50 [n/a, n/a]", "n/a",
                     "1.00 [n/a, 1.00]"],
                    ["arm", "3", "0", "too few to estimate", "", "", ""]]
    entry = {"groups": [{"group": "g", "n": 4, "estimable": True,
                         "leakage": {"value": 0.25, "lo": 0.125, "hi": 0.375}}]}
    assert sg.summary_table({}, entry, ["leakage"], ["leak"]) == [
        ["group", "n", "leak"], ["g", "4", "0.250 [0.125, 0.375]"]]
