"""Proof that the leakage metric measures what it claims, against planted ground truth.

The same architecture is trained on the synthetic benchmark's ``clean`` and ``shortcut``
presets (same seed: identical skin and lesions; only ruler pixels differ). The shortcut
model must put clearly more heatmap mass on the rulers of test images that carry one,
and show higher excess leakage there, than the clean model. The behavioural probes
(``dermcam probe``) must agree: an inserted ruler raises the shortcut model's malignant
probability and not the clean model's, removing the ruler lowers it, and with the lesion
inpainted away the clean model's AUC falls towards chance. This is the slowest test
(about 100 s on this 2-core machine).

Training uses ``dermcam demo``'s recipe (:func:`dermcam.demo.demo_train_config`: plateau
schedule, lr 1e-3, patience 4), pinned to float32 so that the test takes the same path on
every CPU (the demo's ``--precision auto`` trains ResNet18 in bf16 where the CPU has it).
The control trains the demo's 10 epochs: cut to 6 or 7 (best checkpoints: epochs 4 and 7)
or to 600 training images, the seed-0 control's reaction to a pasted ruler leaves the +-0.02
asserted below, CI and all (+0.020 [+0.018, +0.022], +0.026 [+0.023, +0.031], +0.047 [+0.040,
+0.054]). The shortcut model trains 3 epochs, not 10, on a stronger shortcut than the
preset's (:data:`SHORTCUT_RULER`: a ruler on every malignant and no benign training
image, against 80 % and 5 %; test images as the control's), which it has learned by then
(2 epochs pass too, with less margin at seed 0: ruler mass / area 1.38, HiResCAM CI low
2.13). The heatmaps are gradcam++ at layer3 (4x4 at 64 px) for the predicted class; at
layer4 the maps are 2x2 and say little about a thin band. The figures quoted below were
measured with this recipe at seeds 0, 1 and 2 (the test runs seed 0). The control is the
model ``benchmarks/bench_probe.py --twins --recipe demo --train-precision 32-true``
trains; that script's shortcut twin is the preset's, trained 10 epochs, so its shortcut
figures (benchmarks/README.md) are not these.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from dermcam.config import ExplainConfig, ProbeConfig

# trains a model or runs a whole stage: deselect with -m 'not slow'
pytestmark = pytest.mark.slow

# The shortcut preset's ruler, on every malignant and no benign training image; test images
# keep the clean preset's rate (20 % of each class), so the twins' test sets are identical.
SHORTCUT_RULER = {("train", 0): 0.0, ("train", 1): 1.0, ("test", 0): 0.2, ("test", 1): 0.2}
EPOCHS = {"clean": 10, "shortcut": 3}


def _audit(root, preset):
    from dermcam.data import load_dataset
    from dermcam.data.cache import ImageCache
    from dermcam.data.synth import SynthConfig, generate
    from dermcam.demo import demo_train_config
    from dermcam.stages.explain import run_explain
    from dermcam.stages.probe import run_probe
    from dermcam.stages.train import train

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.ERROR)
    data, run, cache = root / preset / "data", root / preset / "run", root / "cache"
    rates = {"ruler": SHORTCUT_RULER} if preset == "shortcut" else None
    # the clean set (made first) lends the shortcut set every image whose rulers agree
    generate(data, SynthConfig.from_preset(preset, image_size=128, seed=0, artifact_rates=rates),
             reference=root / "clean" / "data" if preset == "shortcut" else None)
    train(demo_train_config(data, run, ["resnet18"], seed=0, cache_dir=str(cache),
                            epochs=EPOCHS[preset],
                            # the figures below were measured in float32; --precision auto
                            # would train in bf16 on CPUs that have it and take another path
                            precision="32-true"))
    summary = run_explain(run, ExplainConfig(methods=["gradcam++"], n_boot=200, sanity=False,
                                             figures=False, target="predicted", layer="layer3"))
    probes = run_probe(run, ProbeConfig(
        probes=("lesion_removed", "artifact_inserted", "artifact_removed"),
        artifacts=("ruler",), placements=2, n_boot=500, figures=False))
    att = pd.read_csv(run / "attention.csv", keep_default_na=False, na_values=[""])
    by_id = {s.image_id: s for s in load_dataset(data).split("test")}
    c = ImageCache(cache)
    att["ruler_area"] = [float((c.get(by_id[i], 64)["artifacts"] == 1).mean())
                         for i in att["image_id"]]
    att.attrs["summary"] = summary
    att.attrs["run"] = run
    att.attrs["probes"] = probes
    return att


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    root = tmp_path_factory.mktemp("shortcut")
    return {p: _audit(root, p) for p in ("clean", "shortcut")}


def test_shortcut_model_attends_to_the_planted_ruler(audits):
    enrich = {}
    for preset, att in audits.items():
        r = att[(att["artifact_ruler"] == 1) & (att["ruler_area"] > 0)]
        assert len(r) > 30
        enrich[preset] = float(np.mean(r["mass_ruler"] / r["ruler_area"]))
    # the clean model is not drawn to rulers (measured 0.69; seeds 1, 2: 0.69, 0.61: a dark
    # band at the image edge can get less than its share of the map)
    assert enrich["clean"] < 1.1
    assert enrich["shortcut"] > 1.3  # measured 1.59 (seeds 1, 2: 1.95, 1.80)
    assert enrich["shortcut"] > enrich["clean"] + 0.4


def test_shortcut_raises_excess_leakage_but_only_the_ruler_mass_says_where(audits):
    """Excess leakage (whole-map share outside the lesion beyond chance) is higher for the
    shortcut model on ruler-bearing images, but not only on them: the shortcut model's maps
    leak more on images without a ruler too, at seed 0 even more so (measured +0.088 with a
    ruler and +0.127 without at seed 0, +0.125 and +0.113 at seed 1, +0.109 and +0.090 at
    seed 2). A whole-map leakage score cannot say what outside the lesion draws the
    attention; the ruler mass ratio above, and the probes below, can."""
    s, c = audits["shortcut"], audits["clean"]
    gap_ruler = (s.loc[s["artifact_ruler"] == 1, "excess_leakage"].mean()
                 - c.loc[c["artifact_ruler"] == 1, "excess_leakage"].mean())
    assert gap_ruler > 0.01


def test_artifact_ratio_ci_flags_the_shortcut_model_and_not_the_control(audits):
    """attention_summary.json's `artifacts`: ratio CI above 1 for the shortcut model only."""
    rows = {}
    for preset, att in audits.items():
        found = [r for r in att.attrs["summary"]["artifacts"] if r["artifact"] == "ruler"]
        assert len(found) == 1
        rows[preset] = found[0]
    s, c = rows["shortcut"], rows["clean"]
    # measured 1.60 [1.54, 1.66] and 0.67 [0.59, 0.73] (seeds 1, 2: [1.83, 2.05] and
    # [0.61, 0.76], [1.74, 1.86] and [0.53, 0.67])
    assert s["ratio_ci_low"] > 1 and s["attends"] is True
    assert c["ratio_ci_low"] < 1 and c["attends"] is False
    # the ratio is a ratio of means over the ruler-bearing images (cross-check by hand)
    att = audits["shortcut"]
    r = att[(att["artifact_ruler"] == 1) & (att["area_ruler"] > 0) & att["mass_ruler"].notna()]
    assert s["n"] == len(r)
    assert s["ratio"] == pytest.approx(r["mass_ruler"].mean() / r["area_ruler"].mean(), rel=1e-4)


