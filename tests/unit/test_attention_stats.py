"""Issue #13: the attention summary's class comparisons a reviewer signs off.

Known answers on hand-made tables: n_nan per class, comparisons stratified by the class
each heatmap explains, undefined heatmaps scored at chance, multiplicity families
(checked against statsmodels' multipletests), cluster bootstrap CIs, the --margin option.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from dermcam import leakage as L


def _table() -> pd.DataFrame:
    """12 images: label, the class each heatmap explains, leakage (NaN = undefined map)."""
    return pd.DataFrame({
        "label":      [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1],
        "cam_target": [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0],
        "leakage":    [.2, .3, .4, np.nan, .6, .7, .5, .6, np.nan, np.nan, .1, .15],
        "lesion_area": [.5, .4, .3, .2, .3, .2, .4, .3, .25, .1, .6, .5],
    })


def test_n_nan_per_class_beside_the_means():
    c = L.compare_classes(_table(), "leakage")
    assert (c["n_benign"], c["n_nan_benign"]) == (5, 1)
    assert (c["n_malignant"], c["n_nan_malignant"]) == (4, 2)
    assert c["mean_benign"] == pytest.approx((.2 + .3 + .4 + .6 + .7) / 5)
    assert c["mean_malignant"] == pytest.approx((.5 + .6 + .1 + .15) / 4)


def test_class_comparison_stratified_by_explained_class():
    df = _table()
    r = L.compare_classes_by_target(df, "leakage")
    assert r["n_explained"] == {"benign": 6, "malignant": 6}
    assert r["fixed_target"] is None
    within_b, within_m = r["by_target"]["benign"], r["by_target"]["malignant"]
    # explaining benign: benign .2 .3 .4 (+1 NaN), malignant .1 .15
    assert (within_b["n_benign"], within_b["n_nan_benign"], within_b["n_malignant"]) == (3, 1, 2)
    assert within_b["median_benign"] == pytest.approx(.3)
    assert within_b["median_malignant"] == pytest.approx(.125)
    assert within_b["p_value"] == pytest.approx(
        stats.mannwhitneyu([.1, .15], [.2, .3, .4], alternative="two-sided").pvalue)
    assert within_b["rank_biserial"] == -1.0  # every malignant below every benign
    # explaining malignant: benign .6 .7, malignant .5 .6 (+2 NaN)
    assert (within_m["n_benign"], within_m["n_malignant"], within_m["n_nan_malignant"]) == (2, 2, 2)
    assert within_m["median_malignant"] == pytest.approx(.55)
    # the pooled comparison is the unstratified one
    assert r["pooled"] == L.compare_classes(df, "leakage")
    # a fixed target: every heatmap explains malignant
    fixed = L.compare_classes_by_target(df.assign(cam_target=1), "leakage")
    assert fixed["fixed_target"] == "malignant" and list(fixed["by_target"]) == ["malignant"]
    assert fixed["n_explained"] == {"benign": 0, "malignant": 12}
    assert fixed["by_target"]["malignant"] == fixed["pooled"]


def test_undefined_heatmaps_scored_at_chance():
    df = _table()
    df["chance_leakage"] = 1 - df["lesion_area"]
    df["excess_leakage"] = df["leakage"] - df["chance_leakage"]
    df["pixel_auroc"] = np.where(df["leakage"].isna(), np.nan, 0.7)
    df.loc[9, "lesion_area"] = np.nan  # unusable mask: no chance score, stays undefined
    out = L.missing_at_chance(df, ("leakage", "excess_leakage", "pixel_auroc", "inside_score"))
    assert set(out) == {"leakage", "excess_leakage", "pixel_auroc"}  # no chance for inside
    r = out["leakage"]
    assert (r["n_nan_benign"], r["n_nan_malignant"]) == (1, 2)
    assert (r["n_imputed_benign"], r["n_imputed_malignant"]) == (1, 1)
    # benign image 3 gets 1 - 0.2 = 0.8, malignant image 8 gets 1 - 0.25 = 0.75
    assert r["at_chance"]["mean_benign"] == pytest.approx((.2 + .3 + .4 + .8 + .6 + .7) / 6)
    assert r["at_chance"]["mean_malignant"] == pytest.approx((.5 + .6 + .75 + .1 + .15) / 5)
    assert r["diff_at_chance"] == pytest.approx(
        r["at_chance"]["mean_malignant"] - r["at_chance"]["mean_benign"])
    assert r["observed"]["p_value"] == L.compare_classes(df, "leakage")["p_value"]
    # excess leakage 0 and pixel AUROC 0.5 where undefined (pixel AUROC NaN on row 9 too:
    # its chance 0.5 does not need the mask's area, so it is imputed)
    assert out["excess_leakage"]["at_chance"]["mean_benign"] == pytest.approx(
        np.nansum(np.r_[df["excess_leakage"][:6].to_numpy(), 0.0]) / 6)
    assert out["pixel_auroc"]["n_imputed_malignant"] == 2
    assert out["pixel_auroc"]["at_chance"]["mean_malignant"] == pytest.approx(
        (4 * 0.7 + 2 * 0.5) / 6)
    obs = r["observed"]
    assert (obs["n_benign"] + r["n_nan_benign"], obs["n_malignant"] + r["n_nan_malignant"]) \
        == (6, 6)
    assert r["diff_observed"] == pytest.approx(obs["mean_malignant"] - obs["mean_benign"])
    assert r["pooled_over_targets"] is True and "sentence" not in r


def _att(seed: int = 0, n: int = 90, groups: bool = False, two_methods: bool = True):
    rng = np.random.default_rng(seed)
    frames = []
    for method in (("gradcam", "hirescam") if two_methods else ("gradcam",)):
        lab = (np.arange(n) % 3 == 0).astype(int)
        area = rng.uniform(0.05, 0.5, n)
        leak = np.clip(1 - area - 0.2 + 0.05 * lab + rng.normal(0, 0.05, n), 0, 1)
        leak[[1, 4]] = np.nan
        df = pd.DataFrame({
            "image_id": [f"i{i:03d}" for i in range(n)], "model": "m", "method": method,
            "layer": "layer4", "label": lab, "prob_malignant": 0.5, "pred": lab,
            "correct": True, "cam_target": np.where(rng.random(n) < 0.8, lab, 1 - lab),
            "leakage": leak, "lesion_area": area, "chance_leakage": 1 - area,
            "excess_leakage": leak - (1 - area),
            "pixel_auroc": np.where(np.isnan(leak), np.nan, rng.uniform(0.5, 0.9, n)),
            "inside_score": 0.5, "outside_score": 0.2, "localisation_gain": 1.2,
            "rank_accuracy": 0.3, "pointing_game": (rng.random(n) < 0.5).astype(float),
            "reason": np.where(np.isnan(leak), "zero_heatmap", "")})
        if groups:
            df["group"] = [f"lesion{i // 3}" for i in range(n)]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


MANIFEST = {"stages": {"explain": {"target": "predicted"}}}


def test_summary_families_adjusted_with_statsmodels_and_confound_on_three_metrics():
    from dermcam.stages.explain import TEST_METRICS, summarise_attention

    s = summarise_attention(_att(), MANIFEST, {}, n_boot=100, seed=0, margin=0.03)
    assert s["equivalence_margin"] == 0.03 and s["target"] == "predicted"
    assert s["resampling"] == "images"
    tests = s["tests"]
    raw, got = [], []
    for key in sorted(tests):
        for metric in TEST_METRICS:
            c = tests[key][f"classes_{metric}"]
            raw.append(c["p_value"])
            got.append(c["p_adjusted"])
            assert c["family"] == "class_pooled" and c["adjust_method"] == "Benjamini-Hochberg"
            assert c is tests[key]["class_comparison"][metric]["pooled"] or \
                c == tests[key]["class_comparison"][metric]["pooled"]
    assert len(raw) == 6 and s["multiplicity"]["class_pooled"]["k"] == 6
    np.testing.assert_allclose(got, multipletests(raw, method="fdr_bh")[1])
    within = [c for key in sorted(tests) for m in TEST_METRICS
              for c in tests[key]["class_comparison"][m]["by_target"].values()]
    np.testing.assert_allclose([c["p_adjusted"] for c in within],
                               multipletests([c["p_value"] for c in within], method="fdr_bh")[1])
    for key, entry in tests.items():
        assert set(entry["size_confounds"]) == set(TEST_METRICS)
        for metric, res in entry["size_confounds"].items():
            assert res["metric"] == metric and res["equivalence"]["margin"] == 0.03
            att = _att()
            direct = L.size_confound(att[att["method"] == key.split("/")[1]], metric,
                                     margin=0.03)
            assert res["class_coef_adjusted"] == pytest.approx(direct["class_coef_adjusted"])
        assert entry["size_confound"]["metric"] == "leakage"  # the report's key, kept
        for metric in TEST_METRICS:  # numbers only: the words are the views'
            assert set(entry["class_comparison"][metric]) == {
                "metric", "pooled", "by_target", "n_explained", "fixed_target"}
        assert set(entry["missingness"]) == set(TEST_METRICS)


def test_summary_without_groups_keeps_the_image_bootstrap_numbers():
    from dermcam.stages.explain import SUMMARY_METRICS, summarise_attention

    att = _att(two_methods=False)
    s = summarise_attention(att, MANIFEST, {}, n_boot=100, seed=4)
    want = L.summarise(att, SUMMARY_METRICS, by=("model", "method", "label"), n_boot=100,
                       seed=4)
    got = pd.DataFrame(s["by_class"])
    pd.testing.assert_frame_equal(got, want)
    assert set(got["ci_method"]) <= {"percentile bootstrap", "wilson"}


def test_summary_with_lesion_groups_bootstraps_clusters_and_says_so():
    from dermcam.stages.explain import summarise_attention

    att = _att(groups=True, two_methods=False)
    s = summarise_attention(att, MANIFEST, {}, n_boot=200, seed=0, cluster_name="lesion_id")
    assert s["resampling"] == "cluster (lesion_id), 30 clusters"
    by = pd.DataFrame(s["by_class"])
    leak = by[(by["metric"] == "leakage") & (by["label"] == 0)].iloc[0]
    g = att[(att["label"] == 0)]
    want = L.bootstrap_mean_ci(g["leakage"], n_boot=200, seed=0, groups=g["group"])
    assert (leak["ci_low"], leak["ci_high"]) == pytest.approx(want)
    assert leak["ci_method"] == "percentile cluster bootstrap"
    pg = by[(by["metric"] == "pointing_game") & (by["label"] == 0)].iloc[0]
    assert pg["ci_method"].startswith("wilson, design effect")
    assert any(x.startswith("Mann-Whitney") for x in s["per_image"])


def test_summarise_cluster_ci_of_duplicated_images_equals_single_copy():
    rng = np.random.default_rng(1)
    one = pd.DataFrame({"label": np.repeat([0, 1], 40), "x": rng.normal(size=80),
                        "hit": (rng.random(80) < 0.3).astype(float)})
    one["group"] = [f"l{i:02d}" for i in range(80)]
    dup = pd.concat([one] * 3, ignore_index=True)
    a = L.summarise(one, ["x"], by=["label"], n_boot=300, seed=2)
    b = L.summarise(dup, ["x"], by=["label"], n_boot=300, seed=2, cluster_col="group")
    np.testing.assert_allclose(b[["ci_low", "ci_high"]], a[["ci_low", "ci_high"]], atol=1e-12)
    naive = L.summarise(dup, ["x"], by=["label"], n_boot=300, seed=2)
    assert ((naive["ci_high"] - naive["ci_low"]) < 0.75 * (a["ci_high"] - a["ci_low"])).all()
    # a 0/1 score: Wilson with the effective n; three identical copies -> deff about 3
    w = L.summarise(dup, ["hit"], by=["label"], n_boot=2000, seed=2, cluster_col="group")
    single = L.summarise(one, ["hit"], by=["label"], n_boot=2000, seed=2)
    deff = [float(m.split("design effect ")[1].split()[0]) for m in w["ci_method"]]
    assert deff == pytest.approx([3.0, 3.0], rel=0.2)
    np.testing.assert_allclose(w[["ci_low", "ci_high"]], single[["ci_low", "ci_high"]],
                               atol=0.03)


def test_generic_layout_reads_group_and_keeps_groups_on_one_side(make_generic):
    from dermcam.data import load_dataset

    labels = {f"img{i:02d}": int(i % 4 == 0) for i in range(40)}
    root = make_generic(labels)
    lines = (root / "labels.csv").read_text().splitlines()
    rows = [lines[0] + ",group"] + [f"{ln},lesion{k // 2}" for k, ln in enumerate(lines[1:])]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(root)
    by_group: dict[str, set[str]] = {}
    for s in ds.samples:
        assert s.group == f"lesion{int(s.image_id[3:]) // 2}"
        by_group.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in by_group.values())  # no lesion straddles the split
    assert {s.split for s in ds.samples} == {"train", "test"}


def test_explain_margin_option_is_passed_through(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import dermcam.stages.explain as ex
    from dermcam.cli import app

    seen = {}

    def fake_run_explain(run_dir, config, audit, progress=None):
        seen["margin"] = config.margin
        return {"shard": [0, 1], "batches": 0}

    monkeypatch.setattr(ex, "run_explain", fake_run_explain)
    r = CliRunner().invoke(app, ["explain", str(tmp_path), "--margin", "0.05", "--shard", "0/1"])
    assert r.exit_code == 0, r.output
    assert seen["margin"] == 0.05
    CliRunner().invoke(app, ["explain", str(tmp_path), "--shard", "0/1"])
    assert seen["margin"] == 0.02


def test_report_method_notes_name_every_test_with_the_run_values(tmp_path):
    import json

    from dermcam.report import html

    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "dermcam-run", "config": {}}))
    (tmp_path / "metrics.json").write_text(json.dumps(
        {"alpha": 0.05, "n_boot": 500, "ci_method": "cluster",
         "resampling": "cluster (lesion_id), 12 clusters"}))
    (tmp_path / "attention_summary.json").write_text(json.dumps(
        {"equivalence_margin": 0.03, "resampling": "cluster (lesion_id), 9 clusters",
         "metric_definitions": {}}))
    ctx = html.notes_context(html.runmod.Run(tmp_path, json.loads(
        (tmp_path / "manifest.json").read_text())))
    notes = html.environment().get_template("notes.html.j2").render(notes=ctx)
    for phrase in ("natural cubic regression spline in lesion area", "HC3", "TOST",
                   "±0.03", "Wilson", "Holm", "Benjamini-Hochberg", "Mann-Whitney",
                   "DeLong", "McNemar", "500 resamples", "cluster (lesion_id), 12 clusters",
                   "cluster (lesion_id), 9 clusters", "within heatmaps that explain one class",
                   "scores them at chance"):
        assert phrase in notes, phrase


def test_verdicts_follow_the_adjusted_p():
    from dermcam.stages.explain import TEST_METRICS, summarise_attention

    s = summarise_attention(_att(), MANIFEST, {}, n_boot=50, seed=0)
    flipped = 0
    for entry in s["tests"].values():
        for metric in TEST_METRICS:
            res = entry["class_comparison"][metric]
            for c in [res["pooled"], *res["by_target"].values()]:
                raw, adj = c["p_value"], c["p_adjusted"]
                flipped += raw < 0.05 <= adj
                assert adj >= raw and c["adjust_method"] == "Benjamini-Hochberg"
            sc = entry["size_confounds"][metric]
            eq = sc["equivalence"]
            assert sc["verdict_basis"] == "Benjamini-Hochberg-adjusted p"
            assert (sc["verdict"] == "explained by size") == (eq["p_adjusted"] < 0.05)
            if sc["verdict"] == "remains":
                assert sc["p_adjusted"] < 0.05
            assert (sc["verdict_unadjusted"] == "explained by size") == (eq["p"] < 0.05)
            assert sc["family_sizes"] == {"size_confound": 6, "equivalence": 6}
            assert sc["p_adjusted"] >= sc["class_p_adjusted"] and eq["p_adjusted"] >= eq["p"]
    assert flipped  # a comparison with raw p < 0.05 but adjusted p >= 0.05 is in the table


def _presence_att(seed: int = 0) -> pd.DataFrame:
    """_att with an artifact flag: 30 with (2 undefined), 50 without (1 undefined), 10 unknown."""
    att = _att(seed, two_methods=False)
    rng = np.random.default_rng(seed + 100)
    flag = np.r_[np.ones(30), np.zeros(50), np.full(10, np.nan)]
    leak = np.where(flag == 1, 0.8, 0.5) + rng.normal(0, 0.02, 90)
    leak[[1, 4, 31]] = np.nan  # two with the artifact, one without
    att["artifact_hair"] = pd.array([None if np.isnan(f) else int(f) for f in flag],
                                    dtype="Int64")
    att["leakage"] = leak
    att["excess_leakage"] = leak - att["chance_leakage"]
    att["pixel_auroc"] = np.where(np.isnan(leak), np.nan, att["pixel_auroc"].fillna(0.7))
    return att


def test_artifact_presence_has_cis_counts_and_its_own_family():
    from dermcam.stages.explain import TEST_METRICS, summarise_attention

    att = _presence_att()
    s = summarise_attention(att, MANIFEST, {}, n_boot=200, seed=3)
    rows = s["tests"]["m/gradcam"]["artifact_presence"]
    assert [(r["artifact"], r["metric"]) for r in rows] == [("hair", m) for m in TEST_METRICS]
    r = rows[0]
    assert (r["n_with"], r["n_nan_with"], r["n_without"], r["n_nan_without"]) == (28, 2, 49, 1)
    with_v = att.loc[att["artifact_hair"] == 1, "leakage"].dropna().to_numpy()
    without_v = att.loc[att["artifact_hair"] == 0, "leakage"].dropna().to_numpy()
    assert r["mean_with"] == pytest.approx(with_v.mean())
    assert r["diff"] == pytest.approx(with_v.mean() - without_v.mean())
    assert r["diff"] == pytest.approx(0.3, abs=0.02)  # the planted difference
    assert tuple(r["ci_with"]) == pytest.approx(L.bootstrap_mean_ci(with_v, 200, 3))
    assert tuple(r["ci_without"]) == pytest.approx(L.bootstrap_mean_ci(without_v, 200, 3))
    assert r["ci_with"][0] < 0.8 < r["ci_with"][1] and r["ci_without"][1] < r["ci_with"][0]
    assert r["p"] == pytest.approx(stats.mannwhitneyu(with_v, without_v).pvalue)
    fam = s["multiplicity"]["artifact_presence"]
    assert fam["method"] == "Benjamini-Hochberg" and fam["k"] == 3
    np.testing.assert_allclose([x["p_adjusted"] for x in rows],
                               multipletests([x["p"] for x in rows], method="fdr_bh")[1])
    assert all(x["family"] == "artifact_presence" for x in rows)


def test_clustered_summary_says_which_numbers_stay_per_image():
    from dermcam.stages.explain import PER_IMAGE_WHEN_CLUSTERED, summarise_attention

    plain = summarise_attention(_att(two_methods=False), MANIFEST, {}, n_boot=50, seed=0)
    assert plain["per_image"] == [] and "resampling_note" not in plain
    s = summarise_attention(_att(groups=True, two_methods=False), MANIFEST, {}, n_boot=50,
                            seed=0, cluster_name="lesion_id")
    assert s["per_image"] == list(PER_IMAGE_WHEN_CLUSTERED)
    for item in ("HC3", "share of the class gap", "uniform_guard", "artifact mass / area"):
        assert any(item in x for x in s["per_image"]), item
    assert s["resampling"] == "cluster (lesion_id), 30 clusters"
    sc = s["tests"]["m/gradcam"]["size_confounds"]["leakage"]
    assert sc["per_image"] == list(L.CONFOUND_PER_IMAGE) and sc["cluster_name"] == "lesion_id"
    assert plain["tests"]["m/gradcam"]["size_confounds"]["leakage"]["per_image"] == []
