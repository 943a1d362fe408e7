"""``dermcam predict``: probabilities, decisions, overlays and attention scores for new images.

The checkpoint is a seeded, untrained ResNet18 saved with ``save_checkpoint`` at a
64 px input (no training), so every probability can be recomputed with
``predict_proba`` on the same resized images.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dermcam import cli
from dermcam.checkpoints import load_checkpoint, save_checkpoint
from dermcam.data.cache import decode_sample
from dermcam.data.dataset import Sample
from dermcam.errors import DermcamError
from dermcam.inference import predict_proba
from dermcam.leakage import METRICS
from dermcam.predict import collect_images, predict

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SIZE = 64  # ResNet18 layer4 is 2 x 2 here: a heatmap with structure
CARD = {"architecture": "ResNet18", "weights_source": "none (random init)",
        "trained_on": "/data/isic2016", "image_size": SIZE, "n_train": 720, "n_val": 180,
        "val_auc": 0.8125, "threshold": 0.5, "threshold_rule": "Youden J on validation",
        "intended_use": "research on dermoscopy classification and attention auditing; "
                        "not validated for clinical use"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from dermcam.models import build_model

    torch.manual_seed(0)
    model, info = build_model("resnet18", "none")
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, info, {"image_size": SIZE, "threshold": 0.5,
                                        "model_card": CARD})
    return path


@pytest.fixture
def images(tmp_path, dh) -> Path:
    """Four images (jpg, png, bmp, and one 80 x 60 jpg) and masks for two of them."""
    folder = tmp_path / "imgs"
    dh.write_image(folder / "a.jpg", 0, seed=1)
    dh.write_image(folder / "b.png", 1, seed=2)
    dh.write_image(folder / "c.bmp", 1, seed=3)
    dh.write_image(folder / "d.jpg", 0, size=(80, 60), seed=4)
    dh.write_mask(folder / "a_Segmentation.png")  # scanned folders skip masks
    (folder / "notes.txt").write_text("not an image")
    masks = tmp_path / "masks"
    dh.write_mask(masks / "a_Segmentation.png")
    dh.write_mask(masks / "d.png", size=(80, 60))
    return folder


def test_collect_images_scans_folders(images):
    got = collect_images([images])
    assert [p.name for p in got] == ["a.jpg", "b.png", "c.bmp", "d.jpg"]
    assert collect_images([images / "b.png", images / "a.jpg"])[0].name == "b.png"
    with pytest.raises(DermcamError, match="not found"):
        collect_images([images / "missing.jpg"])


def test_predict_matches_predict_proba(checkpoint, images, tmp_path):
    out = tmp_path / "out"
    res = predict(checkpoint, [images], out, batch_size=3)
    df = pd.read_csv(out / "predictions.csv")
    assert list(df.columns) == ["path", "image_id", "prob_malignant", "decision", "threshold"]
    assert list(df["image_id"]) == ["a", "b", "c", "d"]
    model, _, _ = load_checkpoint(checkpoint)
    arr = np.stack([decode_sample(Sample(i, Path(p), 0, "test"), SIZE)["image"]
                    for i, p in zip(df["image_id"], df["path"])])
    np.testing.assert_allclose(df["prob_malignant"], predict_proba(model, arr), atol=1e-5)
    assert (df["decision"] == np.where(df["prob_malignant"] >= 0.5, "malignant", "benign")).all()
    assert (df["threshold"] == 0.5).all()
    for i in df["image_id"]:
        assert (out / "overlays" / f"{i}.png").stat().st_size > 0
    assert res.card["val_auc"] == 0.8125 and "clinical decisions" in res.card["not_validated_for"]
    assert not list(out.rglob("*.tmp"))


def test_predict_with_masks_scores_attention(checkpoint, images, tmp_path):
    out = tmp_path / "out"
    predict(checkpoint, [images], out, masks=tmp_path / "masks")
    df = pd.read_csv(out / "predictions.csv", keep_default_na=False, na_values=[""])
    for name in METRICS:
        assert name in df.columns
    has = df["image_id"].isin(["a", "d"])
    assert df.loc[has, "leakage"].between(0, 1).all()
    assert df.loc[has, "lesion_area"].gt(0).all()
    assert df.loc[~has, "leakage"].isna().all()
    assert set(df.loc[~has, "metric_note"]) == {"no mask"}


def test_bad_image_is_one_line_or_skipped(checkpoint, images, tmp_path):
    bad = images / "e.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DermcamError) as exc:
        predict(checkpoint, [images], tmp_path / "out")
    assert exc.value.path == str(bad) and "\n" not in str(exc.value)
    warnings: list[str] = []
    res = predict(checkpoint, [images], tmp_path / "out", skip_bad=True, warn=warnings.append)
    assert len(res.table) == 4 and res.skipped[0][0] == str(bad)
    assert len(warnings) == 1 and "e.jpg" in warnings[0]


def test_non_checkpoint_is_one_line(images, tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(DermcamError, match="not a dermcam checkpoint") as exc:
        predict(plain, [images], tmp_path / "out")
    assert exc.value.path == str(plain)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(DermcamError, match="not a PyTorch checkpoint") as exc:
        predict(junk, [images], tmp_path / "out")
    assert exc.value.path == str(junk) and "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_refuses_to_write_into_a_run_folder(checkpoint, images, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"schema_version": 1, "kind": "dermcam-run"}')
    with pytest.raises(DermcamError, match="another dermcam output"):
        predict(checkpoint, [images], run)


def test_cli_predict_prints_model_card(checkpoint, images, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["dermcam", "-q", "predict", str(checkpoint), str(images),
                                      "--masks", str(tmp_path / "masks"), "--out", str(out)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    text = ANSI.sub("", capsys.readouterr().out)
    assert e.value.code in (0, None)
    for want in ("ResNet18", "none (random init)", "/data/isic2016", "0.812",
                 "not validated for", "clinical decisions", "leakage"):
        assert want in text, want
    assert (out / "predictions.csv").exists() and (out / "manifest.json").exists()