def _probe(audits, preset, probe, artifact=None):
    from dermcam.stages.probe import find

    e = find(audits[preset].attrs["probes"], "resnet18", probe, artifact)
    assert e is not None
    return e


def test_hirescam_flags_the_shortcut_model_and_not_the_control(audits):
    """Why the demo audits with HiResCAM: explaining the malignant class, as the demo does,
    HiResCAM at ResNet18's layer1 puts the control's ruler mass below the rulers' share and
    the shortcut model's above it; Grad-CAM, whose channel weights are mean gradients,
    flags the control there too. Measured at seed 0 (these float32 twins, 500 resamples):
    HiResCAM control 0.59 [0.52, 0.65], shortcut 2.67 [2.51, 2.81]; Grad-CAM's control
    1.59 [1.48, 1.70]. Seeds 1, 2: HiResCAM control [0.47, 0.66] and [0.35, 0.56], shortcut
    [4.24, 4.73] and [4.40, 4.82]; Grad-CAM's control [1.77, 2.20] and [1.88, 2.35]. (At
    layer2, which the seed-0 demo chose: 0.81 [0.67, 0.97] and 2.28 [2.16, 2.41], too close
    to 1 for the control to assert here.)"""
    layer = "layer1"
    from dermcam.localisation import artifact_ratio_at, artifact_test_images
    from dermcam.run import Run

    got = {}
    for preset in ("clean", "shortcut"):
        run = Run.of(audits[preset].attrs["run"])
        images, maps, code = artifact_test_images(run, "ruler")
        model, _info, payload = run.load_model("resnet18")
        got[preset] = artifact_ratio_at(model, "hirescam", layer, images, maps, code, "ruler",
                                        "malignant", n_boot=500)
        if preset == "clean" and layer == "layer1":
            grad = artifact_ratio_at(model, "gradcam", layer, images, maps, code, "ruler",
                                     "malignant", n_boot=500)
            assert grad["attends"] and grad["ratio_ci_low"] > 1.2
        if preset == "shortcut":
            # computed from the model on the fly, as bench_artifact_null.py compares methods
            # and layers: the same figure explain derived from attention.csv
            row = next(a for a in audits[preset].attrs["summary"]["artifacts"]
                       if a["artifact"] == "ruler")
            mine = artifact_ratio_at(model, row["method"], row["layer"], images, maps, code,
                                     "ruler", "predicted", n_boot=200,
                                     threshold=float(payload["threshold"]))
            assert mine["n"] == row["n"] >= 50
            assert mine["ratio"] == pytest.approx(row["ratio"], rel=1e-4)
            assert mine["ratio_ci_low"] == pytest.approx(row["ratio_ci_low"], abs=0.05)
    assert got["clean"]["n"] == got["shortcut"]["n"] >= 50
    assert got["clean"]["ratio_ci_high"] < 1 and not got["clean"]["attends"]
    assert got["shortcut"]["ratio_ci_low"] > 2 and got["shortcut"]["attends"]


