"""Training: the ``train`` stage, every model of a run in turn, and ``train_one``.

The reference study's recipe, plus: the best checkpoint restored before evaluation, class
imbalance handled, the threshold chosen on validation, everything seeded and recorded.
Lightning runs the loop, so the same command scales from a CPU to many GPUs."""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dermcam import run as runmod
from dermcam.checkpoints import save_checkpoint
from dermcam.config import TrainConfig
from dermcam.data import load_dataset
from dermcam.data.cache import ImageCache, warm_cache
from dermcam.data.cached_split import CachedSplit
from dermcam.data.splits import split_samples, stratified_split
from dermcam.decision import choose_threshold
from dermcam.device import shard_threads
from dermcam.errors import DermcamError
from dermcam.inference import use_channels_last
from dermcam.model_records import checkpoint_payload, model_card, model_record
from dermcam.models import build_model
from dermcam.objective import loss_class_weights, make_adam
from dermcam.samplers import (
    EpochSampler,
    RankBatches,
    RankPositions,
    dedupe_by_index,
    process_loaders,
    rank_slice,
)
from dermcam.trainer_setup import check_train_config, launch_rank, make_trainer

# Names other modules and the tests import from here, wherever they now live.
__all__ = ["IN_MEMORY_BYTES", "CachedSplit", "EpochSampler", "RankBatches",
           "RankPositions", "TrainConfig", "choose_threshold", "dedupe_by_index",
           "launch_rank", "make_adam", "make_module", "rank_slice",
           "stratified_split", "train", "train_one"]

log = logging.getLogger(__name__)

#: A training split whose decoded images take at most this many bytes is held in memory
#: (ISIC 2016: 135 MB at 224 px); a larger one is streamed from the decode cache.
IN_MEMORY_BYTES = 2 * 1024**3


def make_module(model, lr: float, weight_decay: float, class_weights: torch.Tensor | None,
                augment: bool, monitor: str, seed: int = 0, schedule: str = "plateau",
                colour_jitter: float = 0.2):
    """``model`` in a :class:`DermClassifier` (Lightning imported here, at first use)."""
    from dermcam.lightning_module import DermClassifier
    return DermClassifier(model, lr, weight_decay, class_weights, augment, monitor, seed,
                          schedule, colour_jitter)


def train(cfg: TrainConfig, overwrite: bool = False, resume: bool = False,
          progress=None) -> dict[str, Any]:
    """Train every model in ``cfg.models`` into the run folder ``cfg.out``."""
    check_train_config(cfg)
    out = Path(cfg.out)
    t0 = time.perf_counter()
    run = runmod.Run.open(out) if resume else None
    if resume:
        cfg = replace(run.config, progress=cfg.progress)
    # only rank 0 (as Lightning sees it) prepares the run folder; the others wait in fit's setup
    rank, _ = launch_rank(cfg)
    ds = load_dataset(cfg.data)
    train_samples = ds.split("train")
    if not train_samples:
        raise DermcamError("the data set has no training split", cfg.data)
    # a split that cannot be made is refused before any folder is created or image decoded
    tr_idx, va_idx = split_samples(train_samples, cfg.val_fraction, cfg.seed, path=cfg.data)
    if rank == 0 and not resume:
        runmod.prepare_run_dir(out, overwrite)
    elif rank == 0 and run.data.get("fingerprint") != ds.fingerprint():
        raise DermcamError("the data changed since this run started; start a new run", cfg.data)
    _share_cpu_threads(cfg)
    arrays = _training_images(cfg, train_samples, progress)
    if rank != 0:  # rank 0 owns the run folder: read, never written here
        run = run if resume else runmod.Run(out, {"models": {}})
    elif not resume:
        run = runmod.Run.start(out, cfg, ds, train_samples)
    else:
        run.set_stage("train", "running")
    _train_models(run, out, cfg, arrays, tr_idx, va_idx, rank, resume)
    if rank != 0:
        return {}
    run.set_stage("train", runmod.STATUS_COMPLETE, run_status="trained",
                  wall_time_s=round(time.perf_counter() - t0, 2),
                  n_train=int(len(tr_idx)), n_val=int(len(va_idx)))
    return run.manifest


def _share_cpu_threads(cfg: TrainConfig) -> None:
    n_dev = int(cfg.devices) if str(cfg.devices).isdigit() else 1
    on_cpu = cfg.accelerator == "cpu" or (cfg.accelerator == "auto"
                                          and not torch.cuda.is_available())
    torch.set_num_threads(shard_threads(n_dev if on_cpu else 1))


def _training_images(cfg: TrainConfig, train_samples, progress) -> CachedSplit:
    """The training split through the decode cache: in memory up to
    :data:`IN_MEMORY_BYTES`, else streamed (the cache warmed first)."""
    cache = ImageCache(cfg.cache_dir, resize=cfg.resize)
    arrays = CachedSplit(train_samples, cfg.image_size, cache)
    if arrays.image_bytes <= IN_MEMORY_BYTES:
        arrays.hold_in_memory(progress=progress)
    elif cache.enabled:
        warm_cache(train_samples, cfg.image_size, cache, progress=progress)
    return arrays


