"""Tests for dermcam.plots: every figure is a valid image, written atomically, no pyplot."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermcam import plots
from dermcam.evaluation import evaluate_predictions


@pytest.fixture(scope="module")
def result() -> dict:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(90, int), np.ones(30, int)]
    frames = []
    for name, sep in (("resnet18", 1.5), ("mobilenet_v2", 1.0)):
        p = 1 / (1 + np.exp(-(rng.normal(size=y.size) + sep * y - 1.0)))
        frames.append(
            pd.DataFrame(
                {"image_id": np.arange(y.size), "model": name, "label": y, "prob_malignant": p}
            )
        )
    df = pd.concat(frames, ignore_index=True)
    return evaluate_predictions(df, {"resnet18": 0.4, "mobilenet_v2": 0.4}, n_boot=50)


def _assert_png(path, expected):
    assert path == expected
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
    # nothing but the target is left in the folder (no temporary files)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize(
    "fn",
    [
        plots.plot_model_comparison,
        plots.plot_roc_curves,
        plots.plot_pr_curves,
        plots.plot_reliability,
    ],
)
def test_result_plots_write_valid_png(fn, result, tmp_path):
    target = tmp_path / fn.__name__ / "fig.png"  # parent folder is created
    _assert_png(fn(result, target), target)


def test_model_comparison_at_half_and_extra_metrics(result, tmp_path):
    target = tmp_path / "cmp.png"
    out = plots.plot_model_comparison(result, target, metrics=("accuracy", "roc_auc"), at="at_0.5")
    _assert_png(out, target)


def test_confusion_matrix(result, tmp_path):
    target = tmp_path / "cm.png"
    cm = result["models"]["resnet18"]["confusion_matrix"]
    _assert_png(
        plots.plot_confusion_matrix(cm, ["benign", "malignant"], target, "ResNet18"), target
    )
    with pytest.raises(ValueError, match="shape"):
        plots.plot_confusion_matrix([[1, 2, 3]], ["benign", "malignant"], tmp_path / "x.png")


def test_training_history(tmp_path):
    hist = pd.DataFrame(
        {
            "epoch": [0, 0, 1, 1, 2, 2],
            "train_loss": [0.7, np.nan, 0.5, np.nan, 0.4, np.nan],
            "val_loss": [np.nan, 0.69, np.nan, 0.6, np.nan, 0.62],
            "val_auc": [np.nan, 0.6, np.nan, 0.7, np.nan, 0.68],
        }
    )
    target = tmp_path / "hist.png"
    _assert_png(plots.plot_training_history(hist, target), target)
    two = pd.concat([hist.assign(model="a"), hist.assign(model="b")])
    target2 = tmp_path / "two" / "hist.png"
    _assert_png(plots.plot_training_history(two, target2), target2)
    with pytest.raises(ValueError, match="val_auc"):
        plots.plot_training_history(hist.drop(columns="val_auc"), tmp_path / "bad.png")


def test_format_follows_suffix_and_overwrites(result, tmp_path):
    target = tmp_path / "roc.pdf"
    plots.plot_roc_curves(result, target)
    plots.plot_roc_curves(result, target)  # overwriting an existing file is fine
    assert target.read_bytes().startswith(b"%PDF")
    assert [p.name for p in tmp_path.iterdir()] == ["roc.pdf"]
    with pytest.raises(ValueError, match="suffix"):
        plots.plot_roc_curves(result, tmp_path / "no_suffix")


def test_importing_plots_does_not_import_pyplot():
    code = (
        "import sys, dermcam.plots, dermcam.evaluation, dermcam.stats; "
        "sys.exit('matplotlib.pyplot' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
