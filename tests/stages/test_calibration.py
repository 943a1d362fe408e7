"""Platt and temperature scaling (#16 item 4): known temperatures and biases recovered,
scipy and statsmodels cross-checks, scores with known values, the checkpoint's calibration
applied by every stage."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import minimize_scalar

from dermcam import calibration as cal
from dermcam.config import EvaluateConfig

# trains a model or runs a whole stage: deselect with -m 'not slow'
pytestmark = pytest.mark.slow


def simulated(t_true: float, n: int = 40_000, seed: int = 0):
    """Labels drawn from sigmoid(true_logit); the model reports true_logit * T_true."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(int)
    return true_logit * t_true, y


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.0, 3.5])
def test_fit_recovers_known_temperature(t_true):
    d, y = simulated(t_true)
    t = cal.fit_temperature(d, y)
    # n = 40 000: the MLE's sampling SD is about 1 % of T; 5 % is a loose bound
    assert t == pytest.approx(t_true, rel=0.05)
    # (N, 2) logits give the same answer as their difference
    z = np.stack([-d / 2, d / 2], axis=1)
    assert cal.fit_temperature(z, y) == pytest.approx(t, rel=1e-4)


def test_fit_is_the_nll_minimum_found_by_scipy_directly():
    d, y = simulated(2.0, n=5000, seed=1)

    def nll_of_t(t):  # from the probabilities, not the module's log-sum-exp form
        return cal.nll(y, 1 / (1 + np.exp(-d / t)))

    ref = minimize_scalar(nll_of_t, bounds=(0.05, 20), method="bounded",
                          options={"xatol": 1e-8}).x
    t = cal.fit_temperature(d, y)
    assert t == pytest.approx(ref, rel=1e-3)
    assert nll_of_t(t) <= nll_of_t(t * 1.05) and nll_of_t(t) <= nll_of_t(t / 1.05)


def test_calibration_lowers_ece_and_brier_of_overconfident_logits():
    d, y = simulated(3.0, n=20_000, seed=2)
    t = cal.fit_temperature(d, y)
    before = cal.calibration_scores(y, cal.apply_temperature(d, 1.0))
    after = cal.calibration_scores(y, cal.apply_temperature(d, t))
    assert after["nll"] < before["nll"] and after["brier"] < before["brier"]
    assert after["ece"] < 0.02 < before["ece"]


def test_platt_matches_statsmodels_logistic_regression():
    """Platt scaling is a logistic regression of the labels on z1 - z0: slope 1 / T, b."""
    import statsmodels.api as sm

    rng = np.random.default_rng(3)
    d = rng.normal(1.0, 3.0, 3000)
    y = (rng.random(3000) < 1 / (1 + np.exp(-(0.4 * d - 1.5)))).astype(int)
    t, b = cal.fit_platt(d, y)
    fit = sm.Logit(y, sm.add_constant(d)).fit(disp=0)
    assert 1 / t == pytest.approx(fit.params[1], rel=1e-4)
    assert b == pytest.approx(fit.params[0], rel=1e-4, abs=1e-5)


def test_platt_undoes_a_shift_that_sends_temperature_to_its_bound():
    """Every logit shifted by +4 (a weighted loss, batch-norm drift): temperature scaling
    has no interior minimum and squeezes every probability towards 0.5; Platt recovers
    the shift and the probabilities."""
    true_logit, y = simulated(1.0, n=20_000, seed=4)
    d = true_logit + 4.0
    t_only = cal.fit_temperature(d, y)
    t, b = cal.fit_platt(d, y)
    assert t == pytest.approx(1.0, rel=0.05) and b == pytest.approx(-4.0, abs=0.15)
    p_platt = cal.apply_temperature(d, t, b)
    p_temp = cal.apply_temperature(d, t_only)
    assert cal.nll(y, p_platt) < cal.nll(y, p_temp) - 0.05
    assert cal.calibration_scores(y, p_platt)["ece"] < 0.02
    # the same model's probabilities from the torch path (calibrated_prob) agree
    model = torch.nn.Identity()
    cal.set_temperature(model, t, b)
    z = torch.from_numpy(np.stack([np.zeros_like(d), d], axis=1))
    np.testing.assert_allclose(cal.calibrated_prob(model, z).numpy(), p_platt, atol=1e-6)
    assert cal.fit_calibration(d, y, "none") == (1.0, 0.0)
    assert cal.fit_calibration(d, y, "temperature") == (t_only, 0.0)
    with pytest.raises(ValueError, match="platt, temperature, none"):
        cal.fit_calibration(d, y, "isotonic")
    with pytest.raises(ValueError, match="bias"):
        cal.apply_temperature(d, 1.0, float("nan"))


def test_apply_and_scores_closed_form():
    z = np.array([[0.0, 0.0], [0.0, 2.0], [1.0, -1.0]])
    np.testing.assert_allclose(cal.apply_temperature(z, 2.0),
                               [0.5, 1 / (1 + math.e ** -1), 1 / (1 + math.e)])
    np.testing.assert_allclose(cal.apply_temperature(np.array([800.0, -800.0]), 1.0), [1, 0])
    assert cal.brier([1, 0, 1, 0], [1.0, 0.0, 0.5, 0.5]) == pytest.approx(0.125)
    assert cal.nll([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))


