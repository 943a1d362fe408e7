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


# --------------------------------------------------------------------------- what was drawn


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _bars(ax):
    from matplotlib.container import BarContainer

    return [c for c in ax.containers if isinstance(c, BarContainer)]


def _ci_text(ci) -> str:
    return f"{ci['value']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]"


def test_build_returns_a_figure_outside_pyplot(result):
    from matplotlib.figure import Figure

    fig = plots.build_roc_curves(result)
    assert isinstance(fig, Figure)
    assert fig.canvas.__class__.__name__ == "FigureCanvasAgg"
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()


@pytest.mark.parametrize("at", ["at_threshold", "at_0.5"])
def test_build_model_comparison_bars_whiskers_and_baseline(result, at):
    metrics = ("accuracy", "f1_benign", "f1_malignant", "roc_auc")
    fig = plots.build_model_comparison(result, metrics=metrics, at=at)
    (ax,) = fig.axes
    models = list(result["models"].items())
    bars = _bars(ax)
    assert [b.get_label() for b in bars] == [e["display_name"] for _, e in models]
    for bar, (_, entry) in zip(bars, models):
        cis = [entry["threshold_free" if m == "roc_auc" else at][m] for m in metrics]
        assert len(bar.patches) == len(metrics)
        np.testing.assert_allclose([p.get_height() for p in bar.patches], [c["value"] for c in cis])
        # the whisker of each bar runs from the CI's lower to its upper end
        segments = bar.errorbar.lines[2][0].get_segments()
        np.testing.assert_allclose([s[:, 1] for s in segments], [[c["lo"], c["hi"]] for c in cis])
        centres = [p.get_x() + p.get_width() / 2 for p in bar.patches]
        np.testing.assert_allclose([s[0, 0] for s in segments], centres)
    # groups sit on the metric ticks, models side by side within a group
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "Accuracy", "F1 benign", "F1 malignant", "ROC AUC"]
    x0 = [p.get_x() + p.get_width() / 2 for p in bars[0].patches]
    x1 = [p.get_x() + p.get_width() / 2 for p in bars[1].patches]
    np.testing.assert_allclose(x0, np.arange(4) - 0.2)
    np.testing.assert_allclose(x1, np.arange(4) + 0.2)
    # the all-benign baseline: one dashed segment per metric that has one, at its value
    whiskers = [b.errorbar.lines[2][0] for b in bars]
    base = [c for c in ax.collections if not any(c is w for w in whiskers)]
    baseline = result["baselines"]["all_benign"]
    assert all(m in baseline for m in metrics)
    segments = [seg for c in base for seg in c.get_segments()]
    np.testing.assert_allclose(
        segments, [[[j - 0.45, baseline[m]["value"]], [j + 0.45, baseline[m]["value"]]]
                   for j, m in enumerate(metrics)])
    assert [c.get_label() for c in base][0] == "All-benign baseline"
    assert _legend(ax) == ["All-benign baseline", "ResNet18", "MobileNet-V2"]
    where = "validation-chosen threshold" if at == "at_threshold" else "threshold 0.5"
    assert ax.get_title() == f"Test set: n = 120, 30 malignant ({where})"
    assert ax.get_ylabel() == "Score (95 % CI)"


def test_build_model_comparison_at_half_differs_from_threshold(result):
    """The fixture's thresholds (0.4) give different accuracies than 0.5, so the
    parametrised test above would notice ``at`` being ignored."""
    entry = result["models"]["resnet18"]
    assert entry["at_threshold"]["accuracy"]["value"] != entry["at_0.5"]["accuracy"]["value"]


