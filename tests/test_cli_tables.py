"""The terminal tables: metric column headers come from the metric label registry
(dermcam.formatting.METRIC_LABELS), numbers from its formatters. Every expected cell is
written out by hand."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table

from dermcam import cli

NAN = float("nan")


@pytest.fixture
def tables(monkeypatch):
    """The tables the printers build, as ``[(headers, rows)]``; the console writes to a
    buffer."""
    made: list[Table] = []

    class Recorded(Table):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(cli, "Table", Recorded)
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=250))

    def built() -> list[tuple[list[str], list[list[str]]]]:
        out = []
        for t in made:
            cols = [list(c.cells) for c in t.columns]
            out.append(([str(c.header) for c in t.columns],
                        [[str(col[i]) for col in cols] for i in range(t.row_count)]))
        return out

    return built


def test_training_table(tables):
    from pathlib import Path

    from dermcam.run import Run

    cli._print_training(Run(Path("run"), {"models": {"resnet18": {
        "display_name": "ResNet18", "weights_source": "imagenet", "best_epoch": 3,
        "val_auc": 0.91249, "temperature": 0.6871, "calibration_bias": -4.8832,
        "calibration": {"method": "platt", "before": {"ece": 0.5204}, "after": {"ece": 0.0456}},
        "threshold": 0.2809, "wall_time_s": 478.4}}}))
    [(head, rows)] = tables()
    assert head == ["model", "weights", "best epoch", "val ROC AUC", "T, b", "val ECE",
                    "threshold", "time"]
    assert rows == [["ResNet18", "imagenet", "3", "0.912", "0.69, -4.88", "0.520 -> 0.046",
                     "0.281", "478 s"]]


def test_calibration_table(tables):
    ci = {"value": 0.0349, "lo": 0.0271, "hi": 0.0623}
    cli._print_calibration({"display_names": {"resnet18": "ResNet18"}, "calibration": {
        "resnet18": {"temperature": 0.6871, "bias": -4.8832,
                     "before": {"ece": {"value": None, "lo": 0.1, "hi": 0.2},
                                "brier": {"value": NAN, "lo": 0.381, "hi": 0.4249}},
                     "after": {"ece": ci, "brier": {"value": 0.07, "lo": None, "hi": 0.08}}}}})
    [(head, rows)] = tables()
    assert head == ["model", "T, b", "ECE before", "ECE after", "Brier before", "Brier after"]
    # 2 decimals; no value: n/a alone; an undefined part: n/a in its place
    assert rows == [["ResNet18", "0.69, -4.88", "n/a", "0.03 [0.03, 0.06]",
                     "n/a [0.38, 0.42]", "0.07 [n/a, 0.08]"]]


def test_probe_table(tables):
    entries = [
        {"model": "resnet18", "probe": "lesion_removed", "n": 40, "delta_mean": -0.18149,
         "delta_ci_low": -0.2101, "delta_ci_high": None, "flip_to_malignant": 0.0,
         "flip_to_benign": 0.125, "auc": 0.4961, "auc_ci_low": 0.425, "auc_ci_high": NAN,
         "auc_intact": np.float32(0.9375)},
        {"model": "resnet18", "probe": "artifact_inserted", "artifact": "ruler", "n": 40,
         "delta_mean": np.float32(0.25), "delta_ci_low": 0.0, "delta_ci_high": 0.5,
         "flip_to_malignant": 2 / 3, "flip_to_benign": NAN},
    ]
    cli._print_probe(entries)
    [(head, rows)] = tables()
    assert head == ["model", "probe", "n", "Δ P(malignant)", "flips b→m", "flips m→b",
                    "ROC AUC [95 % CI]", "ROC AUC intact"]
    assert rows == [
        ["resnet18", "lesion removed", "40", "-0.181 [-0.210, n/a]", "0.0%", "12.5%",
         "0.496 [0.425, n/a]", "0.938"],  # 0.9375 exactly: round half to even
        ["resnet18", "ruler inserted", "40", "+0.250 [+0.000, +0.500]", "66.7%", "n/a", "",
         ""],
    ]


def test_probe_presence_table(tables):
    side = {"n": 20, "n_malignant": 4, "delta_mean": -0.0625, "delta_ci_low": -0.125,
            "delta_ci_high": 0.0, "auc": 0.75, "auc_ci_low": None, "auc_ci_high": 0.875}
    cli._print_probe_presence([{
        "model": "resnet18", "probe": "lesion_removed", "artifact": "ruler", "with": side,
        "without": {**side, "delta_mean": None, "auc": NAN}, "delta_p": 0.04,
        "delta_p_adjusted": 0.0004}])
    [(head, rows)] = tables()
    assert head == ["model", "probe", "artifact", "n with", "Δ with", "ROC AUC with",
                    "n without", "Δ without", "ROC AUC without", "Δ differs p"]
    assert rows == [["resnet18", "lesion removed", "ruler", "20 (4 m)",
                     "-0.062 [-0.125, +0.000]", "0.750 [n/a, 0.875]", "20 (4 m)", "n/a", "n/a",
                     "0.000"]]


def test_shortcut_localisation_and_artifact_tables(tables):
    cli._print_shortcut({"artifact": "ruler", "model": "resnet18", "sentence": "s", "runs": {
        "control": {"layer": "layer4", "n": 12, "ratio": 1.125, "ratio_ci_low": None,
                    "ratio_ci_high": 1.5, "flagged": False, "test_auc": 0.9375,
                    "test_auc_ci_low": 0.875, "test_auc_ci_high": 1}}})
    cli._print_localisation([{
        "model": "resnet18", "method": "gradcam", "layer": "layer4", "grid": [7, 7], "n": 64,
        "images": "validation", "median_pixel_auroc": 0.8125, "ci_low": NAN, "ci_high": 0.9,
        "undefined_share": 0.125, "sanity_median_abs_rho": None, "sanity_passed": None,
        "ms_per_image": 3.25}])
    cli._print_artifacts([{
        "model": "resnet18", "method": "gradcam", "layer": "layer4", "artifact": "ink", "n": 5,
        "mass_share": 0.0625, "area_share": None, "ratio": np.float32(2.5),
        "ratio_ci_low": 1.25, "ratio_ci_high": NAN, "attends": True}])
    (sc_head, sc_rows), (loc_head, loc_rows), (art_head, art_rows) = tables()
    assert sc_head[-1] == "test ROC AUC [95 % CI]"
    assert sc_rows == [["resnet18 (control)", "layer4", "12", "1.12 [-, 1.50]", "no",
                        "0.938 [0.875, 1.000]"]]
    assert loc_head[4] == "pixel AUROC"  # an attention score, not a registry metric
    assert loc_rows == [["resnet18", "gradcam", "layer4", "7x7", "0.81 [-, 0.90]", "12%",
                         "- inconclusive", "3.2"]]
    assert art_rows == [["resnet18/gradcam", "layer4", "ink", "5", "0.062", "-",
                         "2.50 [1.25, -]", "YES"]]


def test_bracketed_cells_and_titles_print_as_written():
    """rich reads ``[n/a, 0.06]`` as a style tag; dermcam's tables print it."""
    buf = io.StringIO()
    t = cli.Table(title="data set [ISIC]")
    t.add_column("ROC AUC [95 % CI]")
    t.add_column("note [b]")
    t.add_row("0.03 [n/a, 0.06]", "[bold]x[/bold]")
    Console(file=buf, width=120).print(t)
    out = buf.getvalue()
    for text in ("data set [ISIC]", "0.03 [n/a, 0.06]", "[bold]x[/bold]", "note [b]"):
        assert text in out, (text, out)