@pytest.mark.parametrize("bad", [
    (np.zeros((3, 3)), [0, 1, 0], "got shape"),
    (np.zeros(3), [0, 1], "labels of shape"),
    (np.zeros(3), [1, 1, 1], "both classes"),
    (np.array([0.0, np.inf]), [0, 1], "finite"),
])
def test_fit_refuses_bad_input(bad):
    z, y, msg = bad
    with pytest.raises(ValueError, match=msg):
        cal.fit_temperature(z, y)
    with pytest.raises(ValueError, match="> 0"):
        cal.apply_temperature([0.0], 0.0)


def test_calibration_summary_before_after_with_cis():
    d, y = simulated(3.0, n=600, seed=3)
    t = cal.fit_temperature(d, y)
    preds = pd.DataFrame({"model": "m", "label": y, "temperature": t,
                          "prob_malignant": cal.apply_temperature(d, t),
                          "prob_malignant_uncalibrated": cal.apply_temperature(d, 1.0)})
    s = cal.calibration_summary(preds, n_boot=200, seed=0)["m"]
    assert s["temperature"] == pytest.approx(t)
    for k in ("ece", "brier"):
        want_b = cal.calibration_scores(y, preds["prob_malignant_uncalibrated"])[k]
        assert s["before"][k]["value"] == pytest.approx(want_b)
        assert s["before"][k]["lo"] <= s["before"][k]["value"] <= s["before"][k]["hi"]
        assert s["change"][k]["value"] < 0 and s["change"][k]["hi"] < 0
    assert sum(s["reliability_before"]["count"]) == len(y)
    assert cal.calibration_summary(preds.drop(columns="prob_malignant_uncalibrated")) == {}


class Fixed(torch.nn.Module):
    """Logits (0, 1) for every image."""

    def forward(self, x):
        return torch.tensor([[0.0, 1.0]]).repeat(len(x), 1)


def test_model_temperature_applied_by_predict_proba_and_cam_targets():
    from dermcam.inference import predict_proba
    from dermcam.localisation import target_classes

    images = np.zeros((3, 8, 8, 3), np.uint8)
    model = Fixed()
    assert cal.temperature_of(model) == 1.0  # old checkpoints: T = 1
    np.testing.assert_allclose(predict_proba(model, images), 1 / (1 + math.e ** -1), rtol=1e-6)
    cal.set_temperature(model, 4.0)
    p = 1 / (1 + math.e ** -0.25)
    np.testing.assert_allclose(predict_proba(model, images), p, rtol=1e-6)
    x = torch.zeros(3, 3, 8, 8)
    # a threshold between the raw (0.73) and the calibrated (0.56) probability
    assert target_classes(model, x, "predicted", None, 0.6).tolist() == [0, 0, 0]
    cal.set_temperature(model, 4.0, -1.0)  # Platt: sigmoid(1 / 4 - 1)
    np.testing.assert_allclose(predict_proba(model, images), 1 / (1 + math.e ** 0.75),
                               rtol=1e-6)
    assert target_classes(model, x, "predicted", None, 0.4).tolist() == [0, 0, 0]
    assert target_classes(model, x, "predicted", None, 0.3).tolist() == [1, 1, 1]


@pytest.fixture(scope="module")
def calibrated_runs(tmp_path_factory, dh):
    """Three tiny runs (ResNet18 from scratch, 32 px, one epoch) on one generic data set
    (14 benign, 10 malignant, every third image a test image), one per calibration:
    ``(folder, {method: the run's manifest entry for resnet18})``."""
    from dermcam.stages.train import TrainConfig, train

    base = tmp_path_factory.mktemp("calib")
    data = base / "data"
    labels = dh.generic_labels(14, 10)
    lines = ["image_id,label,split"]
    for k, (image_id, label) in enumerate(labels.items()):
        dh.write_image(data / "images" / f"{image_id}.png", label, seed=k)
        dh.write_mask(data / "masks" / f"{image_id}.png")
        lines.append(f"{image_id},{label},{'test' if k % 3 == 0 else 'train'}")
    (data / "labels.csv").write_text("\n".join(lines) + "\n")
    runs = {}
    for method in ("platt", "temperature", "none"):
        cfg = TrainConfig(data=str(data), out=str(base / method), models=["resnet18"],
                          weights="none", image_size=32, max_epochs=1, batch_size=8, seed=1,
                          progress=False, val_fraction=0.3, calibration=method,
                          cache_dir=str(base / "cache"))
        runs[method] = train(cfg)["models"]["resnet18"]
    return base, runs


