"""Every stage refuses bad input before work starts, in one line, leaving nothing marked complete.

Each case runs one ``dermcam`` command in this process (``cli.main``, as the console
script does) on one kind of bad input and checks three things: exit code 2, exactly one
stderr line ``error: PATH: ...`` naming the file and the problem (no traceback), and that
no output the command would write is left behind looking complete (no manifest stage
marked complete, no metrics.json, report.html or predictions manifest).

Stages: synth, info, train, evaluate, explain, report, predict, download, models. The
trained run they use is the session's tiny run (conftest: ResNet18 from scratch, 32 px,
one epoch).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermcam import cli
from dermcam.errors import DermcamError

# trains a model or runs a whole stage: deselect with -m 'not slow'
pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMCAM_CACHE", str(tmp_path / "cache"))


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["dermcam", "-q", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out, err = capsys.readouterr()
    return e.value.code, ANSI.sub("", out), ANSI.sub("", err)


def refused(monkeypatch, capsys, args, path, fragment: str) -> str:
    """Run ``args``; assert exit 2 and one stderr line naming ``path`` (or no path when
    None) and holding ``fragment``. Returns the line."""
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert "Traceback" not in out + err, err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1, (code, err)
    prefix = "error: " if path is None else f"error: {path}: "
    assert lines[0].startswith(prefix) and fragment in lines[0], lines[0]
    return lines[0]


def _write_generic(root: Path, labels: list[int], split: list[str], size: int = 24) -> Path:
    """Generic layout: img000.. with a dark (malignant) or pale (benign) blob and a mask."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["image_id,label,split"]
    yy, xx = np.mgrid[:size, :size]
    for i, (label, sp) in enumerate(zip(labels, split)):
        img = np.full((size, size, 3), 200, np.uint8) + rng.integers(0, 20, (size, size, 3),
                                                                     dtype=np.uint8)
        mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
        img[mask] = (40, 20, 10) if label else (170, 120, 90)
        Image.fromarray(img).save(root / "images" / f"img{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"img{i:03d}.png")
        rows.append(f"img{i:03d},{'malignant' if label else 'benign'},{sp}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _data(root: Path, n_train_benign=8, n_train_malignant=8, n_test_benign=3,
          n_test_malignant=3) -> Path:
    labels = ([0] * n_train_benign + [1] * n_train_malignant + [0] * n_test_benign
              + [1] * n_test_malignant)
    split = ["train"] * (n_train_benign + n_train_malignant) + ["test"] * (
        n_test_benign + n_test_malignant)
    return _write_generic(root, labels, split)


TRAIN = ["--models", "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "1",
         "--batch-size", "8", "--accelerator", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def trained(tiny_run):
    """(data folder, run folder) of the session's finished tiny training run (conftest)."""
    return tiny_run


def _copy_run(trained, tmp_path, **stages) -> Path:
    """A copy of the trained run with some stages' entries replaced."""
    run = tmp_path / "run"
    shutil.copytree(trained[1], run)
    m = json.loads((run / "manifest.json").read_text())
    for stage, entry in stages.items():
        m["stages"][stage] = entry
    (run / "manifest.json").write_text(json.dumps(m))
    return run


def _stage(run: Path, stage: str) -> str | None:
    m = json.loads((run / "manifest.json").read_text())
    return m.get("stages", {}).get(stage, {}).get("status")


# ------------------------------------------------------------------------ synth


def test_synth_unknown_preset(monkeypatch, capsys, tmp_path):
    out = tmp_path / "s"
    refused(monkeypatch, capsys, ["synth", "--out", out, "--preset", "nope"], None,
            "unknown preset 'nope'")
    assert not out.exists()


def test_synth_prevalence_out_of_range(monkeypatch, capsys, tmp_path):
    out = tmp_path / "s"
    refused(monkeypatch, capsys, ["synth", "--out", out, "--prevalence", "1.5"], None, "prevalence")
    assert not out.exists()


def test_synth_into_a_folder_holding_files(monkeypatch, capsys, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    refused(monkeypatch, capsys, ["synth", "--out", out], out, "folder is not empty")
    assert (out / "mine.txt").read_text() == "keep me" and not (out / "synth.json").exists()


def test_synth_overwrite_refuses_a_folder_it_did_not_write(monkeypatch, capsys, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    refused(monkeypatch, capsys, ["synth", "--out", out, "--overwrite"], out, "no synth.json")
    assert (out / "mine.txt").read_text() == "keep me"


# ------------------------------------------------------------------------- info


def test_info_missing_folder(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "info", tmp_path / "nope")
    lines = err.splitlines()
    assert code == 2 and lines[0] == f"error: {tmp_path / 'nope'}: data folder not found"
    assert lines[-1].startswith("1 error, 0 warnings") and len(lines) == 2


def test_info_folder_with_no_known_layout(monkeypatch, capsys, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "photo.jpg").write_bytes(b"")
    code, _, err = run_cli(monkeypatch, capsys, "info", tmp_path / "d")
    assert code == 2 and err.startswith(f"error: {tmp_path / 'd'}: no known data layout")
    assert "Traceback" not in err


def test_info_image_size_too_small(monkeypatch, capsys, tmp_path):
    data = _data(tmp_path / "d")
    refused(monkeypatch, capsys, ["info", data, "--image-size", "4"], None,
            "--image-size must be at least 8")


def test_info_one_class_test_split_is_an_error(monkeypatch, capsys, tmp_path):
    data = _data(tmp_path / "d", n_test_malignant=0)
    code, _, err = run_cli(monkeypatch, capsys, "info", data, "--image-size", "32")
    lines = err.splitlines()
    assert code == 2 and lines[0] == (
        f"error: {data / 'labels.csv'}: the test split holds only benign images (3), no "
        "malignant: ROC AUC, sensitivity and specificity are undefined"), err


# ------------------------------------------------------------------------ train


def _no_run(out: Path) -> None:
    assert not (out / "manifest.json").exists()


def test_train_too_few_of_a_class_for_validation(monkeypatch, capsys, tmp_path):
    """The issue's case: 8 training images, 2 malignant, used to end in a raw ValueError
    from youden_threshold after training; now refused before any folder is made."""
    data = _data(tmp_path / "d", n_train_benign=6, n_train_malignant=2)
    out = tmp_path / "run"
    refused(monkeypatch, capsys, ["train", data, "--out", out, *TRAIN], data,
            "too small to stratify (6 benign, 2 malignant)")
    assert not out.exists()


def test_train_one_class_training_split(monkeypatch, capsys, tmp_path):
    data = _data(tmp_path / "d", n_train_malignant=0)
    out = tmp_path / "run"
    refused(monkeypatch, capsys, ["train", data, "--out", out, *TRAIN], data,
            "has no malignant images")
    assert not out.exists()


def test_train_val_fraction_out_of_range(monkeypatch, capsys, tmp_path):
    data = _data(tmp_path / "d")
    out = tmp_path / "run"
    refused(monkeypatch, capsys, ["train", data, "--out", out, *TRAIN, "--val-fraction", "1.5"],
            None, "--val-fraction must be between 0 and 1")
    assert not out.exists()


def test_train_unknown_model(monkeypatch, capsys, tmp_path):
    data = _data(tmp_path / "d")
    out = tmp_path / "run"
    args = ["train", data, "--out", out, *TRAIN]
    args[args.index("resnet18")] = "resnet9000"
    refused(monkeypatch, capsys, args, None, "resnet9000")
    assert not out.exists()


def test_train_unknown_monitor(monkeypatch, capsys, tmp_path):
    data = _data(tmp_path / "d")
    out = tmp_path / "run"
    refused(monkeypatch, capsys, ["train", data, "--out", out, *TRAIN, "--monitor", "acc"],
            None, "--monitor must be val_auc or val_loss")
    assert not out.exists()


def test_train_missing_data_folder(monkeypatch, capsys, tmp_path):
    out = tmp_path / "run"
    refused(monkeypatch, capsys, ["train", tmp_path / "nope", "--out", out, *TRAIN],
            tmp_path / "nope", "data folder not found")
    assert not out.exists()


def test_train_into_a_folder_holding_other_files(monkeypatch, capsys, tmp_path):
    data = _data(tmp_path / "d")
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    refused(monkeypatch, capsys, ["train", data, "--out", out, *TRAIN], out,
            "already holds other files")
    assert (out / "notes.txt").read_text() == "keep me"
    _no_run(out)


def test_train_truncated_image_stops_before_the_run_starts(monkeypatch, capsys, tmp_path):
    data = _data(tmp_path / "d")
    bad = data / "images" / "img003.png"
    bad.write_bytes(bad.read_bytes()[:60])
    out = tmp_path / "run"
    refused(monkeypatch, capsys, ["train", data, "--out", out, *TRAIN], bad, "")
    _no_run(out)


def test_train_resume_without_a_run(monkeypatch, capsys, tmp_path):
    data = _data(tmp_path / "d")
    out = tmp_path / "run"
    out.mkdir()
    refused(monkeypatch, capsys, ["train", data, "--out", out, "--resume"], out,
            "not a dermcam run folder")
    _no_run(out)


def test_train_failure_is_recorded_and_named_by_later_stages(monkeypatch, capsys, tmp_path):
    """A model failing mid-training leaves the stage 'failed' with its reason; evaluate
    then refuses naming it."""
    import dermcam.stages.train as training

    def boom(*a, **k):
        raise DermcamError("resnet18: loss is NaN at epoch 0, batch 1")

    data = _data(tmp_path / "d")
    out = tmp_path / "run"
    monkeypatch.setattr(training, "train_one", boom)
    refused(monkeypatch, capsys, ["train", data, "--out", out, *TRAIN], None, "loss is NaN")
    assert _stage(out, "train") == "failed"
    refused(monkeypatch, capsys, ["evaluate", out], out,
            "stage 'train' failed (resnet18: loss is NaN at epoch 0, batch 1)")
    assert not (out / "metrics.json").exists()


# --------------------------------------------------------------------- evaluate


def test_evaluate_missing_run(monkeypatch, capsys, tmp_path):
    refused(monkeypatch, capsys, ["evaluate", tmp_path / "nope"], tmp_path / "nope",
            "run folder not found")


def test_evaluate_folder_without_manifest(monkeypatch, capsys, tmp_path):
    refused(monkeypatch, capsys, ["evaluate", tmp_path], tmp_path, "no manifest.json")


def test_evaluate_manifest_not_json(monkeypatch, capsys, tmp_path):
    (tmp_path / "manifest.json").write_text("{ half written")
    refused(monkeypatch, capsys, ["evaluate", tmp_path], tmp_path / "manifest.json",
            "not valid JSON")


def test_evaluate_while_training_runs(trained, monkeypatch, capsys, tmp_path):
    run = _copy_run(trained, tmp_path, train={"status": "running", "at": "2024-01-01T00:00"})
    refused(monkeypatch, capsys, ["evaluate", run], run,
            "stage 'train' is still running or was interrupted")
    assert not (run / "metrics.json").exists() and _stage(run, "evaluate") is None


def test_evaluate_after_training_failed(trained, monkeypatch, capsys, tmp_path):
    run = _copy_run(trained, tmp_path, train={"status": "failed", "error": "disk full"})
    refused(monkeypatch, capsys, ["evaluate", run], run, "stage 'train' failed (disk full)")
    assert not (run / "metrics.json").exists()


def test_evaluate_run_of_another_schema(trained, monkeypatch, capsys, tmp_path):
    run = _copy_run(trained, tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    m["schema_version"] = 99
    (run / "manifest.json").write_text(json.dumps(m))
    refused(monkeypatch, capsys, ["evaluate", run], run / "manifest.json",
            "incompatible dermcam (schema 99")
    assert not (run / "metrics.json").exists()


def test_evaluate_one_class_test_split(trained, monkeypatch, capsys, tmp_path):
    """AUC is undefined: said in one line before the stage starts, not a crash."""
    data = tmp_path / "data"
    shutil.copytree(trained[0], data)
    text = (data / "labels.csv").read_text()
    (data / "labels.csv").write_text(re.sub(r"malignant,test", "benign,test", text))
    run = _copy_run(trained, tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    m["data"]["root"] = str(data)
    (run / "manifest.json").write_text(json.dumps(m))
    refused(monkeypatch, capsys, ["evaluate", run], data,
            "the test split holds only benign images (10), no malignant: ROC AUC")
    assert not (run / "metrics.json").exists() and _stage(run, "evaluate") is None


def test_evaluate_failure_is_recorded_so_report_refuses(trained, monkeypatch, capsys,
                                                        tmp_path):
    import dermcam.stages.evaluate as pipeline

    def boom(*a, **k):
        raise DermcamError("could not write file (No space left on device)", "metrics.json")

    run = _copy_run(trained, tmp_path)
    monkeypatch.setattr(pipeline, "_evaluate", boom)
    refused(monkeypatch, capsys, ["evaluate", run, "--n-boot", "10"], "metrics.json",
            "No space left")
    assert _stage(run, "evaluate") == "failed"
    refused(monkeypatch, capsys, ["report", run], run, "stage 'evaluate' failed")
    assert not (run / "report.html").exists()


# ---------------------------------------------------------------------- explain


def test_explain_while_training_runs(trained, monkeypatch, capsys, tmp_path):
    run = _copy_run(trained, tmp_path, train={"status": "running"})
    refused(monkeypatch, capsys, ["explain", run, "--no-sanity"], run,
            "stage 'train' is still running")
    assert not (run / "attention.csv").exists() and _stage(run, "explain") is None


def test_explain_after_training_failed(trained, monkeypatch, capsys, tmp_path):
    run = _copy_run(trained, tmp_path, train={"status": "failed", "error": "NaN loss"})
    refused(monkeypatch, capsys, ["explain", run, "--no-sanity"], run,
            "stage 'train' failed (NaN loss)")
    assert not (run / "attention.csv").exists()


def test_explain_run_of_another_schema(trained, monkeypatch, capsys, tmp_path):
    run = _copy_run(trained, tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    m["schema_version"] = 0
    (run / "manifest.json").write_text(json.dumps(m))
    refused(monkeypatch, capsys, ["explain", run], run / "manifest.json", "incompatible")


def test_explain_bad_shard(trained, monkeypatch, capsys, tmp_path):
    run = _copy_run(trained, tmp_path)
    refused(monkeypatch, capsys, ["explain", run, "--shard", "two"], None,
            "--shard must look like 0/4")
    assert _stage(run, "explain") is None


# ----------------------------------------------------------------------- report


def test_report_while_evaluate_runs(trained, monkeypatch, capsys, tmp_path):
    run = _copy_run(trained, tmp_path, evaluate={"status": "running", "at": "2024-01-01"})
    refused(monkeypatch, capsys, ["report", run], run, "stage 'evaluate' is still running")
    assert not (run / "report.html").exists() and _stage(run, "report") is None


def test_report_after_explain_failed(trained, monkeypatch, capsys, tmp_path):
    run = _copy_run(trained, tmp_path, explain={"status": "failed", "error": "out of memory"})
    refused(monkeypatch, capsys, ["report", run], run,
            "stage 'explain' failed (out of memory)")
    assert not (run / "report.html").exists()


def test_report_after_training_failed(trained, monkeypatch, capsys, tmp_path):
    run = _copy_run(trained, tmp_path, train={"status": "failed"})
    refused(monkeypatch, capsys, ["report", run], run, "stage 'train' failed")
    assert not (run / "report.html").exists()


def test_report_on_a_folder_that_is_not_a_run(monkeypatch, capsys, tmp_path):
    refused(monkeypatch, capsys, ["report", tmp_path], tmp_path, "not a dermcam run folder")
    assert not (tmp_path / "report.html").exists()


# ---------------------------------------------------------------------- predict


def _ckpt(trained) -> Path:
    return trained[1] / "models" / "resnet18" / "model.pt"


def test_predict_folder_with_no_images(trained, monkeypatch, capsys, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no pictures here")
    out = tmp_path / "out"
    refused(monkeypatch, capsys, ["predict", _ckpt(trained), tmp_path / "in", "--out", out],
            tmp_path / "in", "holds no .jpg, .jpeg, .png or .bmp images")
    assert not out.exists()


def test_predict_folder_with_only_masks(trained, monkeypatch, capsys, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(trained[0] / "masks" / "img000.png", folder / "img000_segmentation.png")
    out = tmp_path / "out"
    refused(monkeypatch, capsys, ["predict", _ckpt(trained), folder, "--out", out], folder,
            "holds no")
    assert not out.exists()


def test_predict_masks_that_match_no_image(trained, monkeypatch, capsys, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.copy(trained[0] / "masks" / "img000.png", masks / "other_Segmentation.png")
    out = tmp_path / "out"
    refused(monkeypatch, capsys, ["predict", _ckpt(trained), trained[0] / "images" / "img001.png",
                                  "--masks", masks, "--out", out],
            masks, "no mask matches any of the 1 image(s)")
    assert not out.exists()


def test_predict_missing_mask_folder(trained, monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    refused(monkeypatch, capsys, ["predict", _ckpt(trained), trained[0] / "images",
                                  "--masks", tmp_path / "nope", "--out", out],
            tmp_path / "nope", "mask folder not found")
    assert not out.exists()


def test_predict_missing_image(trained, monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    refused(monkeypatch, capsys, ["predict", _ckpt(trained), tmp_path / "x.jpg", "--out", out],
            tmp_path / "x.jpg", "image file or folder not found")
    assert not out.exists()


def test_predict_checkpoint_that_is_not_one(trained, monkeypatch, capsys, tmp_path):
    ck = tmp_path / "model.pt"
    ck.write_text("not a checkpoint")
    out = tmp_path / "out"
    refused(monkeypatch, capsys, ["predict", ck, trained[0] / "images", "--out", out], ck,
            "not a PyTorch checkpoint")
    assert not out.exists()


def test_predict_into_a_run_folder(trained, monkeypatch, capsys, tmp_path):
    run = _copy_run(trained, tmp_path)
    before = (run / "manifest.json").read_bytes()
    refused(monkeypatch, capsys, ["predict", _ckpt(trained), trained[0] / "images" / "img000.png",
                                  "--out", run], run, "holds another dermcam output")
    assert (run / "manifest.json").read_bytes() == before


def test_failed_rerun_leaves_no_complete_predictions(trained, monkeypatch, capsys, tmp_path):
    """A rerun into an earlier predictions folder that stops at a bad image must not
    leave the earlier manifest saying 'complete' beside the new, partial files."""
    images = tmp_path / "in"
    shutil.copytree(trained[0] / "images", images)
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "predict", _ckpt(trained), images / "img000.png",
                           "--out", out)
    assert code == 0 and json.loads((out / "manifest.json").read_text())["status"] == "complete"
    bad = images / "img005.png"
    bad.write_bytes(b"")
    refused(monkeypatch, capsys, ["predict", _ckpt(trained), images, "--out", out,
                                  "--batch-size", "2"], bad, "file is empty")
    assert not (out / "manifest.json").exists() and not (out / "predictions.csv").exists()


# --------------------------------------------------------------------- download


def test_download_unsupported_data_set(monkeypatch, capsys, tmp_path):
    refused(monkeypatch, capsys, ["download", "ham10000", "--out", tmp_path / "d"], None,
            "cannot download 'ham10000': only isic2016")
    assert not (tmp_path / "d").exists()


def test_download_from_a_mirror_missing_the_files(monkeypatch, capsys, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    to = tmp_path / "d"
    code, out, err = run_cli(monkeypatch, capsys, "download", "isic2016", "--out", to,
                             "--base-url", mirror.as_uri(), "--retries", "0")
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in out + err
    assert lines[0].startswith(f"error: {mirror.as_uri()}/ISBI2016_ISIC_Part3B_") and \
        "not found" in lines[0], err
    assert not (to / "download.json").exists()


# ----------------------------------------------------------------------- models


def test_models_missing_run(monkeypatch, capsys, tmp_path):
    refused(monkeypatch, capsys, ["models", "--run", tmp_path / "nope"], tmp_path / "nope",
            "run folder not found")


def test_models_run_of_another_schema(trained, monkeypatch, capsys, tmp_path):
    run = _copy_run(trained, tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    m["schema_version"] = 7
    (run / "manifest.json").write_text(json.dumps(m))
    refused(monkeypatch, capsys, ["models", "--run", run], run / "manifest.json",
            "incompatible dermcam (schema 7")
