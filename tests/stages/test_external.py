"""External validation and subgroups end to end on tiny data: a run trained on the generic
layout, scored on an ISIC 2016-layout set that holds one exact and one near copy of the
run's own images; ``--by`` on the generic layout's extra columns and on ITA."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import invoke_cli
from PIL import Image
from typer.testing import CliRunner

from dermcam.audit_set import AuditSet
from dermcam.config import EvaluateConfig
from dermcam.errors import DermcamError
from dermcam.run import Run

# trains a model or runs a whole stage: deselect with -m 'not slow'
pytestmark = pytest.mark.slow

SIZE = 32


def _image(rng, label: int, size: int = 48):
    """Skin with a smooth random pattern (so images differ in their pHash) and a lesion
    (dark when malignant), and its mask."""
    yy, xx = np.mgrid[:size, :size] / size
    img = np.zeros((size, size, 3)) + (205, 160, 125)
    for _ in range(3):
        f = rng.uniform(0.5, 3, 2)
        img += rng.uniform(10, 25) * np.cos(2 * np.pi * (f[0] * yy + f[1] * xx)
                                            + rng.uniform(0, 6))[..., None]
    cy, cx = rng.uniform(0.35, 0.65, 2)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 0.15 ** 2
    img[mask] = (50, 25, 15) if label else (160, 110, 80)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _generic(root, n=40, seed=0):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["image_id,label,split,site,age"]
    for i in range(n):
        label = int(i % 3 == 0)
        img, mask = _image(rng, label)
        Image.fromarray(img).save(root / "images" / f"img{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"img{i:03d}.png")
        split = "test" if i % 2 == 0 else "train"
        rows.append(f"img{i:03d},{label},{split},{'head' if i % 4 < 2 else 'trunk'},{30 + i}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _isic(root, own, n=12, seed=5):
    """ISIC 2016 layout; test ISIC_0000100 is a byte copy of ``own``'s img001, ISIC_0000101
    a JPEG re-encoding of img003 at another size."""
    rng = np.random.default_rng(seed)
    for d in ("ISBI2016_ISIC_Part3B_Training_Data", "ISBI2016_ISIC_Part3B_Test_Data"):
        (root / d).mkdir(parents=True)
    train = ["ISIC_0000000,benign", "ISIC_0000001,malignant"]
    for k, line in enumerate(train):
        img, _ = _image(rng, k)
        Image.fromarray(img).save(root / "ISBI2016_ISIC_Part3B_Training_Data" /
                                  f"{line.split(',')[0]}.jpg")
    test_dir = root / "ISBI2016_ISIC_Part3B_Test_Data"
    test = []
    for i in range(n):
        label = int(i % 3 == 0)
        img, _ = _image(rng, label)
        Image.fromarray(img).save(test_dir / f"ISIC_00002{i:02d}.png")
        test.append(f"ISIC_00002{i:02d},{float(label)}")
    shutil.copyfile(own / "images" / "img001.png", test_dir / "ISIC_0000100.png")
    test.append("ISIC_0000100,0.0")
    Image.open(own / "images" / "img003.png").resize((64, 64)).save(
        test_dir / "ISIC_0000101.jpg", quality=90)
    test.append("ISIC_0000101,1.0")
    (root / "ISBI2016_ISIC_Part3B_Training_GroundTruth.csv").write_text("\n".join(train) + "\n")
    (root / "ISBI2016_ISIC_Part3B_Test_GroundTruth.csv").write_text("\n".join(test) + "\n")
    return root


@pytest.fixture(scope="module")
def ext_run(tmp_path_factory):
    from dermcam.stages.train import TrainConfig, train

    base = tmp_path_factory.mktemp("ext")
    own = _generic(base / "own")
    other = _isic(base / "isic_other", own)
    out = base / "run"
    train(TrainConfig(data=str(own), out=str(out), models=["resnet18"], weights="none",
                      image_size=SIZE, max_epochs=1, batch_size=8, seed=1, progress=False,
                      cache_dir=str(base / "cache")))
    return out, own, other


def test_internal_evaluate_by_metadata_and_ita(ext_run):
    from dermcam.stages.evaluate import run_evaluate

    run, _, _ = ext_run
    res = run_evaluate(run, EvaluateConfig(n_boot=50, by=("site", "age", "ita"), min_group=5))
    preds = pd.read_csv(run / "predictions.csv")
    assert {"ita", "ita_category", "ita_source", "site", "age"} <= set(preds.columns)
    assert (preds["ita_source"] == "outside lesion mask").all()
    # skin (205, 160, 125) with a pattern: ITA near 38 (intermediate) for every image
    assert preds["ita"].between(25, 50).all()
    sub = json.loads((run / "metrics.json").read_text())["subgroups"]
    assert set(sub) == {"site", "age", "ita"} and set(res["subgroups"]) == set(sub)
    site = {g["group"]: g for g in sub["site"]["models"]["resnet18"]["groups"]}
    n_head = int((preds["site"] == "head").sum())
    assert set(site) == {"head", "trunk"} and site["head"]["n"] == n_head
    # 10 test images per site, at most 4 malignant: too few of a class to estimate
    assert all(g["note"] == "too few to estimate" for g in site.values())
    assert "quartile" in sub["age"]["binning"]
    with pytest.raises(DermcamError, match="--by colour: no such column.*site"):
        run_evaluate(run, EvaluateConfig(n_boot=20, by=("colour",)))


def test_external_cli_report_and_duplicates(ext_run):
    from dermcam.cli import app
    from dermcam.report.html import render
    from dermcam.stages.evaluate import run_evaluate

    run, _, other = ext_run
    if not (run / "metrics.json").exists():
        run_evaluate(run, EvaluateConfig(n_boot=50))
    r = CliRunner().invoke(app, ["evaluate", str(run), "--data", str(other), "--n-boot", "50",
                                 "--by", "ita"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "internal test" in r.output and "isic_other" in r.output
    assert "1 exact and 1 near-duplicate" in r.output
    folder = run / "external" / "isic_other"
    m = json.loads((folder / "metrics.json").read_text())
    assert m["test"]["n"] == 14  # the official test split only
    d = m["external"]["duplicates"]
    assert d["exact"] == ["ISIC_0000100"] and d["near"] == ["ISIC_0000101"]
    assert d["matches"]["ISIC_0000100"]["match"] == "img001"
    assert d["matches"]["ISIC_0000101"]["match"] == "img003"
    preds = pd.read_csv(folder / "predictions.csv", keep_default_na=False)
    assert preds.set_index("image_id").loc["ISIC_0000100", "duplicate"] == "exact"
    # the thresholds are the run's, chosen on the training data's validation split
    manifest = json.loads((run / "manifest.json").read_text())
    assert m["models"]["resnet18"]["threshold"] == pytest.approx(
        manifest["models"]["resnet18"]["threshold"])
    assert manifest["stages"]["external:isic_other"]["status"] == "complete"
    assert (folder / "figures" / "roc_curves.png").exists()
    page = render(run)
    assert 'id="external"' in page and "isic_other" in page and "internal test" in page
    assert "ISIC_0000100" in page and 'id="subgroups"' in page and "arctan" in page
    # left out on request
    res = run_evaluate(run, EvaluateConfig(n_boot=20, exclude_duplicates=True),
                       AuditSet.open(Run.open(run), other, name="isic_clean"))
    assert res["test"]["n"] == 12 and res["external"]["duplicates"]["excluded"]




def _evaluate_external(run, data, name, artifacts=None, **kw):
    from dermcam.stages.evaluate import run_evaluate

    return run_evaluate(run, EvaluateConfig(n_boot=30, **kw),
                        AuditSet.open(Run.open(run), data, name=name, artifacts=artifacts))


def test_external_metrics_carry_the_calibration_block(ext_run, monkeypatch):
    """External metrics.json: ECE and Brier before and after the run's calibration, equal
    to the scores recomputed from its predictions.csv; the reliability figure gets them."""
    from dermcam import plots
    from dermcam.evaluation import expected_calibration_error

    run, _, other = ext_run
    seen = {}
    draw = plots.plot_reliability
    monkeypatch.setattr(plots, "plot_reliability",
                        lambda result, path: seen.update(result) or draw(result, path))
    res = _evaluate_external(run, other, "isic_cal")
    folder = run / "external" / "isic_cal"
    saved = json.loads((folder / "metrics.json").read_text())
    c = saved["calibration"]["resnet18"]
    preds = pd.read_csv(folder / "predictions.csv")
    y = preds["label"].to_numpy()
    for when, col in (("before", "prob_malignant_uncalibrated"), ("after", "prob_malignant")):
        p = preds[col].to_numpy()
        assert c[when]["ece"]["value"] == pytest.approx(expected_calibration_error(y, p))
        assert c[when]["brier"]["value"] == pytest.approx(np.mean((p - y) ** 2))
        assert c[when]["brier"]["lo"] <= c[when]["brier"]["value"] <= c[when]["brier"]["hi"]
    assert c["after"]["ece"]["value"] == pytest.approx(
        saved["models"]["resnet18"]["threshold_free"]["ece"]["value"])
    manifest = json.loads((run / "manifest.json").read_text())
    # metrics.json rounds the temperature to 6 decimal places
    assert c["temperature"] == pytest.approx(manifest["models"]["resnet18"]["temperature"],
                                             abs=5e-7)
    # the dashed (uncalibrated) curves of the reliability diagram
    drawn = seen["calibration"]["resnet18"]["reliability_before"]
    for k in ("mean_predicted", "fraction_positive"):  # NaN in memory, null in the file
        np.testing.assert_array_equal(np.array(drawn[k], float),
                                      np.array(c["reliability_before"][k], float))
    assert set(res["calibration"]) == {"resnet18"}
    assert (folder / "figures" / "reliability.png").exists()


def test_external_device_reaches_the_models_and_a_bad_one_is_refused(ext_run, monkeypatch,
                                                                      capsys):
    from dermcam.device import resolve_device
    from dermcam.stages import evaluate as pipeline

    run, _, other = ext_run
    before = (run / "manifest.json").read_bytes()
    code, _, err = invoke_cli(monkeypatch, capsys, "evaluate", run, "--data", other,
                           "--name", "isic_dev", "--device", "cuda:9")
    assert code == 2 and "--device cuda:9" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert (run / "manifest.json").read_bytes() == before  # refused before the stage
    assert not (run / "external" / "isic_dev").exists()
    calls = []
    predict = pipeline.predict_models

    def spy(*args, **kwargs):
        calls.append(kwargs.get("device"))
        return predict(*args, **kwargs)

    monkeypatch.setattr(pipeline, "predict_models", spy)
    _evaluate_external(run, other, "isic_dev", device="auto")
    assert calls == [str(resolve_device("auto"))]


ISIC_OTHER_TEST = [f"ISIC_00002{i:02d}" for i in range(12)] + ["ISIC_0000100", "ISIC_0000101"]
RULER = ISIC_OTHER_TEST[:5]
BIAS_HEADER = "image;dark_corner;hair;gel_border;gel_bubble;ruler;ink;patches;label;label_string"


def _bias_csv(path, ids, ruler=()):
    """Bissoto et al.'s isic_bias.csv layout: ``ruler`` flagged, every other flag 0."""
    path.write_text("\n".join([BIAS_HEADER] + [f"{i}.jpg;0;0;0;0;{int(i in ruler)};0;0;0;x"
                                               for i in ids]) + "\n")
    return path


