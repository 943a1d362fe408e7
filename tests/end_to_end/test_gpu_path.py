"""The GPU and cluster path, checked on the CPU (#15): device flags, the single-device recipe
under DDP, de-duplicated validation, launcher ranks, precision, weights integrity."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dermcam.device import cpu_cores, inference_batch_size, resolve_device, shard_threads
from dermcam.errors import DermcamError
from dermcam.objective import global_mean_loss
from dermcam.stages.train import (
    EpochSampler,
    RankBatches,
    RankPositions,
    TrainConfig,
    dedupe_by_index,
    launch_rank,
    rank_slice,
)

# ------------------------------------------------------------------- device


def test_resolve_device_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu", shard=(1, 2)) == torch.device("cpu")
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(DermcamError, match="no CUDA device is available") as exc:
            resolve_device(spec)
        assert "\n" not in str(exc.value)
    with pytest.raises(DermcamError, match="auto, cpu, cuda or cuda:INDEX"):
        resolve_device("gpu0")


def test_resolve_device_puts_each_shard_on_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert [resolve_device("auto", shard=(i, 6)).index for i in range(6)] == [0, 1, 2, 3, 0, 1]
    assert resolve_device("cuda:3", shard=(0, 2)) == torch.device("cuda", 3)
    with pytest.raises(DermcamError, match="4 CUDA device"):
        resolve_device("cuda:4")


def test_batch_sizes_and_shard_threads_suit_the_device():
    assert inference_batch_size("cpu", None) == 64
    assert inference_batch_size(torch.device("cuda", 1), None) == 256
    assert inference_batch_size("cuda", 7) == 7
    with pytest.raises(DermcamError):
        inference_batch_size("cpu", 0)
    assert shard_threads(4, cpus=16) == 4 and shard_threads(8, cpus=2) == 1


def test_training_keeps_to_the_cores_omp_num_threads_allows(monkeypatch):
    """A scheduler's (or the test workers') OMP_NUM_THREADS bounds training's threads; it
    used to set one thread per core of the machine whatever the limit."""
    from dermcam.config import TrainConfig
    from dermcam.stages.train import _share_cpu_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_cores() == 3 and shard_threads(2) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    try:
        _share_cpu_threads(TrainConfig(data="d", out="r", accelerator="cpu"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    monkeypatch.delenv("OMP_NUM_THREADS")
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    assert cpu_cores() == (len(allowed) if allowed is not None else os.cpu_count())


def test_cli_refuses_an_unavailable_device_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    r = subprocess.run([sys.executable, "-m", "dermcam", "-q", "predict", str(tmp_path / "x.pt"),
                        str(tmp_path), "--device", "cuda:0"], capture_output=True, text=True)
    assert r.returncode == 2 and "no CUDA device is available" in r.stderr
    assert "Traceback" not in r.stderr


# -------------------------------------------------- DDP: the single-device recipe


@pytest.mark.parametrize("n,batch,world", [(37, 8, 2), (37, 8, 3), (9, 4, 2), (5, 4, 4)])
def test_rank_batches_make_up_the_single_device_batches(n, batch, world):
    labels = np.arange(n) % 3 == 0
    single = list(RankBatches(EpochSampler(labels.astype(int), 5), batch))
    ranks = [RankBatches(EpochSampler(labels.astype(int), 5), batch, r, world)
             for r in range(world)]
    for r in ranks:
        r.set_epoch(0)
    per_rank = [list(r) for r in ranks]
    assert all(len(p) == len(single) == len(r) for p, r in zip(per_rank, ranks))
    for k, batch_k in enumerate(single):
        real = [i for p in per_rank for i in p[k] if i < n]
        padded = [i for p in per_rank for i in p[k] if i >= n]
        assert real == batch_k  # the same images, in the same order, each once
        assert all(len(p[k]) >= 1 for p in per_rank)  # every process takes a step
        assert all(i - n == batch_k[0] for i in padded)
    # the same optimizer steps per epoch as one device
    assert len(single) == -(-n // batch)


def test_rank_slice_splits_contiguously():
    assert [rank_slice(5, 2, r) for r in range(2)] == [(0, 3), (3, 5)]
    assert [rank_slice(1, 3, r) for r in range(3)] == [(0, 1), (1, 1), (1, 1)]


def _fake_module(world, totals, class_weights):
    strategy = SimpleNamespace(reduce=lambda t, reduce_op: totals.clone())
    trainer = SimpleNamespace(world_size=world, strategy=strategy)
    return SimpleNamespace(class_weights=class_weights, _trainer=trainer, trainer=trainer)


@pytest.mark.parametrize("weighted", [True, False])
def test_ddp_loss_gives_the_single_device_gradient(weighted):
    """Two processes' losses, their gradients averaged as DDP does, equal the gradient of
    the one-device weighted loss over the whole batch (uneven split, one padded repeat)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 2, generator=g)
    labels = torch.tensor([0, 1, 0, 0, 1])
    cw = torch.tensor([0.7, 2.5]) if weighted else None
    ref = logits.clone().requires_grad_(True)
    F.cross_entropy(ref, labels, weight=cw).backward()
    # process 0 takes rows 0-2, process 1 rows 3-4 and a zero-weight repeat of row 0
    parts = [(slice(0, 3), torch.ones(3)), (torch.tensor([3, 4, 0]), torch.tensor([1., 1., 0.]))]
    w = cw[labels] if weighted else torch.ones(5)
    total = w.sum()
    grad = torch.zeros_like(logits)
    for rows, keep in parts:
        x = logits[rows].clone().requires_grad_(True)
        loss = global_mean_loss(_fake_module(2, total, cw), x, labels[rows], keep)
        loss.backward()
        grad.index_add_(0, torch.arange(5)[rows], x.grad / 2)  # DDP: mean over processes
    torch.testing.assert_close(grad, ref.grad)


