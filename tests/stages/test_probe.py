"""The probe stage: each perturbation changes only the pixels it names; known-answer
statistics; the stage over a run (rows, resume, skipped images, CLI).

The proof that the probes measure what they claim (a shortcut model reacts to inserted
rulers, a clean one does not; lesion removal drops the clean model's AUC) is in
tests/end_to_end/test_shortcut.py, which trains the twin models once for both audits.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermcam import perturb as pt
from dermcam.config import ProbeConfig
from dermcam.errors import DermcamError
from dermcam.probe_stats import auc_fast
from dermcam.stages import probe as pr
from dermcam.stats import spearman_rows

# trains a model or runs a whole stage: deselect with -m 'not slow'
pytestmark = pytest.mark.slow

SKIN = (200, 160, 140)


def _image(size=48, seed=0):
    """Flat skin with light noise, a dark disc lesion; returns ``(image, mask)``."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = SKIN
    img = (img.astype(int) + rng.integers(-3, 4, img.shape)).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 5) ** 2
    img[mask] = (70, 40, 30)
    return img, mask


# ------------------------------------------------------------------ perturbations


def test_dilate_mask_grows_by_the_stated_radius():
    m = np.zeros((41, 41), bool)
    m[20, 20] = True
    d = pt.dilate_mask(m, fraction=3 / 41)  # r = round(3) = 3 px
    ys, xs = np.nonzero(d)
    assert ys.min() == 17 and ys.max() == 23 and xs.min() == 17 and xs.max() == 23
    assert not d[17, 17]  # a disc, not a square
    assert np.array_equal(pt.dilate_mask(m, 0), m)
    with pytest.raises(ValueError, match="2-D"):
        pt.dilate_mask(np.zeros((4, 4, 3)))


def test_lesion_removal_changes_only_the_dilated_lesion_and_fills_it_with_skin():
    img, mask = _image()
    region = pt.dilate_mask(mask)
    out = pt.remove_lesion(img, region)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(out[~region], img[~region])  # bit-identical outside
    filled = out[mask].astype(float).mean(0)
    assert np.all(np.abs(filled - SKIN) < 8)  # the dark lesion is now skin-coloured
    ns = pt.remove_lesion(img, region, method="ns")
    assert np.array_equal(ns[~region], img[~region])
    with pytest.raises(ValueError, match="inpainting"):
        pt.inpaint(img, region, method="magic")


def test_skin_colour_ignores_lesion_dark_corners_saturation_and_artifacts():
    img, mask = _image(64)
    img[:10, :10] = (5, 5, 5)  # vignette corner
    img[-6:, -6:] = (255, 255, 255)  # glare
    arts = np.zeros(mask.shape, np.uint8)
    arts[30:34, :8] = 1
    img[30:34, :8] = (40, 40, 40)  # a ruler, known from the artifact map
    got = pt.skin_colour(img, pt.dilate_mask(mask), arts)
    assert np.all(np.abs(got.astype(int) - SKIN) <= 1)


def test_background_removal_keeps_the_lesion_and_flattens_the_rest():
    img, mask = _image()
    region = pt.dilate_mask(mask)
    out = pt.remove_background(img, region)
    assert np.array_equal(out[region], img[region])
    outside = out[~region]
    assert (outside == outside[0]).all()
    assert np.all(np.abs(outside[0].astype(int) - SKIN) <= 1)