def _train_models(run: runmod.Run, out: Path, cfg: TrainConfig, arrays: CachedSplit,
                  tr_idx, va_idx, rank: int, resume: bool) -> None:
    """:func:`train_one` for each unfinished model (in ``out``: a resumed run may have
    moved); rank 0 records each, and a failure as the stage's (Ctrl-C leaves it 'running')."""
    try:
        for name in cfg.models:
            if run.model_complete(name):
                log.info("%s already trained; skipping", name)
                if rank == 0:
                    _drop_lightning_checkpoints(out, name, cfg)  # left by an interruption
                continue
            result = train_one(name, cfg, arrays, tr_idx, va_idx, out, resume=resume)
            if not result or rank != 0:  # non-zero rank in multi-process training
                continue
            run.record_model(name, result)
            _drop_lightning_checkpoints(out, name, cfg)
    except Exception as exc:  # recorded, so later stages say why; Ctrl-C stays 'running'
        if rank == 0:
            run.set_stage("train", "failed", error=str(exc).splitlines()[0][:300])
        raise


def _drop_lightning_checkpoints(run_dir: Path, name: str, cfg: TrainConfig) -> None:
    """Delete a finished model's ``lightning/`` folder unless ``keep_checkpoints``
    (weights and Adam's buffers, ~130 MB each for ResNet18; later stages read model.pt)."""
    ckdir = Path(run_dir) / runmod.MODELS_DIR / name / "lightning"
    if not cfg.keep_checkpoints and ckdir.is_dir():
        shutil.rmtree(ckdir)
        log.info("%s: removed %s (pass --keep-checkpoints to keep it)", name, ckdir)


def train_one(name: str, cfg: TrainConfig, arrays, tr_idx, va_idx, run_dir: Path,
              resume: bool = False) -> dict[str, Any]:
    """Train one architecture, restore its best checkpoint, choose the threshold, save;
    returns its manifest record (``{}`` on rank > 0)."""
    from dermcam.train_callbacks import model_callbacks  # imports Lightning
    t0 = time.perf_counter()
    mdir = run_dir / runmod.MODELS_DIR / name
    ckdir, ytr = mdir / "lightning", arrays.labels[tr_idx]
    module, info, lr = _build_module(name, cfg, ytr, len(tr_idx))
    train_ds, val_ds = arrays.dataset(tr_idx), arrays.dataset(va_idx)
    callbacks, best_cb, ctrl_c = model_callbacks(cfg, mdir, ckdir)
    trainer, precision = make_trainer(name, cfg, callbacks, mdir)
    if trainer.global_rank == 0:
        ckdir.mkdir(parents=True, exist_ok=True)
    train_dl, val_dl = process_loaders(cfg, trainer, ytr, train_ds, val_ds)
    # The guard stays on until model.pt is written, so a late Ctrl-C stops before the save.
    with ctrl_c:
        _fit(name, trainer, module, train_dl, val_dl, ctrl_c, ckdir / "last.ckpt", resume)
        if not trainer.is_global_zero:
            return {}
        model, best_epoch = _restore_best(name, module, best_cb, ckdir)
        decision = choose_threshold(model, val_ds, arrays.labels[va_idx], cfg.calibration)
        ctrl_c.check()
        wall = time.perf_counter() - t0
        best_score = float(best_cb.best_model_score or math.nan)
        card = model_card(info, cfg, len(tr_idx), len(va_idx), decision)
        save_checkpoint(mdir / runmod.MODEL_FILE, model, info,
                        checkpoint_payload(cfg, decision, best_epoch, best_score, card))
    return model_record(name, info, cfg, trainer, decision, best_epoch, best_score,
                        precision, lr, wall)


def _build_module(name: str, cfg: TrainConfig, ytr: np.ndarray, n_train: int):
    """``(module, info, lr)``: the seeded model ``name`` in its Lightning module."""
    from lightning.pytorch import seed_everything
    seed_everything(cfg.seed, workers=True, verbose=False)
    model, info = build_model(name, cfg.weights)
    if use_channels_last(name, cfg.channels_last):
        # oneDNN runs depthwise convolutions ~30 % faster in NHWC on CPU (benchmarks/).
        model = model.to(memory_format=torch.channels_last)
    weights = loss_class_weights(ytr) if cfg.imbalance == "weighted_loss" else None
    lr = cfg.lr_by_model.get(name, cfg.lr)
    module = make_module(model, lr, cfg.weight_decay, weights, cfg.augment, cfg.monitor,
                         cfg.seed, cfg.schedule, cfg.colour_jitter)
    module.global_batch, module.n_train = cfg.batch_size, n_train
    return module, info, lr


def _fit(name: str, trainer, module, train_dl, val_dl, ctrl_c, last: Path,
         resume: bool) -> None:
    """``trainer.fit``, from Lightning's last.ckpt when resuming; Ctrl-C, however
    Lightning reports it, becomes KeyboardInterrupt."""
    ckpt_path = str(last) if resume and last.exists() else None
    if ckpt_path:
        log.info("%s: resuming from %s", name, last)
    try:
        trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt_path)
    except SystemExit as exc:  # Lightning turns Ctrl-C into sys.exit(1) after its shutdown
        if trainer.interrupted:
            raise KeyboardInterrupt from exc
        raise
    if trainer.interrupted or ctrl_c.pending:  # pending: pressed after the last batch
        raise KeyboardInterrupt


def _restore_best(name: str, module, best_cb, ckdir: Path):
    """``(model, best epoch)``: the best checkpoint's weights, on the CPU in float32."""
    best_path = best_cb.best_model_path
    if not best_path or not Path(best_path).exists():
        raise DermcamError(f"{name}: training produced no checkpoint", ckdir)
    state = torch.load(best_path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    # float32 again after --precision bf16-true / 16-true: model.pt is always float32
    model = module.model.cpu().float().to(memory_format=torch.contiguous_format)
    return model, int(state.get("epoch", -1)) + 1