def test_external_artifact_labels_give_per_artifact_subgroups(ext_run, monkeypatch, capsys,
                                                              tmp_path):
    run, _, other = ext_run
    labels = _bias_csv(tmp_path / "isic_bias.csv", ISIC_OTHER_TEST, RULER)
    before = json.loads((run / "manifest.json").read_text())
    code, out, err = invoke_cli(monkeypatch, capsys, "evaluate", run, "--data", other, "--name",
                             "isic_art", "--n-boot", "30", "--min-group", "3",
                             "--artifact-labels", labels)
    assert code == 0, err
    assert "artifact labels from isic_bias.csv: 14 of 16 images" in out  # 2: training
    m = json.loads((run / "external" / "isic_art" / "metrics.json").read_text())
    assert set(m["subgroups"]) == {f"artifact_{a}" for a in (
        "dark_corner", "hair", "gel_border", "gel_bubble", "ruler", "ink", "patches")}
    ruler = {g["group"]: g for g in m["subgroups"]["artifact_ruler"]["models"]["resnet18"]
             ["groups"]}
    labs = dict(pd.read_csv(other / "ISBI2016_ISIC_Part3B_Test_GroundTruth.csv",
                            header=None).itertuples(index=False))
    assert {k: (g["n"], g["n_malignant"]) for k, g in ruler.items()} == {
        "1": (5, sum(int(labs[i]) for i in RULER)),
        "0": (9, sum(int(labs[i]) for i in ISIC_OTHER_TEST[5:]))}
    hair = m["subgroups"]["artifact_hair"]["models"]["resnet18"]["groups"]
    assert [(g["group"], g["n"]) for g in hair] == [("0", 14)]
    preds = pd.read_csv(run / "external" / "isic_art" / "predictions.csv")
    assert sorted(preds.loc[preds["artifact_ruler"] == 1, "image_id"]) == RULER
    assert m["artifact_labels"]["file"] == str(labels.resolve())
    after = json.loads((run / "manifest.json").read_text())
    assert after["data"] == before["data"]  # the run's own data keeps its labels (none)
    assert after["stages"]["external:isic_art"]["artifacts"] == str(labels.resolve())


