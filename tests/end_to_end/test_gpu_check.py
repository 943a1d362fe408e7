"""benchmarks/gpu_check.py (#15 item 9), run as a user runs it: ``--device cpu --small``
end to end in a subprocess (about a minute on 2 cores), and ``--device cuda`` where no
CUDA device is visible (one line, non-zero exit)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

# trains a model or runs a whole stage: deselect with -m 'not slow'
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
STAGES = ("train", "evaluate", "explain", "probe", "predict")


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(args, tmp_path, **env):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, **env}, timeout=300)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_check")
    out = root / "out"
    r = _run(["--device", "cpu", "--small", "--out", str(out)], root)
    return r, out


def test_small_cpu_run_times_every_stage(small_run):
    r, out = small_run
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["kind"] == "dermcam-gpu-check" and res["small"] is True
    assert res["weights"] == "none" and "not downloaded" in res["weights_note"]
    assert res["device"]["device"] == "cpu"
    assert res["config"]["models"] == ["resnet18"] and res["config"]["image_size"] <= 64
    assert set(res["stages"]) == set(STAGES)
    for stage in STAGES:
        s = res["stages"][stage]
        assert s["images"] > 0 and s["seconds"] > 0, stage
        assert math.isfinite(s["images_per_s"]) and s["images_per_s"] > 0, stage
        assert s["images_per_s"] == pytest.approx(s["images"] / s["seconds"])
    # what each stage counted: 16 test images (all masked) x 1 model; 48 train - 20 % val
    assert res["stages"]["evaluate"]["images"] == 16
    assert res["stages"]["explain"]["images"] == 16
    assert res["stages"]["probe"]["images"] == 16
    assert res["stages"]["predict"]["images"] == 16
    assert res["stages"]["train"]["images"] == 38
    assert res["stages"]["probe"]["variants"] > res["stages"]["probe"]["images"]
    assert res["stages"]["explain"]["cam_only_images_per_s"] > 0
    # the run the stages wrote is real
    run = out / "run"
    assert (run / "models" / "resnet18" / "model.pt").is_file()
    for name in ("metrics.json", "attention.csv", "probe.csv"):
        assert (run / name).is_file(), name
    assert (out / "predict" / "resnet18" / "predictions.csv").is_file()


def test_small_cpu_run_compares_heatmaps_cpu_vs_cpu(small_run):
    r, out = small_run
    assert r.returncode == 0, r.stderr[-3000:]
    h = json.loads((out / "gpu_check.json").read_text())["heatmaps"]
    assert h["reference"] == "cpu" and h["device"] == "cpu"
    assert "CPU vs CPU" in h["note"] and h["tolerance"] == 1e-3
    assert h["images"] == 4 and set(h["models"]) == {"resnet18"}
    row = h["models"]["resnet18"]
    assert row["max_abs_diff"] == 0.0 and row["prob_max_abs_diff"] == 0.0
    assert row["decisions_differ"] == 0 and row["passed"] is True
    assert "max_abs_diff_tf32_off" not in row  # CUDA only
    assert h["max_abs_diff"] == 0.0 and h["passed"] is True


def test_small_cpu_run_prints_the_table(small_run):
    r, out = small_run
    lines = r.stdout.splitlines()
    assert any("images/s" in ln for ln in lines)
    for stage in STAGES:
        row = next(ln for ln in lines if ln.startswith(stage + " "))
        assert float(row.split()[3]) > 0, row
    assert any("weights: none" in ln for ln in lines)
    assert any("CPU vs CPU" in ln for ln in lines)
    assert "heatmaps equal within 0.001 (min-max-normalised maps): yes" in r.stdout
    assert f"wrote {out / 'gpu_check.json'}" in r.stdout


def test_unavailable_cuda_device_exits_with_one_line(tmp_path):
    out = tmp_path / "never"
    r = _run(["--device", "cuda", "--small", "--out", str(out)], tmp_path,
             CUDA_VISIBLE_DEVICES="")
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("gpu_check: error: --device cuda: no CUDA device")
    assert not out.exists()  # refused before anything was written


def test_out_folder_of_something_else_is_refused(tmp_path, capsys):
    gc = _load()
    (tmp_path / "precious.txt").write_text("keep me")
    assert gc.main(["--device", "cpu", "--small", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_train_placement_and_small_defaults():
    import torch

    gc = _load()
    assert gc._train_placement(torch.device("cpu")) == ("cpu", "1")
    assert gc._train_placement(torch.device("cuda", 0)) == ("gpu", "1")
    assert gc._train_placement(torch.device("cuda", 2)) == ("gpu", "2,")  # Lightning: [2]
    full, small = gc.parse_args([]), gc.parse_args(["--small", "--epochs", "3"])
    assert full.models == ["resnet18", "efficientnet_b0", "mobilenet_v2"]
    assert full.image_size == 224 and full.epochs == 2 and full.device == "auto"
    assert small.models == ["resnet18"] and small.image_size == 64 and small.epochs == 3