@pytest.mark.parametrize("name", ["ruler", "ink", "patch", "vignette", "hair"])
def test_artifact_insertion_leaves_the_lesion_bit_identical_and_is_seeded(name):
    img, mask = _image(96)
    region = pt.dilate_mask(mask)
    a, changed = pt.insert_artifact(img, region, name, np.random.default_rng(1))
    b, _ = pt.insert_artifact(img, region, name, np.random.default_rng(1))
    c, _ = pt.insert_artifact(img, region, name, np.random.default_rng(2))
    assert np.array_equal(a[region], img[region])
    assert changed.any() and not (changed & region).any()
    assert np.array_equal((a != img).any(-1), changed)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_artifact_removal_on_a_rendered_ruler():
    from dermcam.data.synth import ARTIFACTS, SynthConfig, render_sample

    cfg = SynthConfig.from_preset("shortcut", n_train=40, n_test=10, image_size=96, seed=0)
    s = next(r for i in range(40) if "ruler" in (r := render_sample(cfg, "train", i)).present)
    ruler = s.artifacts == ARTIFACTS.index("ruler") + 1
    out = pt.remove_artifact(s.image, ruler, s.mask)
    touched = (out != s.image).any(-1)
    from scipy.ndimage import binary_dilation

    grown = binary_dilation(ruler, np.ones((3, 3), bool))  # one pixel, 8-connected
    assert not (touched & ~grown).any()  # nothing outside the (grown) ruler
    assert np.array_equal(out[s.mask], s.image[s.mask])  # the lesion untouched
    lum = (s.image[ruler].astype(float).mean(), out[ruler].astype(float).mean())
    assert lum[1] > lum[0] + 30  # the dark band is gone


def test_perturb_lists_every_variant_in_order_and_is_deterministic():
    img, mask = _image(64)
    arts = np.zeros(mask.shape, np.uint8)
    arts[2:6, 5:40] = 1  # a ruler
    cfg = pr.PerturbConfig(placements=2, seed=3)
    v1 = pr.perturb(img, mask, arts, "ISIC_1", cfg)
    v2 = pr.perturb(img, mask, arts, "ISIC_1", cfg)
    keys = [(v.probe, v.artifact, v.placement) for v in v1]
    assert keys[:2] == [("lesion_removed", "", 0), ("background_removed", "", 0)]
    ins = [k for k in keys if k[0] == "artifact_inserted"]
    assert len(ins) == 2 * len(cfg.artifacts)
    assert [k for k in keys if k[0] == "artifact_removed"] == [("artifact_removed", "ruler", 0)]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(v1, v2))
    other = pr.perturb(img, mask, arts, "ISIC_2", cfg)  # placements depend on the image id
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(v1[2:], other[2:]))
    assert not any(v.probe == "artifact_removed" for v in pr.perturb(img, mask, None, "x", cfg))
    for v in v1:
        assert 0 < v.changed_share <= 1


def test_skip_reasons_and_config_errors():
    assert pr.skip_reason(None) == "no lesion mask"
    assert pr.skip_reason(np.zeros((4, 4))) == "empty lesion mask"
    assert pr.skip_reason(np.ones((4, 4))) == "lesion mask covers the whole image"
    assert pr.skip_reason(np.eye(4)) is None
    with pytest.raises(DermcamError, match="unknown probe"):
        pr.PerturbConfig(probes=("lesion_gone",))
    with pytest.raises(DermcamError, match="unknown artifact"):
        pr.PerturbConfig(artifacts=("tattoo",))
    with pytest.raises(DermcamError, match="placements"):
        pr.PerturbConfig(placements=0)


# ------------------------------------------------------------------ statistics


def _table():
    """Four images x one model: a lesion probe and an insertion with two placements."""
    rows = []
    intact = {"a": (0, 0.1), "b": (0, 0.3), "c": (1, 0.6), "d": (1, 0.9)}
    lesion = {"a": 0.2, "b": 0.1, "c": 0.7, "d": 0.4}
    ruler = {"a": (0.6, 0.2), "b": (0.3, 0.5), "c": (0.6, 0.8), "d": (0.9, 0.3)}
    for i, (y, p0) in intact.items():
        rows.append((i, y, "m", "lesion_removed", "", 0, p0, lesion[i]))
        for k, p1 in enumerate(ruler[i]):
            rows.append((i, y, "m", "artifact_inserted", "ruler", k, p0, p1))
    df = pd.DataFrame(rows, columns=["image_id", "label", "model", "probe", "artifact",
                                     "placement", "prob_intact", "prob_perturbed"])
    df["delta"] = df["prob_perturbed"] - df["prob_intact"]
    df["threshold"] = 0.5
    df["decision_intact"] = (df["prob_intact"] >= 0.5).astype(int)
    df["decision_perturbed"] = (df["prob_perturbed"] >= 0.5).astype(int)
    df["changed_share"] = 0.1
    df["lesion_area"] = 0.2
    return df


