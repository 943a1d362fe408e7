"""The reference study's scripts (skin_lesion_analysis.py, gradcam_analysis.py) on a miniature
ISIC 2016 folder, and the test metrics that evaluate writes into each model card."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dermcam import study

# trains a model or runs a whole stage: deselect with -m 'not slow'
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
N_TRAIN, N_TEST = 40, 16


def _script(name: str, *args: str, cwd: Path, env: dict[str, str] | None = None,
            where: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(where / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _in_process(main, *args: str, cwd: Path, cache: Path) -> tuple[int, str]:
    """``main(args)`` (a script's entry) in this process, as the script runs it from
    ``cwd``: ``(exit code, stdout)``; torch's thread count restored afterwards."""
    import torch

    out, threads = io.StringIO(), torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
            mp.chdir(cwd)
            mp.setenv("DERMCAM_CACHE", str(cache))
            code = main(list(args))
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A miniature ISIC 2016 Part 3B folder after both of the study's commands ran in it,
    through the scripts' entries in this process (test_help_and_one_line_errors runs the
    script files themselves)."""
    from dermcam.data.synth import SynthConfig, generate

    base = tmp_path_factory.mktemp("study")
    data = base / "isic"
    generate(data, SynthConfig.from_preset("clean", n_train=N_TRAIN, n_test=N_TEST,
                                           image_size=64, seed=0))
    code, train_out = _in_process(study.main_train, "--weights", "none", "--epochs", "1",
                                  "--image-size", "64", "--models", "resnet18", "--n-boot",
                                  "100", cwd=data, cache=base / "cache")
    assert code == 0
    code, cam_out = _in_process(study.main_gradcam, "--n-boot", "100", cwd=data,
                                cache=base / "cache")
    assert code == 0
    return data, train_out, cam_out


def test_scripts_write_the_study_file_names(study_dir):
    data, train_out, cam_out = study_dir
    res = data / "results_visualization"
    for f in ("model_comparison.png", "resnet18_confusion_matrix.png",
              "summary_plots/attention_leakage_analysis.png",
              "summary_plots/leakage_vs_accuracy.png", "gradcam_leakage_results.csv"):
        p = res / f
        assert p.is_file() and not p.is_symlink(), f
        assert p.stat().st_size > 0, f
    # copies of the run's figures, byte for byte
    run_figs = res / "run" / "figures"
    assert (res / "model_comparison.png").read_bytes() == \
        (run_figs / "model_comparison.png").read_bytes()
    assert (res / "summary_plots/attention_leakage_analysis.png").read_bytes() == \
        (run_figs / "attention_leakage_analysis_resnet18.png").read_bytes()
    panels = sorted((res / "gradcam_plots").glob("*.png"))
    assert panels and all(p.name.startswith("resnet18_gradcam_") for p in panels)
    assert all((run_figs / "examples" / p.name).read_bytes() == p.read_bytes() for p in panels)
    assert "Comparison of all models" in train_out and "Malignant_F1" in train_out
    assert "All benign (baseline)" in train_out
    assert "Attention Leakage Analysis Results" in cam_out and "Mean leakage" in cam_out


def test_leakage_csv_has_the_study_columns_and_one_row_per_test_image(study_dir):
    data = study_dir[0]
    df = pd.read_csv(data / "results_visualization/gradcam_leakage_results.csv",
                     dtype={"image_id": str})
    assert list(df.columns[:7]) == ["image_id", "true_label", "pred_label", "correct",
                                    "inside_score", "outside_score", "leakage"]
    assert list(df.columns) == list(study.LEAKAGE_COLUMNS)
    gt = pd.read_csv(data / "ISBI2016_ISIC_Part3B_Test_GroundTruth.csv", header=None,
                     names=["image_id", "label"], dtype={"image_id": str})
    assert len(df) == N_TEST and sorted(df["image_id"]) == sorted(gt["image_id"])
    merged = df.merge(gt, on="image_id")
    assert (merged["true_label"] == merged["label"].astype(float).astype(int)).all()
    assert (df["correct"] == (df["true_label"] == df["pred_label"])).all()
    att = pd.read_csv(data / "results_visualization/run/attention.csv", dtype={"image_id": str})
    att = att[(att["model"] == "resnet18") & (att["method"] == "gradcam")]
    both = df.merge(att, on="image_id", suffixes=("", "_att"))
    pd.testing.assert_series_equal(both["leakage"], both["leakage_att"], check_names=False)
    assert (both["pred_label"] == both["pred"]).all()


def test_model_card_carries_test_metrics_from_evaluate(study_dir):
    from dermcam.checkpoints import load_checkpoint
    from dermcam.models import load_state_file
    from dermcam.predict import model_card

    run = study_dir[0] / "results_visualization" / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    ck = run / "models" / "resnet18" / "model.pt"
    card = load_state_file(ck)["model_card"]  # weights_only=True: plain types only
    m = metrics["models"]["resnet18"]
    assert card["test_metrics"] == {
        "roc_auc": m["threshold_free"]["roc_auc"],
        "average_precision": m["threshold_free"]["average_precision"],
        "sensitivity": m["at_threshold"]["sensitivity"],
        "specificity": m["at_threshold"]["specificity"],
        "balanced_accuracy": m["at_threshold"]["balanced_accuracy"]}
    assert card["test_set"]["n"] == N_TEST == metrics["test"]["n"]
    assert card["test_set"]["n_malignant"] == metrics["test"]["n_malignant"]
    assert card["test_set"]["name"]
    assert card["evaluated_at"] and "100 resamples" in card["test_ci"]
    assert card["val_auc"] is not None  # the training card is kept
    _, info, payload = load_checkpoint(ck)  # still a loadable dermcam checkpoint
    assert model_card(payload, info)["test_metrics"] == card["test_metrics"]


def test_help_and_one_line_errors(tmp_path):
    """Each script's --help, then each copied into a (here empty) data folder: it still
    runs, and its error is one line (gradcam_analysis.py's names the script to run
    first). One process per check: each pays dermcam's imports."""
    options = {"skin_lesion_analysis.py": ("--epochs", "--image-size", "--weights", "--models",
                                           "--resume"),
               "gradcam_analysis.py": ()}
    for name, more in options.items():
        r = _script(name, "--help", cwd=tmp_path)
        assert r.returncode == 0 and "--data" in r.stdout and "--n-boot" in r.stdout
        for opt in more:
            assert opt in r.stdout
    for name in options:
        shutil.copy(REPO / name, tmp_path / name)
        r = _script(name, cwd=tmp_path, where=tmp_path)
        assert r.returncode == 2, (name, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert "skin_lesion_analysis.py" in r.stderr  # gradcam_analysis.py's


def test_study_model_names_are_accepted():
    assert study._models("resnet18, efficientnet,mobilenet") == list(study.STUDY_MODELS)
    assert study._models("efficientnet_b0,efficientnet") == ["efficientnet_b0"]
    with pytest.raises(study.DermcamError):
        study._models(" , ")


def test_gradcam_refuses_a_run_trained_on_other_data(study_dir, tmp_path):
    data = study_dir[0]
    with pytest.raises(study.DermcamError, match="trained on"):
        study.gradcam_study(data=tmp_path, results=data / "results_visualization")