def test_build_confusion_matrix_known_counts():
    cm = [[8, 2], [1, 3]]
    fig = plots.build_confusion_matrix(cm, ["benign", "malignant"], "Model A")
    ax = fig.axes[0]  # the second axes is the colour bar
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.8, 0.2], [0.25, 0.75]])
    cells = {(t.get_position()): (t.get_text(), t.get_color()) for t in ax.texts}
    assert cells == {
        (0, 0): ("8\n80.0 %", "white"),
        (1, 0): ("2\n20.0 %", "black"),
        (0, 1): ("1\n25.0 %", "black"),
        (1, 1): ("3\n75.0 %", "white"),
    }
    assert [t.get_text() for t in ax.get_xticklabels()] == ["benign", "malignant"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["benign", "malignant"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("Predicted", "True", "Model A")
    # an empty row is drawn as rate 0, not NaN
    empty = plots.build_confusion_matrix([[0, 0], [1, 3]], ["b", "m"])
    np.testing.assert_allclose(empty.axes[0].images[0].get_array(), [[0, 0], [0.25, 0.75]])
    assert empty.axes[0].get_title() == ""
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        plots.build_confusion_matrix([[1, 2, 3]], ["benign", "malignant"])


def test_build_roc_curves_plots_each_curve_and_operating_point(result):
    (ax,) = plots.build_roc_curves(result).axes
    lines = ax.get_lines()
    assert list(lines[0].get_xdata()) == [0, 1] and list(lines[0].get_ydata()) == [0, 1]
    curves = [ln for ln in lines[1:] if ln.get_label()[:1] != "_"]
    points = [ln for ln in lines[1:] if ln.get_marker() == "o"]
    models = list(result["models"].values())
    assert len(curves) == len(points) == len(models)
    for curve, point, entry in zip(curves, points, models):
        np.testing.assert_allclose(curve.get_xdata(), entry["roc_curve"]["fpr"])
        np.testing.assert_allclose(curve.get_ydata(), entry["roc_curve"]["tpr"])
        auc = entry["threshold_free"]["roc_auc"]
        assert curve.get_label() == f"{entry['display_name']}: AUC {_ci_text(auc)}"
        sens = entry["at_threshold"]["sensitivity"]["value"]
        spec = entry["at_threshold"]["specificity"]["value"]
        np.testing.assert_allclose([point.get_xdata()[0], point.get_ydata()[0]],
                                   [1 - spec, sens])
        assert point.get_color() == curve.get_color()
    assert _legend(ax) == ["Chance (AUC 0.5)"] + [c.get_label() for c in curves]
    assert ax.get_xlabel().startswith("1 \u2212 specificity")
    assert ax.get_ylabel() == "Sensitivity (true positive rate)"


def test_build_pr_curves_plots_steps_prevalence_and_operating_point(result):
    (ax,) = plots.build_pr_curves(result).axes
    lines = ax.get_lines()
    prevalence = result["test"]["prevalence"]
    assert list(lines[0].get_ydata()) == [prevalence, prevalence]
    assert lines[0].get_label() == f"Prevalence (chance AP {prevalence:.3f})"
    curves = [ln for ln in lines[1:] if ln.get_label()[:1] != "_"]
    points = [ln for ln in lines[1:] if ln.get_marker() == "o"]
    for curve, point, entry in zip(curves, points, result["models"].values(), strict=True):
        assert curve.get_drawstyle() == "steps-post"
        np.testing.assert_allclose(curve.get_xdata(), entry["pr_curve"]["recall"])
        np.testing.assert_allclose(curve.get_ydata(), entry["pr_curve"]["precision"])
        ap = entry["threshold_free"]["average_precision"]
        assert curve.get_label() == f"{entry['display_name']}: AP {_ci_text(ap)}"
        at = entry["at_threshold"]
        np.testing.assert_allclose(
            [point.get_xdata()[0], point.get_ydata()[0]],
            [at["recall_malignant"]["value"], at["precision_malignant"]["value"]],
        )
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Recall (sensitivity)", "Precision (malignant)")


def test_build_pr_curves_title_names_the_data_set_used(result):
    """The title names the data set passed, never ISIC 2016 for other data, and says
    nothing of a data set when none is passed."""
    (ax,) = plots.build_pr_curves(result, dataset="synthetic dermoscopy benchmark").axes
    title = " ".join(ax.get_title().split())  # the title is wrapped over lines
    assert "on synthetic dermoscopy benchmark" in title and "ISIC" not in title
    (ax,) = plots.build_pr_curves(result, dataset="ISIC 2016").axes
    assert "on ISIC 2016" in " ".join(ax.get_title().split())
    (ax,) = plots.build_pr_curves(result).axes
    title = " ".join(ax.get_title().split())
    assert "ISIC" not in title and "ranked by average precision" in title


def test_build_pr_curves_legend_ranked_by_ap(result):
    """The title says ranked by AP: the legend lists the models by AP, highest first."""
    rigged = {**result, "models": {**result["models"]}}
    aps = {"resnet18": 0.4, "mobilenet_v2": 0.9}
    for name, ap in aps.items():
        entry = rigged["models"][name]
        tf = {**entry["threshold_free"],
              "average_precision": {**entry["threshold_free"]["average_precision"],
                                    "value": ap}}
        rigged["models"][name] = {**entry, "threshold_free": tf}
    (ax,) = plots.build_pr_curves(rigged).axes
    names = [t.split(":")[0] for t in _legend(ax)[1:]]
    order = sorted(aps, key=aps.get, reverse=True)
    assert names == [rigged["models"][n]["display_name"] for n in order]


def test_build_reliability_curves_and_histogram(result):
    top, bottom = plots.build_reliability(result).axes
    curves = top.get_lines()[1:]
    models = list(result["models"].values())
    assert len(curves) == len(models)
    skipped = 0
    for i, (curve, entry) in enumerate(zip(curves, models)):
        rel = entry["reliability"]
        ok = [m is not None and f is not None
              for m, f in zip(rel["mean_predicted"], rel["fraction_positive"])]
        skipped += not all(ok)
        np.testing.assert_allclose(curve.get_xdata(),
                                   [m for m, k in zip(rel["mean_predicted"], ok) if k])
        np.testing.assert_allclose(curve.get_ydata(),
                                   [f for f, k in zip(rel["fraction_positive"], ok) if k])
        assert curve.get_label() == (
            f"{entry['display_name']}: ECE {_ci_text(entry['threshold_free']['ece'])}")
        # the histogram: one bar per bin with the bin's count, model i's bars i-th in the bin
        bars = _bars(bottom)[i].patches
        np.testing.assert_allclose([b.get_height() for b in bars], rel["count"])
        w = (np.array(rel["bin_upper"]) - np.array(rel["bin_lower"])) / (len(models) + 1)
        np.testing.assert_allclose([b.get_x() for b in bars],
                                   np.array(rel["bin_lower"]) + w * (i + 0.5))
    assert skipped  # the fixture has an empty bin, which must be left out of the curve
    assert top.get_title() == "Reliability (equal-width bins)"
    assert bottom.get_yscale() == "symlog"


def test_build_reliability_draws_before_calibration_dashed(result):
    name, entry = next(iter(result["models"].items()))
    before = {"bin_lower": [0.0, 0.5], "bin_upper": [0.5, 1.0], "count": [3, 1],
              "mean_predicted": [0.2, 0.9], "fraction_positive": [0.1, None]}
    calib = {name: {"temperature": 1.5, "bias": -0.25, "reliability_before": before,
                    "before": {"ece": {"value": 0.2, "lo": 0.1, "hi": 0.3}}}}
    top = plots.build_reliability({**result, "calibration": calib}).axes[0]
    (dashed,) = [ln for ln in top.get_lines() if ln.get_linestyle() == "--"]
    assert list(dashed.get_xdata()) == [0.2] and list(dashed.get_ydata()) == [0.1]
    assert dashed.get_label() == "  before scaling: ECE 0.200 [0.100, 0.300]"
    assert f"{entry['display_name']}: ECE " in _legend(top)[1]
    assert _legend(top)[1].endswith("(T = 1.50, b = -0.25)")
    assert top.get_title().endswith("; dashed: before calibration")


def test_build_training_history_lines_and_best_epoch():
    hist = pd.DataFrame(
        {
            "epoch": [0, 0, 1, 1, 2, 2],
            "train_loss": [0.7, np.nan, 0.5, np.nan, 0.4, np.nan],
            "val_loss": [np.nan, 0.69, np.nan, 0.6, np.nan, 0.62],
            "val_auc": [np.nan, 0.6, np.nan, 0.7, np.nan, 0.68],
        }
    )
    ax_loss, ax_auc = plots.build_training_history(hist).axes
    train, val = ax_loss.get_lines()
    assert (list(train.get_xdata()), list(train.get_ydata())) == ([0, 1, 2], [0.7, 0.5, 0.4])
    assert (list(val.get_xdata()), list(val.get_ydata())) == ([0, 1, 2], [0.69, 0.6, 0.62])
    assert (train.get_linestyle(), val.get_linestyle()) == ("-", "--")
    auc, best = ax_auc.get_lines()
    assert list(auc.get_ydata()) == [0.6, 0.7, 0.68]
    assert (list(best.get_xdata()), list(best.get_ydata())) == ([1], [0.7])  # the best epoch
    assert _legend(ax_loss) == ["train loss", "val loss"] and _legend(ax_auc) == ["val ROC AUC"]
    assert (ax_loss.get_ylabel(), ax_auc.get_ylabel()) == ("Loss", "Validation ROC AUC")
    two = pd.concat([hist.assign(model="a"), hist.assign(model="b", val_auc=hist["val_auc"] / 2)])
    ax_loss, ax_auc = plots.build_training_history(two).axes
    assert _legend(ax_loss) == ["a train loss", "a val loss", "b train loss", "b val loss"]
    assert _legend(ax_auc) == ["a val ROC AUC", "b val ROC AUC"]
    assert list(ax_auc.get_lines()[2].get_ydata()) == [0.3, 0.35, 0.34]


def test_plot_writes_what_build_draws(result, tmp_path):
    """The plot_* wrapper saves exactly the built figure."""
    fig = plots.build_model_comparison(result, metrics=("accuracy", "roc_auc"), at="at_0.5")
    expected = plots.save_figure(fig, tmp_path / "built.png").read_bytes()
    out = plots.plot_model_comparison(result, tmp_path / "plotted.png",
                                      metrics=("accuracy", "roc_auc"), at="at_0.5")
    assert out.read_bytes() == expected


def test_model_comparison_ticks_are_the_registry_short_labels(result):
    """Tick labels come from dermcam.formatting.METRIC_LABELS (short form), a long one
    broken over two lines; plots keeps no label table of its own."""
    entry = result["models"]["resnet18"]
    metrics = ("accuracy", "balanced_accuracy", "precision_malignant", "average_precision",
               "spec_at_95_sens", "ece")
    assert all(m in entry["at_threshold"] or m in entry["threshold_free"] for m in metrics)
    (ax,) = plots.build_model_comparison(result, metrics=metrics).axes
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "Accuracy", "Balanced acc.", "Precision malignant", "Avg. precision",
        "Specificity at 95 %\nsensitivity", "ECE"]
    assert not hasattr(plots, "_METRIC_LABELS")


def test_model_comparison_refuses_a_metric_without_a_label(result):
    with pytest.raises(KeyError, match="no label for metric 'auroc'; known: "):
        plots.build_model_comparison(result, metrics=("accuracy", "auroc"))
