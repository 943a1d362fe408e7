"""dermcam.attention_plots: every figure is written, is a valid PNG, and no window opens."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermcam import attention_plots as P
from dermcam import leakage as L


@pytest.fixture(autouse=True)
def _no_show(monkeypatch):
    """Fail if anything calls pyplot.show()."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def boom(*args, **kwargs):
        raise AssertionError("plt.show() called from library code")

    monkeypatch.setattr(plt, "show", boom)
    yield
    assert not plt.get_fignums(), "library code left pyplot figures open"


def _table(n=60, seed=0, models=("resnet50", "densenet121"), methods=("gradcam",)):
    rng = np.random.default_rng(seed)
    rows = []
    for model in models:
        for method in methods:
            cams = rng.random((n, 16, 16)).astype(np.float32)
            masks = np.zeros((n, 16, 16), bool)
            label = rng.integers(0, 2, n)
            for i in range(n):
                r = 3 + 2 * label[i] + rng.integers(0, 3)
                masks[i, 8 - r:8 + r, 8 - r:8 + r] = True
            v, reasons = L.score_batch(cams, masks)
            d = pd.DataFrame(v).assign(model=model, method=method, label=label,
                                       correct=rng.random(n) < 0.8, reason=reasons)
            rows.append(d)
    df = pd.concat(rows, ignore_index=True)
    df.loc[3, "leakage"] = np.nan  # a NaN row must not break any panel
    return df


def _assert_png(path, expected):
    assert path == expected and path.exists() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_attention_summary(tmp_path):
    out = P.plot_attention_summary(_table(), tmp_path / "attention_leakage_analysis.png",
                                   title="resnet50 / gradcam")
    _assert_png(out, tmp_path / "attention_leakage_analysis.png")


def test_attention_summary_one_class_and_overwrite(tmp_path):
    df = _table()
    df = df[df["label"] == 0].drop(columns=["lesion_area"])
    path = tmp_path / "sub" / "a.png"  # parent folder is created
    P.plot_attention_summary(df, path)
    _assert_png(path, path)
    with Image.open(path) as im:
        first = np.asarray(im.convert("RGB"))
    P.plot_attention_summary(_table(seed=1), path)  # atomic overwrite
    _assert_png(path, path)
    reference = P.plot_attention_summary(_table(seed=1), tmp_path / "reference.png")
    with Image.open(path) as im, Image.open(reference) as ref:
        second, expected = np.asarray(im.convert("RGB")), np.asarray(ref.convert("RGB"))
    # the file now holds the second figure, pixel for pixel, not the first one
    np.testing.assert_array_equal(second, expected)
    assert first.shape != second.shape or not np.array_equal(first, second)


def test_attention_summary_malignant_only_labels_the_chance_line(tmp_path):
    """The chance tick's legend entry used to hang on the benign bar only: with no benign
    image matplotlib warned 'No artists with labels' and the tick went unexplained."""
    import warnings

    df = _table()
    df = df[df["label"] == 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        P.plot_attention_summary(df, tmp_path / "m.png")
    _assert_png(tmp_path / "m.png", tmp_path / "m.png")


def test_leakage_vs_accuracy(tmp_path):
    df = _table(methods=("gradcam", "gradcam++"))
    _assert_png(P.plot_leakage_vs_accuracy(df, tmp_path / "lva.png"), tmp_path / "lva.png")


def test_leakage_vs_area(tmp_path):
    _assert_png(P.plot_leakage_vs_area(_table(), str(tmp_path / "lvarea.png")),
                tmp_path / "lvarea.png")


def test_size_aware_table_long_and_wide(tmp_path):
    df = _table(methods=("gradcam", "scorecam"))
    metrics = ["excess_leakage", "localisation_gain", "pixel_auroc", "pointing_game"]
    summary = L.summarise(df, metrics, n_boot=50)
    _assert_png(P.plot_size_aware_table(summary, tmp_path / "t.png"), tmp_path / "t.png")
    wide = df.groupby(["model", "method"])[metrics].mean().reset_index()
    wide.loc[0, "pixel_auroc"] = np.nan  # an empty cell is drawn as n/a
    _assert_png(P.plot_size_aware_table(wide, tmp_path / "w.png"), tmp_path / "w.png")


def test_size_aware_table_pools_classes_by_n():
    df = pd.DataFrame({"model": ["m"] * 2, "method": ["g"] * 2, "label": [0, 1],
                       "metric": ["pixel_auroc"] * 2, "n": [1, 3], "mean": [0.4, 0.8]})
    models, methods, grid = P._table_values(df, "pixel_auroc")
    assert grid[0, 0] == pytest.approx((0.4 + 3 * 0.8) / 4)


def test_example(tmp_path):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    mask = np.zeros((32, 40), bool)
    mask[8:24, 10:30] = True
    cam = rng.random((32, 40)).astype(np.float32)
    out = P.plot_example(image, cam, mask, tmp_path / "ex.png", title="ISIC_0000000")
    _assert_png(out, tmp_path / "ex.png")
    # undefined leakage (empty mask) still draws
    P.plot_example(image, cam, np.zeros((32, 40), bool), tmp_path / "ex2.png")
    _assert_png(tmp_path / "ex2.png", tmp_path / "ex2.png")
    with pytest.raises(ValueError, match=r"\(16, 40\)"):
        P.plot_example(image, cam[:16], mask, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="uint8"):
        P.plot_example(image.astype(float), cam, mask, tmp_path / "bad.png")


def test_missing_columns_raise(tmp_path):
    with pytest.raises(ValueError, match="inside_score"):
        P.plot_attention_summary(pd.DataFrame({"label": [0], "leakage": [0.5]}),
                                 tmp_path / "x.png")


def test_import_does_not_load_pyplot():
    code = ("import sys, dermcam.attention_plots; "
            "assert 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
