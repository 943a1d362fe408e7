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
    summary = L.summarise(df, metrics, by=("model", "method"), n_boot=50)
    _assert_png(P.plot_size_aware_table(summary, tmp_path / "t.png"), tmp_path / "t.png")
    # per-class rows pool into means, but a median cannot be pooled from class medians
    by_class = L.summarise(df, metrics, n_boot=50)
    with pytest.raises(ValueError, match="median of pixel_auroc cannot be pooled"):
        P.build_size_aware_table(by_class)
    P.build_size_aware_table(by_class, stats={"pixel_auroc": "mean"})
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


def _decode_points(ax, n_models: int) -> dict[tuple[str, str], tuple[float, float]]:
    """Read every drawn point back through the legend alone: its marker names the model
    (the first ``n_models`` entries), its colour the group of images (the rest)."""
    leg = ax.get_legend()
    texts = [t.get_text() for t in leg.get_texts()]
    handles = leg.legend_handles
    assert len(texts) == len(handles)
    markers = [(t, h.get_paths()[0].vertices) for t, h in
               zip(texts[:n_models], handles[:n_models], strict=True)]
    colours = [(t, h.get_facecolor()[0][:3]) for t, h in
               zip(texts[n_models:], handles[n_models:], strict=True)]
    out = {}
    for c in ax.collections:
        if not len(c.get_offsets()):
            continue
        verts, rgb = c.get_paths()[0].vertices, c.get_facecolor()[0][:3]
        model = [t for t, v in markers if v.shape == verts.shape and np.allclose(v, verts)]
        group = [t for t, col in colours if np.allclose(col, rgb)]
        assert len(model) == 1 and len(group) == 1, (model, group)  # one legend entry each
        key = (model[0], group[0].split(",")[0])
        assert key not in out  # no two points share a marker and a colour
        out[key] = tuple(c.get_offsets()[0])
    return out


def test_build_leakage_vs_accuracy_names_every_point():
    df = pd.DataFrame({
        "model": ["a", "a", "a", "b", "b", "b"],
        "label": [0, 0, 1, 0, 1, 1],
        "leakage": [0.2, 0.3, 0.7, 0.8, 0.9, np.nan],  # model a: mean 0.4, median 0.3
        "correct": [True, False, True, True, True, False],
    })
    (ax,) = P.build_leakage_vs_accuracy(df, title="T", displays={"a": "Model A"}).axes
    ben, mal, both = "benign (specificity)", "malignant (sensitivity)", \
        "all images (both classes)"
    # hand-computed: mean leakage and share correct per model and group of images
    expected = {("Model A", ben): (0.25, 0.5), ("Model A", mal): (0.7, 1.0),
                ("Model A", both): (0.4, 2 / 3),
                ("b", ben): (0.8, 1.0), ("b", mal): (0.9, 1.0), ("b", both): (0.85, 1.0)}
    got = _decode_points(ax, n_models=2)
    assert got.keys() == expected.keys()
    for key, xy in expected.items():
        np.testing.assert_allclose(got[key], xy)
    # images per group: a has 2 benign, 1 malignant; b 1 and 1 (its NaN leakage left out)
    assert _legend(ax)[2:] == [f"{ben}, n=1-2", f"{mal}, n=1", f"{both}, n=2-3"]
    assert "accuracy" not in ax.get_ylabel().lower()
    assert "sensitivity" in ax.get_ylabel() and "specificity" in ax.get_ylabel()
    assert (ax.get_xlabel(), ax.get_title()) == ("mean attention leakage", "T")
    assert "accuracy" not in P.build_leakage_vs_accuracy(df).axes[0].get_title().lower()

    two = pd.concat([df.assign(method="g"), df.assign(method="s")], ignore_index=True)
    (ax,) = P.build_leakage_vs_accuracy(two).axes
    got = _decode_points(ax, n_models=4)
    assert sorted({m for m, _ in got}) == ["a / g", "a / s", "b / g", "b / s"]
    assert len(got) == 12


def test_build_leakage_vs_area_points_and_chance_line():
    (ax,) = P.build_leakage_vs_area(_known_table()).axes
    benign, malignant = ax.collections
    np.testing.assert_allclose(benign.get_offsets(), [[0.1, 0.2], [0.2, 0.4], [0.3, 0.6]])
    np.testing.assert_allclose(malignant.get_offsets(), [[0.4, 0.5], [0.5, 0.7], [0.6, 0.9]])
    (chance,) = ax.get_lines()
    assert (list(chance.get_xdata()), list(chance.get_ydata())) == ([0, 1], [1, 0])
    assert _legend(ax) == ["benign (n=3 images)", "malignant (n=3 images)",
                           "chance: uniform heatmap (1 - area)"]
    assert ax.get_title() == "Leakage vs lesion area"


