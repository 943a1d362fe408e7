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


# --------------------------------------------------------------------------- what was drawn

def _known_table():
    """Seven images with hand-picked values; the malignant one with NaN leakage and
    NaN inside score is left out of the leakage and scatter panels."""
    return pd.DataFrame({
        "label": [0, 0, 0, 1, 1, 1, 1],
        "leakage": [0.2, 0.4, 0.6, 0.5, 0.7, 0.9, np.nan],
        "inside_score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, np.nan],
        "outside_score": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
        "lesion_area": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
    })


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _hlevels(ax, x: float) -> set[float]:
    """y of the horizontal lines centred on ``x`` (a box plot's caps and median)."""
    return {round(float(ln.get_ydata()[0]), 9) for ln in ax.get_lines()
            if len(ln.get_ydata()) == 2 and ln.get_ydata()[0] == ln.get_ydata()[1]
            and np.mean(ln.get_xdata()) == pytest.approx(x)}


def test_build_attention_summary_draws_the_data():
    from matplotlib.container import BarContainer
    from matplotlib.figure import Figure

    fig = P.build_attention_summary(_known_table(), title="m / g")
    assert isinstance(fig, Figure) and fig.get_suptitle() == "m / g"
    ax_box, ax_hist, ax_sc, ax_bar = fig.axes

    # box plot: caps at min and max, median line, per class at its own x
    assert _hlevels(ax_box, 0) == {0.2, 0.4, 0.6}
    assert _hlevels(ax_box, 1) == {0.5, 0.7, 0.9}
    assert [t.get_text() for t in ax_box.get_xticklabels()] == ["benign\n(n=3)",
                                                                 "malignant\n(n=3)"]
    # histogram of the six defined values, overall and per-class mean lines
    assert sum(p.get_height() for p in ax_hist.patches) == 6
    assert [ln.get_xdata()[0] for ln in ax_hist.get_lines()] == pytest.approx([0.55, 0.4, 0.7])
    assert _legend(ax_hist) == ["mean 55.0%", "benign mean 40.0%", "malignant mean 70.0%"]

    # scatter: x = outside score, y = inside score, one collection per class
    benign, malignant = ax_sc.collections
    np.testing.assert_allclose(benign.get_offsets(), [[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]])
    np.testing.assert_allclose(malignant.get_offsets(), [[0.4, 0.6], [0.5, 0.5], [0.6, 0.4]])
    (diag,) = ax_sc.get_lines()
    # the diagonal spans the larger of both scores (inside 0.9), plus 5 %
    assert list(diag.get_xdata()) == list(diag.get_ydata()) == [0, pytest.approx(0.9 * 1.05)]
    assert _legend(ax_sc) == ["benign", "malignant", "inside = outside"]

    # mean bars with bootstrap CI whiskers and the chance tick (mean of 1 - area)
    (bars,) = [c for c in ax_bar.containers if isinstance(c, BarContainer)]
    assert [p.get_height() for p in bars.patches] == pytest.approx([0.4, 0.7])
    whisker = bars.errorbar.lines[2][0].get_segments()
    np.testing.assert_allclose([s[:, 1] for s in whisker],
                               [L.bootstrap_mean_ci(np.array([0.2, 0.4, 0.6])),
                                L.bootstrap_mean_ci(np.array([0.5, 0.7, 0.9]))])
    assert [t.get_text() for t in ax_bar.texts] == ["40.0%", "70.0%"]
    ticks = [c for c in ax_bar.collections if c is not bars.errorbar.lines[2][0]]
    np.testing.assert_allclose([c.get_segments()[0] for c in ticks],
                               [[[-0.4, 0.8], [0.4, 0.8]], [[0.6, 0.45], [1.4, 0.45]]])
    assert _legend(ax_bar) == ["mean chance leakage (1 - area)"]
    assert ax_bar.get_ylabel() == "mean leakage (95 % bootstrap CI)"


def test_build_attention_summary_without_data_says_so():
    df = _known_table().assign(leakage=np.nan, inside_score=np.nan)
    fig = P.build_attention_summary(df)
    assert fig.get_suptitle() == "Attention leakage analysis"
    for ax in fig.axes[:3]:
        assert [t.get_text() for t in ax.texts] == ["no data"]
    assert [t.get_text() for t in fig.axes[3].texts] == []


def test_build_leakage_vs_accuracy_points_per_model_and_class():
    df = pd.DataFrame({
        "model": ["a", "a", "a", "b", "b", "b"],
        "label": [0, 0, 1, 0, 1, 1],
        "leakage": [0.2, 0.3, 0.7, 0.8, 0.9, np.nan],  # model a: mean 0.4, median 0.3
        "correct": [True, False, True, True, True, False],
    })
    (ax,) = P.build_leakage_vs_accuracy(df, title="T").axes
    drawn = [c for c in ax.collections if len(c.get_offsets())]
    # per model: benign point, malignant point, then the black diamond over both classes
    np.testing.assert_allclose([c.get_offsets()[0] for c in drawn],
                               [[0.25, 0.5], [0.7, 1.0], [0.4, 2 / 3],
                                [0.8, 1.0], [0.9, 1.0], [0.85, 1.0]])
    assert [t.get_text() for t in ax.texts] == ["a", "b"]
    np.testing.assert_allclose([t.xy for t in ax.texts], [[0.4, 2 / 3], [0.85, 1.0]])
    assert _legend(ax) == ["benign (class recall)", "malignant (class recall)", "all images"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "mean attention leakage", "accuracy", "T")
    two = pd.concat([df.assign(method="g"), df.assign(method="s")], ignore_index=True)
    (ax,) = P.build_leakage_vs_accuracy(two).axes
    assert [t.get_text() for t in ax.texts] == ["a / g", "a / s", "b / g", "b / s"]