def test_validation_outputs_are_deduplicated_by_index():
    """9 validation images on 2 processes: the padded repeat is counted once (n = 9)."""

    n, world = 9, 2
    parts = [list(RankPositions(n, 4, r, world)) for r in range(world)]
    idx = [i for p in parts for b in p for i in b]
    assert len(idx) == 10 and sorted(set(idx)) == list(range(n))  # one image twice
    probs = torch.linspace(0.05, 0.95, n)
    labels = torch.tensor([0, 1, 0, 0, 1, 1, 0, 1, 0])
    gathered = torch.tensor(idx)
    p, y = dedupe_by_index(gathered, probs[gathered], labels[gathered])
    assert len(p) == n and torch.equal(y, labels) and torch.equal(p, probs)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        dedupe_by_index(gathered, probs)


# --------------------------------------------------------------- launcher ranks

CLEAN = ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_JOB_NAME",
         "SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "SLURM_JOB_ID", "RANK", "LOCAL_RANK",
         "WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
         "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "OMPI_COMM_WORLD_RANK",
         "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "GLOBAL_RANK")

LAUNCHERS = {
    "srun, second task of node 0": ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2",
                                     "SLURM_NNODES": "2", "SLURM_PROCID": "1",
                                     "SLURM_LOCALID": "1", "SLURM_NODEID": "0",
                                     "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7"},
                                    "2", 2, (1, 4)),
    "srun, first task of node 1": ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2",
                                    "SLURM_NNODES": "2", "SLURM_PROCID": "2",
                                    "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
                                    "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7"},
                                   "2", 2, (2, 4)),
    "torchrun, node 1": ({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "GROUP_RANK": "1",
                          "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x",
                          "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
                         "2", 2, (3, 4)),
    "Lightning's own launcher, child": ({"LOCAL_RANK": "1", "NODE_RANK": "0",
                                         "WORLD_SIZE": "2"}, "2", 1, (1, 2)),
    "single process": ({}, "1", 1, (0, 1)),
}


@pytest.mark.parametrize("name", list(LAUNCHERS))
def test_launch_rank_follows_each_launcher(name, monkeypatch):
    env, devices, nodes, want = LAUNCHERS[name]
    for k in CLEAN:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = TrainConfig(data=".", out=".", accelerator="cpu", devices=devices,
                      strategy="ddp" if devices != "1" else "auto", num_nodes=nodes)
    assert launch_rank(cfg) == want


