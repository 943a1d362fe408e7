"""External validation and subgroups end to end on tiny data: a run trained on the generic
layout, scored on an ISIC 2016-layout set that holds one exact and one near copy of the
run's own images; ``--by`` on the generic layout's extra columns and on ITA."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from dermcam.errors import DermcamError

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
    from dermcam.training import TrainConfig, train

    base = tmp_path_factory.mktemp("ext")
    own = _generic(base / "own")
    other = _isic(base / "isic_other", own)
    out = base / "run"
    train(TrainConfig(data=str(own), out=str(out), models=["resnet18"], weights="none",
                      image_size=SIZE, max_epochs=1, batch_size=8, seed=1, progress=False,
                      cache_dir=str(base / "cache")))
    return out, own, other


def test_internal_evaluate_by_metadata_and_ita(ext_run):
    from dermcam.pipeline import run_evaluate

    run, _, _ = ext_run
    res = run_evaluate(run, n_boot=50, by=("site", "age", "ita"), min_group=5)
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
        run_evaluate(run, n_boot=20, by=("colour",))


def test_external_cli_report_and_duplicates(ext_run):
    from dermcam.cli import app
    from dermcam.pipeline import run_evaluate
    from dermcam.report.html import render

    run, _, other = ext_run
    if not (run / "metrics.json").exists():
        run_evaluate(run, n_boot=50)
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
    res = run_evaluate(run, n_boot=20, data=other, name="isic_clean", exclude_duplicates=True)
    assert res["test"]["n"] == 12 and res["external"]["duplicates"]["excluded"]
