"""The localisation benchmark, the layer choice, the uniform-attention guard and artifact ratios."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dermcam.attribution import METHODS, CamExplainer
from dermcam.errors import DermcamError
from dermcam.localisation import (
    CHOICE_REASONS,
    artifact_ratios,
    choose,
    eligible,
    median_ci,
    multi_layer_cams,
    paired_artifact_ratio,
    uniform_guard,
)
from dermcam.models import build_model, layer_grid
from dermcam.stages.explain import parse_layer_spec


def _model(name):
    torch.manual_seed(0)
    model, info = build_model(name, weights="none")
    model.train()
    with torch.no_grad():  # non-degenerate batch-norm statistics
        model(torch.randn(8, 3, 64, 64))
    return model.eval(), info


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_one_pass_over_all_layers_equals_one_explainer_per_layer(name):
    model, info = _model(name)
    x = torch.randn(6, 3, 64, 64)
    classes = np.array([0, 1, 1, 0, 1, 0])
    maps = multi_layer_cams(model, info.candidate_layers, METHODS, x, classes, 64)
    assert set(maps) == {(ly, m) for ly in info.candidate_layers for m in METHODS}
    for (layer, method), heat in maps.items():
        with CamExplainer(model, layer, method) as ex:
            ref = ex.compute(x, target=classes, size=64).heatmaps
        np.testing.assert_allclose(heat, ref, atol=5e-4, err_msg=f"{layer}/{method}")
    # the model is left as it was: eval mode, gradients enabled on its parameters
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_layer_grid_and_candidates_are_shallow_to_deep():
    model, info = _model("resnet18")
    grid = layer_grid(model, info.candidate_layers, 64)
    assert [grid[ly] for ly in info.candidate_layers] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert info.candidate_layers[-1] == info.target_layer == "layer4"


def test_median_ci_known_answers():
    med, lo, hi = median_ci([0.7] * 20)
    assert (med, lo, hi) == (0.7, 0.7, 0.7)
    x = np.r_[np.full(50, 0.2), np.full(50, 0.9), [np.nan] * 5]  # NaNs are dropped
    med, lo, hi = median_ci(x, n_boot=2000, seed=3)
    assert med == pytest.approx(0.55) and lo <= 0.55 <= hi and lo >= 0.2 and hi <= 0.9
    assert np.isnan(median_ci([np.nan])[0])


def _row(layer, auroc, lo, undefined=0.0, sanity=True, method="gradcam"):
    return {"model": "m", "method": method, "layer": layer, "median_pixel_auroc": auroc,
            "ci_low": lo, "ci_high": auroc + 0.05, "better_than_uniform": lo > 0.5,
            "undefined_share": undefined, "sanity_passed": sanity, "n": 64,
            "images": "validation", "grid": [4, 4]}


def test_choose_takes_the_best_defensible_layer_with_a_reason_code():
    rows = [_row("l1", 0.95, 0.9, sanity=False),          # localises, fails sanity
            _row("l2", 0.85, 0.8, undefined=0.2),         # too many undefined maps
            _row("l3", 0.80, 0.75),                        # eligible
            _row("l4", 0.70, 0.65),                        # eligible, worse
            _row("l5", 0.55, 0.45)]                        # not better than uniform
    method, layer, why = choose(rows, "l5", "gradcam")
    assert (method, layer, why) == ("gradcam", "l3", "best_eligible")
    # the others are not eligible, each for its own reason in the rows
    assert [eligible(r) for r in rows] == [False, False, True, True, False]
    # ties go to the deeper layer
    assert choose([_row("a", 0.8, 0.7), _row("b", 0.8, 0.7)], "b", "gradcam")[1] == "b"
    # nothing eligible: the study's layer, with a warning not to read it spatially
    method, layer, why = choose([_row("l1", 0.9, 0.8, sanity=None), _row("l5", 0.52, 0.49)],
                                "l5", "gradcam")
    assert (layer, why) == ("l5", "none_eligible") and why in CHOICE_REASONS


def test_choose_method_and_layer_together():
    rows = [_row("l1", 0.70, 0.65), _row("l2", 0.60, 0.55),
            _row("l1", 0.95, 0.90, sanity=False, method="layercam"),
            _row("l2", 0.85, 0.80, method="layercam")]
    method, layer, why = choose(rows, "l2", "gradcam")
    assert (method, layer, why) == ("layercam", "l2", "best_eligible")


def test_uniform_guard_flags_maps_no_better_than_uniform():
    rng = np.random.default_rng(0)
    uniform = pd.DataFrame({"pixel_auroc": 0.5 + rng.normal(0, 0.01, 80),
                            "excess_leakage": rng.normal(0, 0.01, 80)})
    g = uniform_guard(uniform, n_boot=500)
    assert g["better_than_uniform"] is False and "sentence" not in g
    assert g["auroc_above_chance"] is False and g["excess_below_zero"] is False
    good = pd.DataFrame({"pixel_auroc": 0.85 + rng.normal(0, 0.02, 80),
                         "excess_leakage": -0.2 + rng.normal(0, 0.02, 80)})
    g = uniform_guard(good, n_boot=500)
    assert g["better_than_uniform"] is True
    assert g["auroc_above_chance"] is True and g["excess_below_zero"] is True
    assert g["pixel_auroc_ci"][0] > 0.8
    # localising by AUROC but leaking as much as uniform still gets the caution
    mixed = good.assign(excess_leakage=rng.normal(0, 0.02, 80))
    g = uniform_guard(mixed, n_boot=500)
    assert g["better_than_uniform"] is False
    assert g["auroc_above_chance"] is True and g["excess_below_zero"] is False


def test_artifact_ratio_known_answers():
    n = 40
    area = np.linspace(0.02, 0.08, n)
    df = pd.DataFrame({"artifact_ruler": [1] * n + [0] * 5,
                       "mass_ruler": np.r_[2 * area, [np.nan] * 5],
                       "area_ruler": np.r_[area, [0.0] * 5],
                       "artifact_ink": 1, "mass_ink": np.r_[area, [0.01] * 5],
                       "area_ink": np.r_[area, [0.01] * 5]})
    rows = {r["artifact"]: r for r in artifact_ratios(df, ["ruler", "ink", "hair"], n_boot=500)}
    assert set(rows) == {"ruler", "ink"}  # no columns for hair: skipped
    r = rows["ruler"]
    assert r["n"] == n and r["ratio"] == pytest.approx(2.0)
    assert r["ratio_ci_low"] == pytest.approx(2.0) and r["attends"] is True
    assert r["mass_share"] == pytest.approx(2 * area.mean())
    i = rows["ink"]
    assert i["n"] == n + 5 and i["ratio"] == pytest.approx(1.0) and i["attends"] is False


def test_paired_ratio_against_a_control_known_answers():
    """Both models over-weight the ruler (ratio vs uniform 1.5 and 3.0, both 'attending');
    against the control the shortcut model puts exactly twice the mass on it; images
    only one model audited, or without the ruler, are left out."""
    rng = np.random.default_rng(0)
    n = 60
    area = rng.uniform(0.02, 0.08, n)
    ids = [f"im{i:03d}" for i in range(n)]
    control = pd.DataFrame({"image_id": ids, "artifact_ruler": 1, "mass_ruler": 1.5 * area,
                            "area_ruler": area})
    shortcut = control.assign(mass_ruler=3.0 * area)
    shortcut.loc[0, "artifact_ruler"] = 0  # no ruler on this image: not counted
    extra = pd.DataFrame({"image_id": ["only_here"], "artifact_ruler": [1],
                          "mass_ruler": [0.9], "area_ruler": [0.01]})
    shortcut = pd.concat([shortcut, extra], ignore_index=True)
    for df in (control, shortcut):  # both exceed uniform attention on their own
        assert artifact_ratios(df, ["ruler"], n_boot=200)[0]["attends"] is True
    r = paired_artifact_ratio(shortcut, control, "ruler", n_boot=300)
    assert r["n"] == n - 1 and r["relative"] == pytest.approx(2.0)
    assert r["ci_low"] == pytest.approx(2.0) and r["more_than_control"] is True
    same = paired_artifact_ratio(control, control, "ruler", n_boot=300)
    assert same["relative"] == pytest.approx(1.0) and same["more_than_control"] is False
    # the control's masses shuffled across images: the same total, so relative is 1,
    # image by image it differs, so the CI has width around 1; not flagged
    noisy = control.assign(mass_ruler=rng.permutation(control["mass_ruler"].to_numpy()))
    r = paired_artifact_ratio(noisy, control, "ruler", n_boot=500)
    assert r["relative"] == pytest.approx(1.0)
    assert r["ci_low"] < 1 < r["ci_high"] and r["more_than_control"] is False
    with pytest.raises(ValueError, match="mass_ink"):
        paired_artifact_ratio(shortcut, control, "ink")


def test_parse_layer_spec():
    names = ["resnet18", "mobilenet_v2"]
    assert parse_layer_spec(None, names) == {"resnet18": "auto", "mobilenet_v2": "auto"}
    assert parse_layer_spec("last", names) == {"resnet18": "last", "mobilenet_v2": "last"}
    assert parse_layer_spec("resnet18=layer2", names) == {"resnet18": "layer2",
                                                          "mobilenet_v2": "auto"}
    with pytest.raises(DermcamError, match="did not train"):
        parse_layer_spec("vgg11=features.3", names)
    with pytest.raises(DermcamError, match="model=layer"):
        parse_layer_spec("resnet18=", names)


def test_models_command_lists_candidate_layers_with_their_size():
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "dermcam", "models", "--image-size", "64"],
                       capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"})
    assert r.returncode == 0, r.stderr
    for cell in ("layer1 (16x16)", "layer2 (8x8)", "layer4 (2x2)", "features.13 (4x4)",
                 "features.5 (4x4)"):
        assert cell in r.stdout