def test_summary_entries_have_known_answers():
    from sklearn.metrics import average_precision_score, roc_auc_score

    df = _table()
    entries = pr.summarise(df, n_boot=400, seed=0)
    les = pr.find(entries, "m", "lesion_removed")
    ins = pr.find(entries, "m", "artifact_inserted", "ruler")
    assert les["n"] == 4 and ins["n"] == 4 and ins["placements"] == 2
    # per image: placements averaged first -> a +0.3, b +0.1, c +0.1, d -0.3
    assert ins["delta_mean"] == pytest.approx(np.mean([0.3, 0.1, 0.1, -0.3]))
    assert ins["delta_ci_low"] <= ins["delta_mean"] <= ins["delta_ci_high"]
    assert ins["delta_benign"] == pytest.approx(0.2) and ins["n_benign"] == 2
    assert ins["delta_malignant"] == pytest.approx(-0.1)
    # flips over (image, placement) rows: benign-decided a, b (4 rows): a@0.6, b@0.5 -> 2/4
    assert ins["flip_to_malignant"] == pytest.approx(2 / 4)
    # malignant-decided c, d (4 rows): c@0.6, c@0.8 stay, d@0.9 stays, d@0.3 flips -> 1/4
    assert ins["flip_to_benign"] == pytest.approx(1 / 4)
    y = np.array([0, 0, 1, 1])
    assert les["auc"] == pytest.approx(roc_auc_score(y, [0.2, 0.1, 0.7, 0.4]))
    assert les["auc_intact"] == pytest.approx(roc_auc_score(y, [0.1, 0.3, 0.6, 0.9]))
    assert les["ap"] == pytest.approx(average_precision_score(y, [0.2, 0.1, 0.7, 0.4]))
    assert "auc" not in ins
    assert [e["probe"] for e in entries] == ["lesion_removed", "artifact_inserted"]