def test_bad_artifact_labels_leave_the_manifest_unchanged(ext_run, monkeypatch, capsys,
                                                          tmp_path):
    run, own, other = ext_run
    own_ids = [f"img{i:03d}" for i in range(40)]
    bad = tmp_path / "bad.csv"
    bad.write_text(BIAS_HEADER + "\nISIC_0000200.jpg;0;yes;0;0;0;0;0;0;x\n")
    before = (run / "manifest.json").read_bytes()
    for args, want in (
            # the run's own images: they label none of the external set
            (["--data", other, "--artifact-labels", _bias_csv(tmp_path / "own.csv", own_ids)],
             "none of the 40 image ids"),
            (["--data", other, "--artifact-labels", bad], "hair is 'yes', expected 0 or 1"),
            (["--artifact-labels", bad], "hair is 'yes', expected 0 or 1"),
            # internal: the labels fit, another check fails: nothing recorded either
            (["--artifact-labels", _bias_csv(tmp_path / "own2.csv", own_ids), "--by", "colour"],
             "--by colour: no such column")):
        code, _, err = invoke_cli(monkeypatch, capsys, "evaluate", run, "--name", "isic_bad",
                               *args)
        assert code == 2 and want in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert (run / "manifest.json").read_bytes() == before, args
    assert not (run / "external" / "isic_bad").exists()


@pytest.mark.parametrize("split, n_scored", [
    (None, 10),  # no split column: every image
    ("test", 10),  # a split column that is all 'test': every image
    ("mixed", 3),  # both splits: the test split only
])
def test_generic_external_folder_scored_whole_without_a_train_split(ext_run, make_generic,
                                                                    dh, split, n_scored):
    from dermcam.audit_set import external_samples
    from dermcam.data import load_dataset

    run, _, _ = ext_run
    labels = dh.generic_labels(6, 4, prefix="ext")
    splits = (None if split is None else
              {i: "test" if split == "test" or k in (0, 1, 6) else "train"
               for k, i in enumerate(labels)})
    root = make_generic(labels, split=splits, masks=True, name=f"ext_{split}")
    samples, which = external_samples(load_dataset(root))
    want = sorted(labels) if n_scored == 10 else ["ext000", "ext001", "ext006"]
    assert dh.ids_of(samples) == want
    assert ("every image" in which) == (n_scored == 10)
    res = _evaluate_external(run, root, f"generic_{split}")
    assert res["test"]["n"] == n_scored and res["external"]["n_available"] == n_scored
    preds = pd.read_csv(run / "external" / f"generic_{split}" / "predictions.csv")
    assert sorted(preds["image_id"]) == want