def test_train_fits_temperature_and_evaluate_reports_before_after(calibrated_runs):
    """A tiny run: T (and with platt, b) fitted on validation and stored; evaluate scores
    with them and reports ECE and Brier before and after; --calibration none stores T = 1."""
    import json

    from dermcam.checkpoints import load_checkpoint
    from dermcam.stages.evaluate import run_evaluate

    tmp_path, runs = calibrated_runs
    for method in ("platt", "temperature", "none"):
        out = tmp_path / method
        model, _, payload = load_checkpoint(out / "models/resnet18/model.pt")
        assert payload["temperature"] == runs[method]["temperature"]
        assert cal.temperature_of(model) == payload["temperature"]
        assert cal.bias_of(model) == payload["calibration_bias"] == runs[method][
            "calibration_bias"]
        assert payload["calibration"]["method"] == method
    fitted, none = runs["temperature"], runs["none"]
    assert none["temperature"] == 1.0
    assert fitted["temperature"] != 1.0
    # same seed, same weights: the fit can only lower the validation NLL
    assert fitted["calibration"]["before"] == pytest.approx(none["calibration"]["before"])
    assert fitted["calibration"]["after"]["nll"] <= fitted["calibration"]["before"]["nll"]
    assert fitted["calibration_bias"] == 0.0 and none["calibration_bias"] == 0.0
    platt = runs["platt"]  # two parameters: never a worse validation NLL than T alone
    assert platt["calibration"]["after"]["nll"] <= fitted["calibration"]["after"]["nll"] + 1e-9
    run_evaluate(tmp_path / "platt", EvaluateConfig(n_boot=50))
    pp = pd.read_csv(tmp_path / "platt" / "predictions.csv")
    raw = pp["prob_malignant_uncalibrated"].clip(1e-6, 1 - 1e-6)
    expect = 1 / (1 + np.exp(-(np.log(raw / (1 - raw)) / platt["temperature"]
                               + platt["calibration_bias"])))
    np.testing.assert_allclose(pp["prob_malignant"], expect, atol=1e-4)
    assert pp["calibration_bias"].iloc[0] == pytest.approx(platt["calibration_bias"], abs=1e-6)
    result = run_evaluate(tmp_path / "temperature", EvaluateConfig(n_boot=50))
    preds = pd.read_csv(tmp_path / "temperature" / "predictions.csv")
    t = fitted["temperature"]
    raw = preds["prob_malignant_uncalibrated"].clip(1e-6, 1 - 1e-6)
    expect = 1 / (1 + np.exp(-np.log(raw / (1 - raw)) / t))
    np.testing.assert_allclose(preds["prob_malignant"], expect, atol=1e-4)
    c = result["calibration"]["resnet18"]
    assert c["temperature"] == pytest.approx(t, rel=1e-5)
    assert c["after"]["ece"]["value"] == pytest.approx(
        result["models"]["resnet18"]["threshold_free"]["ece"]["value"])
    saved = json.loads((tmp_path / "temperature" / "metrics.json").read_text())
    assert set(saved["calibration"]["resnet18"]) >= {"before", "after", "change"}
    assert (tmp_path / "temperature" / "figures" / "reliability.png").exists()


def _validation_logits(run):
    """``(z1 - z0, labels)`` of a run's validation images, recomputed from its saved model:
    the training split, its seeded stratified validation part, the run's image size."""
    from dermcam import run as runmod
    from dermcam.checkpoints import load_checkpoint
    from dermcam.data import load_dataset
    from dermcam.data.cache import ImageCache
    from dermcam.inference import predict_logit_diff
    from dermcam.stages.train import CachedSplit, stratified_split

    cfg = runmod.read_manifest(run)["config"]
    train_samples = load_dataset(cfg["data"]).split("train")
    y = np.array([s.label for s in train_samples])
    _, va = stratified_split(y, cfg["val_fraction"], cfg["seed"],
                             groups=[s.group for s in train_samples])
    arrays = CachedSplit(train_samples, cfg["image_size"], ImageCache(cfg["cache_dir"]))
    model, _, payload = load_checkpoint(run / "models/resnet18/model.pt")
    return predict_logit_diff(model, arrays.dataset(va)), y[va], payload


@pytest.mark.parametrize("method", ["platt", "temperature", "none"])
def test_threshold_is_youden_on_calibrated_validation_probabilities(calibrated_runs, method):
    """The recorded threshold is Youden's J on the validation probabilities after the run's
    calibration; with Platt or temperature scaling the raw probabilities give another."""
    from dermcam.evaluation import youden_threshold

    base, runs = calibrated_runs
    z, y, payload = _validation_logits(base / method)
    t, b = payload["temperature"], payload["calibration_bias"]
    raw = youden_threshold(y, cal.apply_temperature(z, 1.0))
    calibrated = youden_threshold(y, cal.apply_temperature(z, t, b))
    thr = runs[method]["threshold"]
    assert payload["threshold"] == thr
    assert thr == pytest.approx(calibrated, abs=1e-6)
    if method == "none":
        assert (t, b) == (1.0, 0.0) and thr == pytest.approx(raw, abs=1e-6)
    else:  # the test can tell the two apart: the raw rule would record another number
        assert abs(raw - calibrated) > 1e-3
