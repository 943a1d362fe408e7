"""Faults and scale: determinism, resume after SIGKILL, NaN loss, DDP, explain shards.

A fresh ``python -m dermcam`` process costs seconds of imports (torch, Lightning) before any
work, so commands run in a separate process only where that is what is tested: the second
run of the same seed, the process that is killed or interrupted, the DDP processes and one
explain shard. The rest (the reference run, resuming, evaluating, merging, a refusal) run
in this process, through the same command line.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import easy_generic, invoke_cli
from typer.testing import CliRunner

from dermcam.cli import app
from dermcam.errors import DermcamError

# trains a model or runs a whole stage: deselect with -m 'not slow'
pytestmark = pytest.mark.slow

# Three epochs: the interrupted runs are stopped after the first one's checkpoint, so a
# resume still has epochs to train, and patience 4 lets every run train all three.
EPOCHS = 3
ARGS = ["--weights", "none", "--image-size", "32", "--epochs", str(EPOCHS), "--batch-size", "8",
        "--models", "resnet18", "--patience", "4", "--seed", "3", "--accelerator", "cpu"]
EVAL = ["evaluate", "--n-boot", "100"]
EXPLAIN = ["explain", "--n-boot", "100", "--no-sanity", "--bench-methods", "gradcam"]


def _cli(*args, **kw):
    """``dermcam -q ARGS`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "dermcam", "-q", *args], capture_output=True,
                          text=True, **kw)


# One fresh process running ``dermcam -q ARGS`` for each ARGS in turn, through the console
# entry as ``python -m dermcam`` does: a run made apart from this process, paying the
# imports once rather than once per stage. The first failing command ends it (its code).
_STAGES = """
import json, sys
from dermcam import cli
for args in json.loads(sys.argv[1]):
    sys.argv = ["dermcam", "-q", *args]
    try:
        cli.main()
    except SystemExit as e:
        if e.code:
            raise
"""


def _cli_stages(*commands):
    return subprocess.run([sys.executable, "-c", _STAGES, json.dumps(commands)],
                          capture_output=True, text=True)


def _here(monkeypatch, capsys, *args):
    """``dermcam -q ARGS`` in this process, through the console entry (a user error: one
    line and exit 2): ``(exit code, stdout, stderr)``."""
    return invoke_cli(monkeypatch, capsys, *args)


@pytest.fixture
def same_threads():
    """Commands run in this process set torch's thread count (training shares the cores
    among its processes, an explain shard on the CPU takes its part of them); the count
    comes back afterwards, so later tests compute as before."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler for the test, however the suite was launched (a job
    started in the background without job control inherits SIG_IGN, and Python then
    installs none); the previous disposition comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be set in the main thread")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return easy_generic(root / "data", n=60)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run: train (Lightning's checkpoints kept), evaluate, explain; in this
    process (test_same_seed_same_bytes makes the same run in a fresh one)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    threads = torch.get_num_threads()
    try:
        for cmd in (["train", str(data), "--out", str(out), *ARGS, "--keep-checkpoints"],
                    EVAL + [str(out)], EXPLAIN + [str(out)]):
            r = CliRunner().invoke(app, ["-q", *cmd])
            assert r.exit_code == 0, (r.output, r.exception)
    finally:
        torch.set_num_threads(threads)
    return out


def test_same_seed_same_bytes(data, reference, tmp_path):
    """The same run in a separate process (the reference ran in this one): the same bytes."""
    out = tmp_path / "again"
    r = _cli_stages(["train", str(data), "--out", str(out), *ARGS], EVAL + [str(out)],
                    EXPLAIN + [str(out)])
    assert r.returncode == 0, r.stderr
    for f in ("predictions.csv", "attention.csv", "models/resnet18/history.csv"):
        if f.endswith("history.csv"):  # elapsed time differs; everything else must not
            a = pd.read_csv(reference / f).drop(columns="elapsed_s")
            b = pd.read_csv(out / f).drop(columns="elapsed_s")
            pd.testing.assert_frame_equal(a, b)
        else:
            assert (reference / f).read_bytes() == (out / f).read_bytes(), f


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_resume_after_kill_or_ctrl_c_matches_uninterrupted(data, reference, tmp_path, sig,
                                                           monkeypatch, capsys, same_threads):
    out = tmp_path / "killed"
    # SIGINT's default action in the child even where this runner ignores it (a job
    # started in the background without job control inherits SIG_IGN, and Python then
    # installs no KeyboardInterrupt handler: the Ctrl-C would be dropped, not tested)
    proc = subprocess.Popen([sys.executable, "-m", "dermcam", "-q", "train", str(data),
                             "--out", str(out), *ARGS], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = out / "models/resnet18/lightning/last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the first epoch's checkpoint, bounded
    assert last.exists() and proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, sig)
    rc = proc.wait(timeout=120)
    if sig == signal.SIGINT:  # Ctrl-C: a clean exit, the checkpoints so far intact
        assert rc == 130
        torch.load(last, weights_only=True)
        torch.load(out / "models/resnet18/lightning/best.ckpt", weights_only=True)
    assert not (out / "models/resnet18/model.pt").exists()
    # stopped mid-training: a resume has at least one whole epoch left to train
    assert torch.load(last, weights_only=True)["epoch"] < EPOCHS - 1
    # resumed from what the interrupted process left on disk (in this process)
    code, _, err = _here(monkeypatch, capsys, "train", data, "--out", out, "--resume")
    assert code == 0, err
    assert not (out / "models/resnet18/lightning").exists()  # finished: model.pt is enough
    ref_hist = pd.read_csv(reference / "models/resnet18/history.csv")
    new_hist = pd.read_csv(out / "models/resnet18/history.csv")
    cols = ["epoch", "train_loss", "val_loss", "val_auc"]
    pd.testing.assert_frame_equal(ref_hist[cols], new_hist[cols], atol=1e-5, rtol=1e-4)
    a = torch.load(reference / "models/resnet18/model.pt", weights_only=True)
    b = torch.load(out / "models/resnet18/model.pt", weights_only=True)
    assert a["best_epoch"] == b["best_epoch"]
    assert a["threshold"] == pytest.approx(b["threshold"], abs=1e-5)
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(v, b["state_dict"][k], atol=1e-4, rtol=1e-4)


def test_ctrl_c_during_fit_waits_for_the_batch_boundary(python_sigint):
    """Ctrl-C is recorded, then raised by the callback after the batch; twice: at once."""
    from dermcam.train_callbacks import CtrlCAtBatchBoundary

    guard = CtrlCAtBatchBoundary()

    def press() -> str:
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next line
            return "recorded" if guard.pending else "lost"
        except KeyboardInterrupt:
            return "raised"

    with guard:
        assert press() == "recorded"  # e.g. mid checkpoint write: nothing raised there
        with pytest.raises(KeyboardInterrupt):
            guard.on_train_batch_end(None, None, None, None, 0)
        assert press() == "raised"  # a second Ctrl-C does not wait
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_after_the_last_batch_stops_before_model_pt(data, tmp_path, monkeypatch,
                                                           python_sigint):
    """Pressed while the threshold is chosen (no batch boundary left): recorded by the
    guard, raised before model.pt is written; before, it could land in a finalizer and be
    lost, and training finished as if nothing was pressed."""
    from dermcam.config import TrainConfig
    from dermcam.stages import train as tr

    choose = tr.choose_threshold

    def press_then_choose(*a, **k):
        try:  # where Ctrl-C lands in a finalizer, CPython discards the KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass
        return choose(*a, **k)

    monkeypatch.setattr(tr, "choose_threshold", press_then_choose)
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(data), out=str(out), models=["resnet18"], weights="none",
                      image_size=32, max_epochs=1, batch_size=8, seed=3, progress=False,
                      accelerator="cpu", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg)
    assert (out / "models/resnet18/lightning/last.ckpt").exists()  # resume needs it
    assert not (out / "models/resnet18/model.pt").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nonfinite_loss_names_epoch_and_batch():
    from dermcam.stages.train import make_module

    class NaNNet(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 2), float("nan"))

    module = make_module(NaNNet(), 1e-3, 0.0, None, False, "val_auc")
    batch = (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), torch.tensor([0, 1]))
    with pytest.raises(DermcamError, match="epoch 0, batch 7"):
        module.training_step(batch, 7)


def test_ddp_two_processes_on_cpu(data, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ddp"
    r = _cli("train", str(data), "--out", str(out), *ARGS, "--devices", "2", "--strategy", "ddp",
             "--keep-checkpoints")
    assert r.returncode == 0, r.stderr
    # Lightning's known-harmless DDP warnings are filtered (dermcam.logs), by name only
    assert "sync_dist=True" not in r.stderr and "all_gather is deprecated" not in r.stderr
    assert (out / "models/resnet18/model.pt").exists()
    m = json.loads((out / "manifest.json").read_text())
    assert m["stages"]["train"]["status"] == "complete"
    ck_ddp = torch.load(out / "models/resnet18/lightning/last.ckpt", weights_only=True)
    ck_one = torch.load(reference / "models/resnet18/lightning/last.ckpt", weights_only=True)
    # the single-device recipe (#15): --batch-size is the global batch, split over the two
    # processes, so both runs take the same optimizer steps with the same learning rate
    n_train = m["stages"]["train"]["n_train"]
    per_epoch_one = math.ceil(n_train / 8)
    assert ck_one["global_step"] == ck_ddp["global_step"] == EPOCHS * per_epoch_one
    rec = m["models"]["resnet18"]
    one = json.loads((reference / "manifest.json").read_text())["models"]["resnet18"]
    assert (rec["global_batch_size"], rec["world_size"], rec["per_process_batch_size"]) == \
        (8, 2, 4)
    assert rec["optimizer_steps"] == one["optimizer_steps"] == ck_one["global_step"]
    # validation AUC counts each validation image once (an odd n, padded, is tested in
    # test_gpu_path.py): gathered from both processes, n is the validation split's
    n_val = m["stages"]["train"]["n_val"]
    hist = pd.read_csv(out / "models/resnet18/history.csv")
    assert (hist["val_n"] == n_val).all()
    # and the result means the same thing: a working classifier
    code, _, err = _here(monkeypatch, capsys, *EVAL, out)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["resnet18"]["threshold_free"]["roc_auc"]["value"] > 0.8


def test_explain_shards_merge_to_the_single_run(reference, tmp_path, monkeypatch, capsys,
                                                same_threads):
    """Shard 0 in a process of its own, shard 1 and the merges in this one: batches
    written by separate processes merge into the single run's attention.csv."""
    run = tmp_path / "sharded"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "attention")
    (run / "attention.csv").unlink()
    r = _cli(*EXPLAIN, str(run), "--shard", "0/2", "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    code, _, err = _here(monkeypatch, capsys, *EXPLAIN, run, "--merge", "--batch-size", "8")
    assert code == 2 and "missing" in err  # shard 1 not done yet
    code, _, err = _here(monkeypatch, capsys, *EXPLAIN, run, "--shard", "1/2", "--batch-size",
                         "8")
    assert code == 0, err
    code, _, err = _here(monkeypatch, capsys, *EXPLAIN, run, "--merge", "--batch-size", "8")
    assert code == 0, err
    a = pd.read_csv(reference / "attention.csv")
    b = pd.read_csv(run / "attention.csv")
    pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=1e-4)


def test_stage_refuses_run_from_an_older_dermcam(reference, tmp_path, monkeypatch, capsys):
    run = tmp_path / "old"
    shutil.copytree(reference, run)
    m = json.loads((run / "manifest.json").read_text())
    m["schema_version"] = 0
    (run / "manifest.json").write_text(json.dumps(m))
    code, out, err = _here(monkeypatch, capsys, *EVAL, run)  # an exception would escape
    assert code == 2 and "incompatible dermcam" in err
    assert "Traceback" not in err
    np.testing.assert_equal(out.count("\n") <= 1, True)