def test_removal_auc_cis_equal_scikit_learn_on_the_same_resamples():
    """The vectorised AUC/AP bootstrap gives the interval that calling scikit-learn on each
    stratified resample gives (ties included), and NaN with a reason for one class."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from dermcam.stats import bootstrap_ci

    rng = np.random.default_rng(3)
    y = (rng.random(120) < 0.25).astype(np.int64)
    intact = np.round(rng.random(120) * 0.5 + 0.4 * y, 2)  # rounded: many ties
    pert = np.round(rng.random(120) * 0.8 + 0.1 * y, 2)
    got = auc_fast(y, intact, pert, n_boot=300, seed=5)
    for key, fn in (("auc", roc_auc_score), ("ap", average_precision_score)):
        for suffix, p in (("", pert), ("_intact", intact)):
            v, lo, hi = bootstrap_ci(fn, y, p, n_boot=300, seed=5)
            assert got[f"{key}{suffix}"] == pytest.approx(v, abs=1e-12)
            assert got[f"{key}{suffix}_ci_low"] == pytest.approx(lo, abs=1e-12)
            assert got[f"{key}{suffix}_ci_high"] == pytest.approx(hi, abs=1e-12)
    one = auc_fast(np.zeros(5, np.int64), intact[:5], pert[:5], n_boot=50, seed=0)
    assert one["auc_reason"] == "the images are of one class"
    assert all(np.isnan(one[k]) for k in ("auc", "ap_ci_low", "auc_intact_ci_high"))


def test_tracking_correlates_leakage_with_the_size_of_the_change():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    n = 60
    ids = [f"i{k:02d}" for k in range(n)]
    leak = rng.uniform(0, 1, n)
    p0 = rng.uniform(0.2, 0.8, n)
    change = 0.3 * leak * np.where(rng.uniform(size=n) < 0.5, -1, 1)  # |delta| = 0.3 leak
    df = pd.DataFrame({"image_id": ids, "label": np.arange(n) % 2, "model": "m",
                       "probe": "background_removed", "artifact": "", "placement": 0,
                       "prob_intact": p0, "prob_perturbed": p0 + change})
    df["delta"] = df["prob_perturbed"] - df["prob_intact"]
    df["threshold"], df["changed_share"], df["lesion_area"] = 0.5, 0.5, 0.2
    df["decision_intact"] = (df["prob_intact"] >= 0.5).astype(int)
    df["decision_perturbed"] = (df["prob_perturbed"] >= 0.5).astype(int)
    att = pd.DataFrame({"image_id": ids, "model": "m", "leakage": leak,
                        "excess_leakage": -leak, "cam": "gradcam@layer3"})
    e = pr.summarise(df, n_boot=200, attention=att)[0]
    expect = spearmanr(leak, np.abs(df["delta"])).statistic
    assert e["leakage_rho"] == pytest.approx(expect) and e["leakage_rho"] > 0.99
    assert e["excess_leakage_rho"] == pytest.approx(-expect)
    assert e["leakage_rho_ci_low"] > 0 and e["rho_n"] == n and e["cam"] == "gradcam@layer3"


# ------------------------------------------------------------------ the stage


def _data(root, n=36, size=32, seed=0, drop_mask=None):
    """Generic layout, dark malignant blobs, pale benign ones; optionally one mask missing."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["image_id,label,split"]
    for i in range(n):
        label = int(i % 3 == 0)
        img = np.full((size, size, 3), SKIN, np.uint8)
        yy, xx = np.mgrid[:size, :size]
        cy, cx = rng.uniform(10, size - 10, 2)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(4, 7) ** 2
        img[m] = (40, 20, 10) if label else (170, 120, 90)
        Image.fromarray(img).save(root / "images" / f"img{i:03d}.png")
        if f"img{i:03d}" != drop_mask:
            Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / f"img{i:03d}.png")
        rows.append(f"img{i:03d},{label},{'test' if i % 2 else 'train'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    from dermcam.stages.train import TrainConfig, train

    base = tmp_path_factory.mktemp("probe")
    data = _data(base / "data", drop_mask="img001")
    run = base / "run"
    train(TrainConfig(data=str(data), out=str(run), models=["resnet18"], weights="none",
                      image_size=32, max_epochs=1, batch_size=8, seed=0, progress=False,
                      cache_dir=str(base / "cache")))
    entries = pr.run_probe(run, ProbeConfig(placements=2, batch_size=8, n_boot=100,
                                            artifacts=("ruler", "ink")))
    return run, entries


def test_stage_writes_one_row_per_image_model_probe_placement(probed):
    run, entries = probed
    df = pr.read_rows(run / pr.PROBE_CSV)
    test_ids = {f"img{i:03d}" for i in range(1, 36, 2)}
    assert set(df["image_id"]) == test_ids - {"img001"}  # the mask-less image is skipped
    per_image = df.groupby("image_id").size()
    assert (per_image == 2 + 2 * 2).all()  # lesion, background, 2 artifacts x 2 placements
    assert np.allclose(df["delta"], df["prob_perturbed"] - df["prob_intact"])
    assert ((df["decision_intact"] == 1) == (df["prob_intact"] >= df["threshold"])).all()
    manifest = json.loads((run / "manifest.json").read_text())
    st = manifest["stages"]["probe"]
    assert st["status"] == "complete"
    assert st["skipped"] == [{"image_id": "img001", "reason": "no lesion mask"}]
    summary = json.loads((run / pr.PROBE_SUMMARY).read_text())
    assert summary["schema_version"] == pr.SUMMARY_SCHEMA
    assert summary["entries"] == json.loads(
        json.dumps(entries, default=float).replace("NaN", "null"))
    assert "subgroups" not in summary and "artifact_presence" not in summary  # none asked
    assert pr.read_summary(run) == summary["entries"]
    for f in ("probe_delta.png", "probe_auc.png", "probe_examples.png"):
        assert (run / "figures" / f).stat().st_size > 1000


def test_stage_resumes_from_its_batches_with_identical_output(probed):
    run, _ = probed
    before = (run / pr.PROBE_CSV).read_bytes()
    batches = sorted((run / pr.PROBE_DIR).glob("batch_*.csv"))
    assert len(batches) == 3  # 17 probed images (18 minus the mask-less one), batches of 8
    batches[-1].unlink()
    (run / pr.PROBE_CSV).unlink()
    pr.run_probe(run, ProbeConfig(placements=2, batch_size=8, n_boot=100,
                                  artifacts=("ruler", "ink"), figures=False))
    assert (run / pr.PROBE_CSV).read_bytes() == before


def test_bf16_inference_is_recorded_close_to_float32_and_never_mixed_with_it(probed):
    run, _ = probed
    kw = dict(placements=2, batch_size=8, n_boot=100, artifacts=("ruler", "ink"),
              figures=False)
    cfg = {p: ProbeConfig(precision=p, **kw) for p in ("bf16-mixed", "32-true", "fp8")}
    before = (run / pr.PROBE_CSV).read_bytes()
    fp32 = pr.read_rows(run / pr.PROBE_CSV)
    pr.run_probe(run, cfg["bf16-mixed"])
    st = json.loads((run / "manifest.json").read_text())["stages"]["probe"]
    assert st["precision"] == {"resnet18": "bf16-mixed"}
    bf16 = pr.read_rows(run / pr.PROBE_CSV)
    key = ["image_id", "model", "probe", "artifact", "placement"]
    both = fp32.merge(bf16, on=key, suffixes=("_32", "_16"))
    assert len(both) == len(fp32) == len(bf16)
    diff = (both["prob_perturbed_32"] - both["prob_perturbed_16"]).abs()
    assert diff.max() < 0.1  # bf16 rounding of the logits (a one-epoch model, T applied)
    # every image re-scored in bf16, none kept from the float32 batches
    assert (diff.groupby(both["image_id"]).max() > 0).all()
    # back to float32: the batches of the bf16 run are not reused
    pr.run_probe(run, cfg["32-true"])
    assert (run / pr.PROBE_CSV).read_bytes() == before
    with pytest.raises(DermcamError, match="--precision must be one of"):
        pr.run_probe(run, cfg["fp8"])


def test_bf16_inference_wrapper_runs_bf16_convolutions_and_keeps_the_temperature():
    import torch
    import torchvision

    from dermcam.calibration import ATTR, temperature_of
    from dermcam.inference import Bf16Inference, predict_proba

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2).eval()
    setattr(net, ATTR, 2.5)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    p32 = predict_proba(net, images)
    seen = []
    wrapped = Bf16Inference(net)
    wrapped.model.conv1.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    assert temperature_of(wrapped) == 2.5
    p16 = predict_proba(wrapped, images)
    assert seen == [torch.bfloat16]
    assert wrapped.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(p16 - p32).max() < 0.05 and not np.array_equal(p16, p32)
    # BatchNorm is folded into a copy: the wrapped network itself is left as it was
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in wrapped.modules())
    assert isinstance(net.bn1, torch.nn.BatchNorm2d)
    assert np.array_equal(predict_proba(net, images), p32)