def test_build_leakage_vs_area_points_and_chance_line():
    (ax,) = P.build_leakage_vs_area(_known_table()).axes
    benign, malignant = ax.collections
    np.testing.assert_allclose(benign.get_offsets(), [[0.1, 0.2], [0.2, 0.4], [0.3, 0.6]])
    np.testing.assert_allclose(malignant.get_offsets(), [[0.4, 0.5], [0.5, 0.7], [0.6, 0.9]])
    (chance,) = ax.get_lines()
    assert (list(chance.get_xdata()), list(chance.get_ydata())) == ([0, 1], [1, 0])
    assert _legend(ax) == ["benign (n=3)", "malignant (n=3)",
                           "chance: uniform heatmap (1 - area)"]
    assert ax.get_title() == "Leakage vs lesion area"


def test_build_size_aware_table_cells_colours_and_titles():
    wide = pd.DataFrame({
        "model": ["m1", "m1", "m2", "m2", "m2"],
        "method": ["g1", "g2", "g1", "g2", "g2"],
        "excess_leakage": [0.05, -0.3, 0.1, 0.0, 0.2],   # m2/g2 averages to 0.1
        "pixel_auroc": [0.55, 0.53, np.nan, 0.5, 0.5],  # within 0.05 of chance
    })
    fig = P.build_size_aware_table(wide, metrics=["excess_leakage", "pixel_auroc"], title="S")
    ax_ex, ax_auc = fig.axes
    assert fig.get_suptitle() == "S"
    ex, auc = ax_ex.images[0], ax_auc.images[0]
    np.testing.assert_allclose(ex.get_array(), [[0.05, -0.3], [0.1, 0.1]])
    assert auc.get_array().mask.tolist() == [[False, False], [True, False]]
    assert [t.get_text() for t in ax_ex.texts] == ["0.050", "-0.300", "0.100", "0.100"]
    assert [t.get_text() for t in ax_auc.texts] == ["0.550", "0.530", "n/a", "0.500"]
    # centred on chance, +-0.3 (the largest deviation) or at least +-0.1; green is better
    assert ex.get_clim() == pytest.approx((-0.3, 0.3)) and ex.get_cmap().name == "RdYlGn_r"
    assert auc.get_clim() == pytest.approx((0.4, 0.6)) and auc.get_cmap().name == "RdYlGn"
    assert ax_ex.get_title() == "excess_leakage\n(lower is better, chance 0)"
    assert ax_auc.get_title() == "pixel_auroc\n(higher is better, chance 0.5)"
    assert [t.get_text() for t in ax_ex.get_xticklabels()] == ["g1", "g2"]
    assert [t.get_text() for t in ax_ex.get_yticklabels()] == ["m1", "m2"]
    with pytest.raises(ValueError, match="at least one metric"):
        P.build_size_aware_table(wide, metrics=[])


def test_build_example_known_single_hot_pixel():
    image = np.full((8, 8, 3), 100, np.uint8)
    image[..., 0] = 200
    cam = np.zeros((8, 8), np.float32)
    cam[0, 0] = 2.0  # all attention on one pixel outside the lesion
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    fig = P.build_example(image, cam, mask, title="ISIC_1")
    assert fig.get_suptitle() == "ISIC_1 - leakage 100.0% (chance 75.0%, excess +25.0%)"
    ax_img, ax_heat, ax_mask, ax_leak = fig.axes
    assert [a.get_title() for a in fig.axes] == ["image", "heatmap (jet)", "lesion mask",
                                                 "red = leaked, green = on lesion"]
    np.testing.assert_array_equal(ax_img.images[0].get_array(), image)
    np.testing.assert_array_equal(ax_mask.images[0].get_array(), mask)
    img = image[0, 0] / 255.0
    heat = ax_heat.images[0].get_array()
    np.testing.assert_allclose(heat[0, 0], 0.5 * img + 0.5 * np.array([0.5, 0.0, 0.0]))
    np.testing.assert_allclose(heat[4, 4], 0.5 * img + 0.5 * np.array([0.0, 0.0, 0.5]))
    leak = ax_leak.images[0].get_array()
    grey = img.mean() * 0.6
    np.testing.assert_allclose(leak[0, 0], grey * 0.15 + 0.85 * np.array([0.9, 0.0, 0.0]))
    np.testing.assert_allclose(leak[4, 4], [grey] * 3)  # no attention: plain grey
    # the lesion outline on the heatmap and leak panels only
    assert [len(a.collections) for a in fig.axes] == [0, 1, 0, 1]
    empty = P.build_example(image, cam, np.zeros((8, 8), bool))
    assert empty.get_suptitle() == "leakage undefined (empty_mask)"
    assert [len(a.collections) for a in empty.axes] == [0, 0, 0, 0]


def test_plot_writes_what_build_draws(tmp_path):
    df = _known_table()
    expected = P._save(P.build_leakage_vs_area(df, title="x"), tmp_path / "b.png").read_bytes()
    assert P.plot_leakage_vs_area(df, tmp_path / "p.png", title="x").read_bytes() == expected