def test_build_leakage_vs_area_one_panel_per_model_with_its_own_n():
    base = _known_table()
    df = pd.concat([base.assign(model="m1", method="g", layer="layer2"),
                    base.iloc[:4].assign(model="m2", method="g", layer="layer3")],
                   ignore_index=True)
    fig = P.build_leakage_vs_area(df, title="S", displays={"m1": "Model 1"})
    ax1, ax2 = fig.axes
    assert fig.get_suptitle() == "S"
    assert ax1.get_title() == "Model 1 (g at layer2)" and ax2.get_title() == "m2 (g at layer3)"
    # m1: 3 benign, 3 malignant (its 7th row has NaN leakage); m2: rows 0-3
    assert _legend(ax1)[:2] == ["benign (n=3 images)", "malignant (n=3 images)"]
    assert _legend(ax2)[:2] == ["benign (n=3 images)", "malignant (n=1 images)"]
    np.testing.assert_allclose(ax2.collections[1].get_offsets(), [[0.4, 0.5]])
    # two methods: one panel per model x method
    two = pd.concat([df, df.assign(method="h")], ignore_index=True)
    assert len(P.build_leakage_vs_area(two).axes) == 4


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
    assert ax_ex.get_title() == "mean excess_leakage\n(lower is better, chance 0)"
    assert ax_auc.get_title() == "median pixel_auroc\n(higher is better, chance 0.5)"
    assert [t.get_text() for t in ax_ex.get_xticklabels()] == ["g1", "g2"]
    assert [t.get_text() for t in ax_ex.get_yticklabels()] == ["m1", "m2"]
    with pytest.raises(ValueError, match="at least one metric"):
        P.build_size_aware_table(wide, metrics=[])


def test_size_aware_table_shows_the_median_pixel_auroc_the_text_quotes():
    """Per image values with a skewed pixel AUROC: the panel shows its median (what the
    summary's uniform-attention sentence quotes), the other panels their means."""
    per_image = pd.DataFrame({
        "model": ["m"] * 5, "method": ["g"] * 5,
        "pixel_auroc": [0.1, 0.8, 0.85, 0.9, 0.95],      # median 0.85, mean 0.72
        "excess_leakage": [-0.5, -0.1, -0.1, -0.1, 0.0],  # mean -0.16, median -0.1
    })
    metrics = ["excess_leakage", "pixel_auroc"]
    for table in (per_image, L.summarise(per_image, metrics, by=("model", "method"),
                                         n_boot=20)):
        ax_ex, ax_auc = P.build_size_aware_table(table, metrics=metrics).axes
        assert [t.get_text() for t in ax_auc.texts] == ["0.850"]
        assert [t.get_text() for t in ax_ex.texts] == ["-0.160"]
        assert ax_auc.get_title().startswith("median ") \
            and ax_ex.get_title().startswith("mean ")
    # asked for the mean, the panel says so and shows it
    (ax,) = P.build_size_aware_table(per_image, metrics=["pixel_auroc"],
                                     stats={"pixel_auroc": "mean"}).axes
    assert [t.get_text() for t in ax.texts] == ["0.720"] and ax.get_title().startswith("mean ")
    with pytest.raises(ValueError, match="stat must be"):
        P.build_size_aware_table(per_image, metrics=["pixel_auroc"], stats={"pixel_auroc": "max"})


# --------------------------------------------------------------------------- localisation grid

def _bench_rows():
    """m1: 2 methods x 3 layers; m2: 1 method x 1 layer. Hand-picked verdicts."""
    def row(model, method, layer, med, lo, sanity=True, undefined=0.0):
        return {"model": model, "method": method, "layer": layer, "grid": [4, 4], "n": 64,
                "images": "validation", "median_pixel_auroc": med, "ci_low": lo,
                "ci_high": med + 0.05, "better_than_uniform": lo > 0.5,
                "undefined_share": undefined, "sanity_passed": sanity}
    return [row("m1", "gradcam", "layer2", 0.81, 0.75),
            row("m1", "hirescam", "layer2", 0.92, 0.90, sanity=False),
            row("m1", "gradcam", "layer3", 0.55, 0.49),            # CI touches 0.5
            row("m1", "hirescam", "layer3", 0.52, 0.50, sanity=None),  # lower bound = 0.5
            row("m1", "gradcam", "layer4", 0.70, 0.60, undefined=0.25),
            row("m1", "hirescam", "layer4", 0.40, 0.30, sanity=False),
            row("m2", "gradcam", "features.3", 0.6, 0.55)]