def _perturbed_batchnorm(net, seed=0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
            m.weight.data.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
            m.bias.data.copy_(0.2 * torch.rand(m.bias.shape, generator=gen) - 0.1)
    return net


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "efficientnet_b0"])
def test_folding_batchnorm_keeps_the_function_and_removes_every_batchnorm(arch):
    import torch
    import torchvision

    from dermcam.inference import fold_batchnorm

    torch.manual_seed(0)
    net = _perturbed_batchnorm(getattr(torchvision.models, arch)(num_classes=2)).train()
    folded = fold_batchnorm(net)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert n_bn > 10
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert net.training and not folded.training  # the caller's mode is restored
    x = torch.rand(3, 3, 48, 48)
    with torch.no_grad():
        ref, out = net.eval()(x), folded(x)
    assert ref.abs().max() > 0.05  # a non-trivial output, so the comparison means something
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_float32_probe_model_is_folded_and_scores_like_the_trained_one(channels_last):
    import torch
    import torchvision

    from dermcam.calibration import ATTR, BIAS_ATTR, bias_of, temperature_of
    from dermcam.inference import folded_for_inference, predict_proba

    torch.manual_seed(0)
    net = _perturbed_batchnorm(torchvision.models.resnet18(num_classes=2)).eval()
    images = np.random.default_rng(2).integers(0, 256, (8, 40, 40, 3), dtype=np.uint8)
    # logit differences spread over about +-2, so that the probabilities vary
    head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    head.bias.data.zero_()
    z = np.log(predict_proba(net, images)) - np.log1p(-predict_proba(net, images))
    head.weight.data.mul_(2.0 / z.std())
    head.bias.data[1] -= 2.0 * z.mean() / z.std()
    setattr(net, ATTR, 1.7)
    setattr(net, BIAS_ATTR, -0.4)
    folded = folded_for_inference(net, channels_last=channels_last)
    assert temperature_of(folded) == 1.7 and bias_of(folded) == -0.4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    conv = next(m for m in folded.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    p_net, p_fold = predict_proba(net, images), predict_proba(folded, images)
    assert p_net.std() > 1e-3  # probabilities that differ, so agreement means something
    np.testing.assert_allclose(p_fold, p_net, rtol=0, atol=1e-5)
    # the calibration is applied: without it the probabilities are others
    setattr(folded, ATTR, 1.0)
    setattr(folded, BIAS_ATTR, 0.0)
    assert np.abs(predict_proba(folded, images) - p_net).max() > 1e-3


def test_a_model_fx_cannot_trace_is_used_unfolded():
    import torch

    from dermcam.inference import Bf16Inference, fold_batchnorm, predict_proba

    class Branchy(torch.nn.Module):  # data-dependent control flow: torch.fx refuses it
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            y = self.bn(self.conv(x))
            if y.mean() > 0:
                y = -y
            return self.head(y.mean((2, 3)))

    net = Branchy().eval()
    assert fold_batchnorm(net) is net
    images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    p32, p16 = predict_proba(net, images), predict_proba(Bf16Inference(net), images)
    assert np.abs(p16 - p32).max() < 0.05


def test_auto_inference_precision_follows_the_training_rule(monkeypatch):
    from dermcam import device

    monkeypatch.setattr(device, "native_bf16", lambda on_gpu: True)
    assert pr.inference_precision("auto", "resnet18", "cpu", 64) == "bf16-mixed"
    assert pr.inference_precision("auto", "mobilenet_v2", "cpu", 64) == "32-true"
    assert pr.inference_precision("auto", "mobilenet_v2", "cpu", 224) == "bf16-mixed"
    assert pr.inference_precision("32-true", "resnet18", "cpu", 224) == "32-true"
    monkeypatch.setattr(device, "native_bf16", lambda on_gpu: False)
    assert pr.inference_precision("auto", "resnet18", "cpu", 224) == "32-true"


def test_cli_probe_prints_the_table_and_refuses_bad_options(probed, monkeypatch, capsys):
    import sys

    from dermcam import cli

    run, _ = probed

    def invoke(*args):
        monkeypatch.setattr(sys, "argv", ["dermcam", "-q", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            cli.main()
        out, err = capsys.readouterr()
        return e.value.code, out, err

    code, out, _ = invoke("probe", run, "--probes", "lesion_removed", "--n-boot", "50",
                          "--limit", "10")
    assert code == 0  # by default the answer: the findings on the probes' topics
    assert "lesion reliance" in out and "does not prove its absence" not in out
    code, out, _ = invoke("--verbose", "probe", run, "--probes", "lesion_removed",
                          "--n-boot", "50", "--limit", "10")
    assert code == 0  # --verbose: the table too, with the probes' caveat
    assert "lesion removed" in out and "does not prove its absence" in out
    code, _, err = invoke("probe", run, "--probes", "lesion_gone")
    assert code == 2 and "unknown probe lesion_gone" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# ------------------------------------------- by subgroup and by artifact presence


def _planted(n=20, seed=0):
    """``2n`` images: site A's lesion removal lowers the probability by about 0.2, site B's
    leaves it; an insertion with two placements; decisions at 0.5."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(2 * n):
        site, y = ("A" if k < n else "B"), int(k % 3 == 0)
        p0 = 0.55 + rng.uniform(-0.02, 0.02)
        d = -0.2 if site == "A" else rng.normal(0, 0.01)
        rows.append((f"i{k:02d}", y, "lesion_removed", "", 0, p0, p0 + d))
        for p in range(2):
            rows.append((f"i{k:02d}", y, "artifact_inserted", "ink", p, p0,
                         p0 + (-0.1 if (k + p) % 2 else 0.0)))
    df = pd.DataFrame(rows, columns=["image_id", "label", "probe", "artifact", "placement",
                                     "prob_intact", "prob_perturbed"])
    df["model"] = "m"
    df["delta"] = df["prob_perturbed"] - df["prob_intact"]
    df["threshold"], df["changed_share"], df["lesion_area"] = 0.5, 0.1, 0.2
    df["decision_intact"] = (df["prob_intact"] >= 0.5).astype(int)
    df["decision_perturbed"] = (df["prob_perturbed"] >= 0.5).astype(int)
    sites = pd.DataFrame({"image_id": [f"i{k:02d}" for k in range(2 * n)],
                          "site": ["A"] * n + ["B"] * n})
    return df, sites


def test_probe_subgroups_recover_a_planted_effect_with_paired_and_wilson_cis():
    from statsmodels.stats.proportion import proportion_confint

    df, sites = _planted()
    res = pr.probe_subgroups(df, sites, ["site"], n_boot=500, seed=0, min_group=5)["site"]
    les = next(e for e in res["entries"] if e["probe"] == "lesion_removed")
    g = {x["group"]: x for x in les["groups"]}
    assert g["A"]["n"] == g["B"]["n"] == 20
    assert g["A"]["delta"]["value"] == pytest.approx(-0.2)
    b = df[(df["probe"] == "lesion_removed") & df["image_id"].isin(sites["image_id"][20:])]
    assert g["B"]["delta"]["value"] == pytest.approx(b["delta"].mean())
    assert g["B"]["delta"]["lo"] < b["delta"].mean() < g["B"]["delta"]["hi"]
    assert g["A"]["delta"]["hi"] < g["B"]["delta"]["lo"]
    # site A: every decision flips (0.55 -> 0.35); site B: none. One decision per image.
    for site, k in (("A", 20), ("B", 0)):
        f = g[site]["flip_rate"]
        assert f["value"] == pytest.approx(k / 20) and f["ci_method"] == "wilson"
        assert (f["lo"], f["hi"]) == pytest.approx(proportion_confint(k, 20, method="wilson"))
    assert les["heterogeneity"]["delta"]["p"] < 1e-6
    assert les["heterogeneity"]["delta"]["adjust_method"] == "Holm"
    ins = next(e for e in res["entries"] if e["probe"] == "artifact_inserted")
    assert ins["artifact"] == "ink"
    fl = {x["group"]: x["flip_rate"] for x in ins["groups"]}
    # two placements, one flips: each image's share is 0.5, so the CI is a bootstrap
    assert fl["A"]["value"] == pytest.approx(0.5) and "bootstrap" in fl["A"]["ci_method"]


def test_artifact_presence_with_known_counts():
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import average_precision_score, roc_auc_score

    df, _ = _planted()
    ids = [f"i{k:02d}" for k in range(40)]
    ruler = [1 if k < 12 else 0 for k in range(40)]  # 12 of site A
    ruler[38] = ruler[39] = None  # flags missing: on neither side
    flags = pd.DataFrame({"image_id": ids, "artifact_ruler": pd.array(ruler, dtype="Int64"),
                          "artifact_hair": 0})
    rows = pr.artifact_presence(df, flags, n_boot=100)
    assert [(r["probe"], r["artifact"]) for r in rows] == [("lesion_removed", "hair"),
                                                           ("lesion_removed", "ruler")]
    r = rows[1]
    les = df[df["probe"] == "lesion_removed"].set_index("image_id")
    w, wo = les.loc[ids[:12]], les.loc[ids[12:38]]
    assert r["with"]["n"] == 12 and r["without"]["n"] == 26
    assert r["with"]["n_malignant"] == int(w["label"].sum()) == 4
    assert r["without"]["n_malignant"] == int(wo["label"].sum())
    assert r["with"]["delta_mean"] == pytest.approx(-0.2)
    assert r["without"]["delta_mean"] == pytest.approx(wo["delta"].mean())
    assert r["with"]["auc"] == pytest.approx(roc_auc_score(w["label"], w["prob_perturbed"]))
    assert r["with"]["auc_intact"] == pytest.approx(roc_auc_score(w["label"], w["prob_intact"]))
    assert r["without"]["ap"] == pytest.approx(average_precision_score(wo["label"],
                                                                       wo["prob_perturbed"]))
    assert r["with"]["auc_ci_low"] <= r["with"]["auc"] <= r["with"]["auc_ci_high"]
    assert r["delta_p"] == pytest.approx(mannwhitneyu(w["delta"], wo["delta"]).pvalue)
    hair = rows[0]
    assert hair["with"]["n"] == 0 and hair["with"]["auc_reason"] == "no images"
    assert hair["without"]["n"] == 40 and math.isnan(hair["delta_p"])
    # Holm over the defined tests: hair's is undefined, so ruler's is a family of one
    assert r["delta_p_adjusted"] == pytest.approx(r["delta_p"])
    assert math.isnan(hair["delta_p_adjusted"])


def test_bootstrap_spearman_rows_equal_scipy_on_each_resample():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    x = np.round(rng.random((200, 30)), 1)  # ties within rows
    y = x + rng.normal(0, 0.3, x.shape)
    x[7] = 0.5  # a constant row: undefined, not a number
    got = spearman_rows(x, y)
    want = np.array([spearmanr(a, b).statistic if np.ptp(a) and np.ptp(b) else np.nan
                     for a, b in zip(x, y)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.isnan(got[7]) and np.isfinite(np.delete(got, 7)).all()


def test_shortcut_probe_against_its_control_pairs_images_and_placements(tmp_path):
    """demo._probe_vs_control: the shortcut model's change minus the control's, per image
    and seeded placement; other probes, artifacts, models and unmatched rows are ignored."""
    from dermcam.demo import _probe_vs_control

    def rows(shift, ids):
        out = []
        for k, i in enumerate(ids):
            for p in (0, 1):
                base = 0.01 * k + 0.02 * p
                out.append({"image_id": i, "model": "resnet18", "probe": "artifact_inserted",
                            "artifact": "ruler", "placement": p, "delta": base + shift})
                out.append({"image_id": i, "model": "resnet18", "probe": "artifact_inserted",
                            "artifact": "ink", "placement": p, "delta": 0.9})
                out.append({"image_id": i, "model": "other", "probe": "artifact_inserted",
                            "artifact": "ruler", "placement": p, "delta": -0.9})
        return pd.DataFrame(out)

    ids = [f"im{i}" for i in range(12)]
    for name, shift, which in (("control", 0.0, ids), ("shortcut", 0.3, ids + ["extra"])):
        (tmp_path / name).mkdir()
        rows(shift, which).to_csv(tmp_path / name / "probe.csv", index=False)
    r = _probe_vs_control(tmp_path / "control", tmp_path / "shortcut", "resnet18", "ruler")
    assert r["n"] == 12 and r["diff"] == pytest.approx(0.3)
    assert r["ci_low"] == pytest.approx(0.3) and r["ci_high"] == pytest.approx(0.3)
    assert r["margin"] == pr.NEGLIGIBLE_DELTA
    same = _probe_vs_control(tmp_path / "control", tmp_path / "control", "resnet18", "ruler")
    assert same["diff"] == pytest.approx(0.0)