@pytest.mark.parametrize("env", [
    {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"},  # mpirun, no mpi4py
    {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "4",
     "SLURM_JOB_NAME": "train"},  # srun -n 4 with --devices 1
])
def test_a_launched_nonzero_rank_is_never_run_as_rank_zero(env, monkeypatch):
    for k in CLEAN:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = TrainConfig(data=".", out=".", accelerator="cpu", devices="1")
    with pytest.raises(DermcamError, match="would run it as rank 0") as exc:
        launch_rank(cfg)
    assert "\n" not in str(exc.value)


def test_only_rank_zero_prepares_the_run_folder(tmp_path, monkeypatch):
    """Under srun, task 1 must not delete (--overwrite) or rewrite the run folder."""
    from helpers import easy_generic

    import dermcam.stages.train as tr

    data = easy_generic(tmp_path / "data", n=40)
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text('{"kind": "dermcam-run"}')
    (out / "models").mkdir()
    for k in CLEAN:
        monkeypatch.delenv(k, raising=False)
    for k, v in LAUNCHERS["srun, second task of node 0"][0].items():
        monkeypatch.setenv(k, v)
    calls = []
    monkeypatch.setattr(tr, "train_one", lambda *a, **k: calls.append(a[0]) or {})
    cfg = TrainConfig(data=str(data), out=str(out), models=["resnet18"], weights="none",
                      image_size=32, accelerator="cpu", devices="2", strategy="ddp",
                      num_nodes=2, progress=False, cache_dir=str(tmp_path / "cache"))
    assert tr.train(cfg, overwrite=True) == {}
    assert calls == ["resnet18"]  # it trained (its share) ...
    assert json.loads((out / "manifest.json").read_text()) == {"kind": "dermcam-run"}
    assert (out / "models").is_dir()  # ... and left rank 0's folder alone


# ------------------------------------------------------------------- precision


def test_unsupported_precisions_are_refused_in_one_line(tmp_path):
    from dermcam.stages.train import train

    for prec, msg in (("16-true", "overflow"), ("fp8", "--precision must be one of")):
        cfg = TrainConfig(data=str(tmp_path), out=str(tmp_path / "o"), precision=prec,
                          accelerator="cpu", progress=False)
        with pytest.raises(DermcamError, match=msg) as exc:
            launch_rank(cfg)
        assert "\n" not in str(exc.value)
        with pytest.raises(DermcamError):
            train(cfg)


def test_bf16_true_trains_and_saves_float32(tmp_path):
    """bf16 weights used to meet float32 images from augment.py and crash."""
    from helpers import easy_generic

    from dermcam.checkpoints import load_checkpoint
    from dermcam.stages.train import train

    data = easy_generic(tmp_path / "data", n=30)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), models=["resnet18"],
                      weights="none", image_size=32, max_epochs=1, batch_size=8, seed=1,
                      progress=False, cache_dir=str(tmp_path / "cache"), accelerator="cpu",
                      precision="bf16-true")
    m = train(cfg)
    rec = m["models"]["resnet18"]
    assert rec["precision"] == "bf16-true" and rec["optimizer_steps"] == -(-rec_n(m) // 8)
    model, _, _ = load_checkpoint(tmp_path / "run/models/resnet18/model.pt")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def rec_n(manifest) -> int:
    return manifest["stages"]["train"]["n_train"]


def test_precision_auto_is_bf16_mixed_only_where_bf16_is_native_and_faster(monkeypatch):
    import dermcam.device as dev

    caps = {"avx2": True, "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(caps))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # AVX-512 without its BF16 instructions: oneDNN would emulate bf16, slower than fp32
    assert dev.resolve_precision("auto", "cpu") == "32-true"
    assert dev.resolve_precision("auto", "auto", image_size=224) == "32-true"
    caps["avx512_bf16"] = True
    assert dev.resolve_precision("auto", "cpu", image_size=64) == "bf16-mixed"
    # depthwise nets: float32 below 128 px on the CPU (bf16 measured slower there)
    assert dev.resolve_precision("auto", "cpu", depthwise=True, image_size=64) == "32-true"
    assert dev.resolve_precision("auto", "cpu", depthwise=True, image_size=127) == "32-true"
    assert dev.resolve_precision("auto", "cpu", depthwise=True, image_size=128) == "bf16-mixed"
    caps["avx512_bf16"], caps["amx_bf16"] = False, True
    assert dev.resolve_precision("auto", "auto", depthwise=True, image_size=224) == "bf16-mixed"
    # an explicit choice is never changed
    assert dev.resolve_precision("32-true", "cpu") == "32-true"
    assert dev.resolve_precision("bf16-true", "cpu", depthwise=True, image_size=32) == "bf16-true"
    # a GPU decides by its own bf16 support, whatever the CPU has, at any size
    caps["amx_bf16"] = False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kw: False)
    assert dev.resolve_precision("auto", "gpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kw: True)
    assert dev.resolve_precision("auto", "gpu", depthwise=True, image_size=32) == "bf16-mixed"


def test_precision_auto_is_resolved_per_model_and_recorded(tmp_path, monkeypatch):
    """The config keeps 'auto'; each model's entry says what it trained in."""
    from helpers import easy_generic

    import dermcam.device as dev
    from dermcam.stages.train import train

    monkeypatch.setattr(dev, "native_bf16", lambda on_gpu: True)
    data = easy_generic(tmp_path / "data", n=30)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"),
                      models=["resnet18", "mobilenet_v2"], weights="none", image_size=32,
                      max_epochs=1, batch_size=8, seed=1, progress=False,
                      cache_dir=str(tmp_path / "cache"), accelerator="cpu")
    assert cfg.precision == "auto"  # the default
    m = train(cfg)
    assert m["config"]["precision"] == "auto"
    assert m["models"]["resnet18"]["precision"] == "bf16-mixed"
    assert m["models"]["mobilenet_v2"]["precision"] == "32-true"  # depthwise at 32 px


# --------------------------------------------------------------- weights integrity


def test_weights_file_checked_against_the_hash_in_its_name(tmp_path, monkeypatch):
    from dermcam.models import verify_weights_file

    monkeypatch.delenv("DERMCAM_TRUST_WEIGHTS", raising=False)
    body = b"torchvision weights stand-in"
    digest = hashlib.sha256(body).hexdigest()
    good = tmp_path / f"resnet18-{digest[:8]}.pth"
    good.write_bytes(body)
    verify_weights_file(good)  # matches: silent
    bad = tmp_path / f"resnet18-{digest[:8]}x.pth"  # no hex prefix match in the name
    bad.write_bytes(body)
    verify_weights_file(bad)  # no prefix to check
    damaged = tmp_path / f"resnet18-{digest[:8]}.pth"
    damaged.write_bytes(body[:-3])  # a truncated copy
    with pytest.raises(DermcamError, match=f"the name says {digest[:8]}") as exc:
        verify_weights_file(damaged)
    assert str(damaged) in str(exc.value) and "delete it" in str(exc.value)


# ------------------------------------------------------------------------ optimizer


def test_fused_adam_takes_the_same_steps_as_the_default(monkeypatch):
    from dermcam.stages.train import make_adam

    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 3), torch.nn.Linear(8, 3)
    b.load_state_dict(a.state_dict())
    fused = make_adam(a.parameters(), 1e-2, 1e-4)
    plain = torch.optim.Adam(b.parameters(), lr=1e-2, weight_decay=1e-4)
    assert fused.defaults["fused"] is True  # the CPU has the kernel
    x = torch.randn(16, 8)
    for _ in range(5):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # a device or dtype without the kernel falls back to the default implementation
    real = torch.optim.Adam

    def no_fused(params, **kw):
        if kw.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point")
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    opt = make_adam(a.parameters(), 1e-3, 0.0)
    assert not opt.defaults.get("fused")