def test_inserted_ruler_moves_the_shortcut_model_and_not_the_control(audits):
    s = _probe(audits, "shortcut", "artifact_inserted", "ruler")
    c = _probe(audits, "clean", "artifact_inserted", "ruler")
    assert s["n"] == c["n"] > 300 and s["placements"] == 2
    # paired CI well above 0 (measured +0.46 [+0.42, +0.51]; seeds 1, 2: [+0.66, +0.75],
    # [+0.65, +0.74])
    assert s["delta_ci_low"] > 0.1
    # benign decisions flip (measured 55 %; seeds 1, 2: 82 %, 92 %)
    assert s["flip_to_malignant"] > 0.2
    # The control's change lies within +-0.02 of none, CI included: equivalent to no
    # reaction at that margin, which is stronger than the issue's "CI includes 0 or
    # |change| < 0.02" (measured +0.006 [+0.003, +0.009]; seed 1 -0.009 [-0.012, -0.006];
    # seed 2 -0.004 [-0.007, -0.000]: a dark band beside the lesion is not nothing to a
    # model, hence not "CI includes 0").
    assert -0.02 < c["delta_ci_low"] <= c["delta_mean"] <= c["delta_ci_high"] < 0.02
    assert c["flip_to_malignant"] < 0.05  # measured 2.8 % (seeds 1, 2: 0.2 %, 1.8 %)
    assert s["delta_ci_low"] > c["delta_ci_high"] + 0.1


def test_removing_the_ruler_lowers_the_shortcut_models_malignant_probability(audits):
    s = _probe(audits, "shortcut", "artifact_removed", "ruler")
    c = _probe(audits, "clean", "artifact_removed", "ruler")
    assert s["n_malignant"] == c["n_malignant"] >= 5  # the same test images carry them
    # measured -0.74 [.., -0.54], n = 15 (seeds 1, 2: -0.75 [.., -0.56], n = 20; -0.91
    # [.., -0.76], n = 15); the control's 0.00 (-0.00, -0.01)
    assert s["delta_malignant_ci_high"] < 0
    assert s["delta_malignant"] < c["delta_malignant"] - 0.2


def test_lesion_removal_drops_the_clean_models_auc_towards_chance(audits):
    c = _probe(audits, "clean", "lesion_removed")
    # measured 0.950 intact, 0.470 (CI high 0.538) without the lesion; seeds 1, 2: 0.870,
    # 0.522 (0.598) and 0.936, 0.466 (0.541)
    assert c["auc_intact"] > 0.85
    assert c["auc"] < 0.7
    assert c["auc_ci_high"] < c["auc_intact"] - 0.15