def _cells(ax, gid: str) -> dict[tuple[int, int], object]:
    """Artists with ``gid`` by (row, column) of the cell they sit on."""
    out = {}
    for a in [*ax.texts, *ax.patches]:
        if (a.get_gid() or "").split(":")[0] == gid:
            x, y = a.get_position() if hasattr(a, "get_position") else \
                (a.get_x() + 0.5, a.get_y() + 0.5)
            out[(round(y), round(x))] = a
    return out


def test_build_localisation_grid_cells_outline_and_hatches():
    rows = _bench_rows()
    chosen = [{"model": "m1", "method": "gradcam", "layer": "layer2", "reason": "..."},
              {"model": "m2", "method": "gradcam", "layer": "layer9", "reason": "..."}]
    fig = P.build_localisation_grid(rows, chosen, displays={"m1": "Model 1"}, title="G")
    ax1, ax2, _colourbar = fig.axes
    assert fig.get_suptitle() == "G"
    # rows = methods, columns = layers, in the benchmark's order
    assert [t.get_text() for t in ax1.get_yticklabels()] == ["gradcam", "hirescam"]
    assert [t.get_text() for t in ax1.get_xticklabels()] == [
        "layer2\n4\u00d74", "layer3\n4\u00d74", "layer4\n4\u00d74"]
    # every cell's text is its input value, on its own cell; the image holds the values
    values = _cells(ax1, "value")
    assert {k: t.get_text() for k, t in values.items()} == {
        (0, 0): "0.810", (1, 0): "0.920", (0, 1): "0.550", (1, 1): "0.520",
        (0, 2): "0.700", (1, 2): "0.400"}
    np.testing.assert_allclose(ax1.images[0].get_array(), [[0.81, 0.55, 0.70],
                                                            [0.92, 0.52, 0.40]])
    lo, hi = ax1.images[0].get_clim()
    assert (lo + hi) / 2 == pytest.approx(0.5)  # colour scale centred on uniform attention
    # the chosen cell, and only it, is outlined
    (outline,) = _cells(ax1, "chosen").items()
    assert outline[0] == (0, 0) and outline[1].get_linewidth() >= 2
    # hatched by reason; the eligible cell and the one only short of defined maps are not
    hatches = {k: p.get_hatch() for k, p in _cells(ax1, "hatch").items()}
    assert hatches == {(1, 0): "\\\\", (0, 1): "//", (1, 1): "//..", (1, 2): "//\\\\"}
    (note,) = _cells(ax1, "note").items()
    assert note[0] == (0, 2) and note[1].get_text() == "25% undef."
    assert ax1.get_title() == "Model 1\n64 validation images"
    # a chosen cell outside the benchmark is said, not outlined
    assert _cells(ax2, "chosen") == {}
    assert "chosen gradcam at layer9: not in the benchmark" in ax2.get_title()


def test_build_localisation_grid_reads_back_json_and_tables(tmp_path):
    import json

    rows = json.loads(json.dumps(_bench_rows()))  # None -> null -> None
    frame = pd.DataFrame(rows)  # a table: sanity None becomes NaN or None
    for data in (rows, frame):
        fig = P.build_localisation_grid(data, {"m1": ("hirescam", "layer3")})
        assert list(_cells(fig.axes[0], "chosen")) == [(1, 1)]
        assert _cells(fig.axes[0], "hatch")[(1, 1)].get_hatch() == "//.."
    out = P.plot_localisation_grid(rows, tmp_path / "g.png", chosen=None)
    _assert_png(out, tmp_path / "g.png")
    with pytest.raises(ValueError, match="at least one benchmark row"):
        P.build_localisation_grid([])
    with pytest.raises(ValueError, match="median_pixel_auroc"):
        P.build_localisation_grid([{"model": "m", "method": "g", "layer": "l"}])


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
    expected = P.save_figure(P.build_leakage_vs_area(df, title="x"), tmp_path / "b.png").read_bytes()
    assert P.plot_leakage_vs_area(df, tmp_path / "p.png", title="x").read_bytes() == expected
