"""Training: a Lightning module around a torchvision classifier, and the ``train`` entry.

What the reference study did (Adam, ReduceLROnPlateau, early stopping, stratified
validation split, flip/rotation/colour-jitter augmentation), plus what it lacked:
the best checkpoint (by validation AUC or loss) is restored before anything is
evaluated, class imbalance is handled (weighted loss or balanced sampler), the
decision threshold is chosen on validation (Youden's J) and recorded, everything
is seeded, and the run folder records config, versions, data fingerprint and
wall time. Lightning provides the loop, so ``--devices``/``--strategy``/
``--precision`` scale the same command from this CPU to many GPUs.

The checkpoint format lives in :mod:`dermcam.checkpoints`, running a model over images
in :mod:`dermcam.inference`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dermcam import run as runmod
from dermcam.checkpoints import save_checkpoint
from dermcam.config import TrainConfig
from dermcam.data import load_dataset
from dermcam.data.cache import ImageCache, warm_cache
from dermcam.data.cached_split import CachedSplit
from dermcam.data.dataset import class_counts
from dermcam.data.splits import stratified_split
from dermcam.errors import DermcamError
from dermcam.inference import depthwise_net, predict_logit_diff, use_channels_last

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- data

class EpochSampler(torch.utils.data.Sampler):
    """Shuffled (or class-balanced) order that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before each epoch, so a run resumed from a
    checkpoint sees exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, labels: np.ndarray, seed: int, balanced: bool = False):
        self.n = len(labels)
        self.seed = seed
        self.balanced = balanced
        self.epoch = 0
        counts = np.bincount(labels, minlength=2).astype(np.float64)
        self.weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.balanced:
            idx = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            idx = torch.randperm(self.n, generator=g)
        return iter(idx.tolist())


def rank_slice(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of an ``n``-row global batch that process ``rank`` of ``world`` takes.

    Contiguous, sizes differing by at most one (as ``np.array_split``); ``lo == hi`` when the
    batch has fewer rows than processes and this one gets none.
    """
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class RankBatches(torch.utils.data.Sampler):
    """One process's share of the single-device recipe's batches (a batch sampler).

    The global order is :class:`EpochSampler`'s; global batch ``k`` is
    ``order[k * batch_size:(k + 1) * batch_size]`` whatever the number of processes, and
    process ``rank`` takes :func:`rank_slice` of it. So ``--batch-size`` is the global batch
    and an epoch has the same optimizer steps on 1 or N devices. A process left without a
    row (a last batch smaller than the number of processes) gets the batch's first image
    again as index ``i + n``, which :class:`_Keep` marks with loss weight 0.
    """

    def __init__(self, order: EpochSampler, batch_size: int, rank: int = 0, world: int = 1):
        if batch_size < 1:
            raise DermcamError(f"--batch-size must be >= 1, got {batch_size}")
        self.order, self.batch_size, self.rank, self.world = order, batch_size, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(self.order.n / self.batch_size)

    def __iter__(self):
        idx = list(self.order)
        for start in range(0, len(idx), self.batch_size):
            chunk = idx[start:start + self.batch_size]
            lo, hi = rank_slice(len(chunk), self.world, self.rank)
            yield chunk[lo:hi] if hi > lo else [chunk[0] + self.order.n]


class RankPositions(torch.utils.data.Sampler):
    """Validation batches of one process: positions ``rank::world`` of the split, padded
    with repeats of the first images so that every process has as many (Lightning's
    DistributedSampler pads the same way); the gathered outputs are de-duplicated by index
    (:func:`dedupe_by_index`), so the metrics count each image once."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world

    def _mine(self) -> list[int]:
        total = math.ceil(self.n / self.world) * self.world
        return [i % self.n for i in range(self.rank, total, self.world)]

    def __len__(self) -> int:
        return math.ceil(len(self._mine()) / self.batch_size)

    def __iter__(self):
        mine = self._mine()
        for start in range(0, len(mine), self.batch_size):
            yield mine[start:start + self.batch_size]


class _Keep(torch.utils.data.Dataset):
    """``(image, label, keep)``: index ``i + n`` is item ``i`` again with ``keep = 0``."""

    def __init__(self, ds):
        self.ds, self.n = ds, len(ds)

    def __len__(self) -> int:
        return 2 * self.n

    def __getitem__(self, j):
        img, label = self.ds[j % self.n]
        return img, label, torch.tensor(1.0 if j < self.n else 0.0)


class _Indexed(torch.utils.data.Dataset):
    """``(image, label, index)``: the validation image's position in its split."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, j):
        img, label = self.ds[j]
        return img, label, j


def dedupe_by_index(index: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Keep the first row of each index, ordered by index: gathered validation outputs
    (``(N,)`` each) without the repeats that pad processes to equal length."""
    if index.ndim != 1 or any(v.shape[:1] != index.shape for v in values):
        raise ValueError(f"expected (N,) index and values, got {tuple(index.shape)} and "
                         f"{[tuple(v.shape) for v in values]}")
    idx = index.cpu().numpy()
    _, first = np.unique(idx, return_index=True)  # sorted by index
    keep = torch.as_tensor(first, device=index.device)
    return tuple(v[keep.to(v.device)] for v in values)


def _as_param_dtype(x: torch.Tensor, model) -> torch.Tensor:
    """Cast input to the weights' dtype under --precision bf16-true / 16-true."""
    p = next(model.parameters(), None)
    return x if p is None or p.dtype == x.dtype else x.to(p.dtype)


def _global_mean_loss(module, logits, labels, keep) -> torch.Tensor:
    """The single-device loss whatever the number of processes.

    One process: weighted cross-entropy, ``sum(w l) / sum(w)`` over the batch. Under DDP
    each process returns ``world * sum_local(w l) / sum_global(w)``; DDP averages gradients
    over processes, which then equals the one-device gradient of the whole global batch
    (padded repeats have ``w = 0``). Per-process means would weight a process's images by
    its share of the batch and the class weights by the local class mix.
    """
    cw = module.class_weights
    world = module.trainer.world_size if module._trainer is not None else 1
    if world == 1 and keep is None:
        return F.cross_entropy(logits, labels, weight=cw)
    w = cw[labels] if cw is not None else torch.ones_like(logits[:, 0])
    if keep is not None:
        w = w * keep.to(w.dtype)
    per = F.cross_entropy(logits, labels, reduction="none")
    total = w.sum().detach().clone()
    if world > 1:
        total = module.trainer.strategy.reduce(total, reduce_op="sum")
    return (w * per).sum() * world / total


#: Training holds a split's decoded images in memory when they take at most this many
#: bytes (ISIC 2016's 900 training images: 11 MB at 64 px, 135 MB at 224 px); a larger
#: split is streamed from the decode cache, one file per item and epoch. At 64 px the
#: streamed reads took about 8 s of a 50 s ResNet18 training (benchmarks/README.md).
IN_MEMORY_BYTES = 2 * 1024**3


# ------------------------------------------------------------------- lightning

def make_adam(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam with torch's fused kernel where the parameters' device and dtype have one.

    On the CPU torch otherwise runs Adam as a Python loop over tensors: measured 48.7 ms
    per step for ResNet18 against 8.0 ms fused (EfficientNet-B0 14.2 vs 3.9, MobileNet-V2
    8.1 vs 2.5; about 20 % of a 64 px ResNet18 training step). The same update, computed
    in another order (last digits differ).
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError) as exc:  # a device or dtype without the kernel
        log.debug("fused Adam unavailable (%s); using the default implementation", exc)
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _lightning():
    import lightning.pytorch as pl

    return pl


SCHEDULES = ("plateau", "onecycle")


def make_module(model, lr: float, weight_decay: float, class_weights: torch.Tensor | None,
                augment: bool, monitor: str, seed: int = 0, schedule: str = "plateau",
                colour_jitter: float = 0.2):
    pl = _lightning()
    from dermcam.augment import augment as augment_fn
    from dermcam.augment import normalize, to_float

    class DermClassifier(pl.LightningModule):
        """Binary dermoscopy classifier; the batch is uint8 NHWC images and labels."""

        def __init__(self):
            super().__init__()
            self.model = model
            self.lr = lr
            self.weight_decay = weight_decay
            self.do_augment = augment
            self.colour_jitter = colour_jitter
            self.monitor = monitor
            self.seed = seed
            if class_weights is not None:
                self.register_buffer("class_weights", class_weights.float())
            else:
                self.class_weights = None
            self._val_probs: list[torch.Tensor] = []
            self._val_labels: list[torch.Tensor] = []
            self._val_loss: list[torch.Tensor] = []
            self._val_index: list[torch.Tensor] = []
            # set by train_one: the global batch (single-device recipe) and training set size
            self.global_batch: int | None = None
            self.n_train: int | None = None

        def forward(self, x):
            return self.model(x)

        def _rows(self, batch_idx: int, n_local: int) -> tuple[int, int]:
            """``(rows of the global batch, this process's first row)``."""
            world = self.trainer.world_size if self._trainer is not None else 1
            if self.global_batch is None or self.n_train is None or world == 1:
                return n_local, 0
            n_global = min(self.global_batch, self.n_train - batch_idx * self.global_batch)
            lo, hi = rank_slice(n_global, world, self.global_rank)
            return (n_global, lo) if hi > lo else (max(n_global, n_local), 0)

        def training_step(self, batch, batch_idx):
            images, labels, *rest = batch  # rest: (keep,) weights, 0 for a padded repeat
            # Augmentation draws from a stream fixed by (seed, epoch, batch): a resumed run
            # repeats an uninterrupted run's randomness, and under DDP each process takes its
            # own rows of the global batch's draws, so every image is augmented as it would
            # be on one device. Dropout then draws per process.
            base = self.seed * 1_000_003 + self.current_epoch * 10_007 + batch_idx * 101
            torch.manual_seed(base)
            x = to_float(images)
            if self.do_augment:
                n_global, lo = self._rows(batch_idx, len(labels))
                x = augment_fn(x, jitter=self.colour_jitter,
                               draws=torch.rand(n_global, 6)[lo:lo + len(labels)])
            if self.global_rank:
                torch.manual_seed(base + self.global_rank)
            logits = self.model(_as_param_dtype(normalize(x), self.model))
            loss = _global_mean_loss(self, logits.float(), labels, rest[0] if rest else None)
            if not torch.isfinite(loss):
                raise DermcamError(
                    f"training diverged: loss is {loss.item()} at epoch {self.current_epoch}, "
                    f"batch {batch_idx}; lower --lr or check the input images")
            self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                     batch_size=len(labels), sync_dist=True)
            return loss

        def validation_step(self, batch, batch_idx):
            images, labels, *rest = batch  # rest: (index,) of each image in the split
            logits = self.model(_as_param_dtype(normalize(to_float(images)),
                                                self.model)).float()
            loss = F.cross_entropy(logits, labels, reduction="none")
            self._val_probs.append(torch.softmax(logits, 1)[:, 1].detach())
            self._val_labels.append(labels.detach())
            self._val_loss.append(loss.detach())
            if rest:
                self._val_index.append(rest[0].detach())

        def on_validation_epoch_end(self):
            from sklearn.metrics import average_precision_score, roc_auc_score

            if not self._val_probs:
                return
            probs = torch.cat(self._val_probs)
            labels = torch.cat(self._val_labels)
            losses = torch.cat(self._val_loss)
            index = torch.cat(self._val_index) if self._val_index else None
            self._val_probs.clear()
            self._val_labels.clear()
            self._val_loss.clear()
            self._val_index.clear()
            if self.trainer.world_size > 1:
                probs = self.all_gather(probs).reshape(-1)
                labels = self.all_gather(labels).reshape(-1)
                losses = self.all_gather(losses).reshape(-1)
                if index is not None:  # the sampler pads ranks to equal length: repeats
                    index = self.all_gather(index).reshape(-1)
            if index is not None:
                probs, labels, losses = dedupe_by_index(index, probs, labels, losses)
            y = labels.cpu().numpy()
            p = probs.cpu().numpy()
            self.log("val_n", float(len(y)), sync_dist=False)
            auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
            ap = float(average_precision_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
            self.log("val_loss", losses.mean(), prog_bar=True, sync_dist=False)
            self.log("val_auc", auc, prog_bar=True, sync_dist=False)
            self.log("val_ap", ap, sync_dist=False)

        def configure_optimizers(self):
            opt = make_adam(self.model.parameters(), self.lr, self.weight_decay)
            if schedule == "onecycle":
                # Warm-up to lr over the first 30 % of steps, then cosine annealing: a
                # short run ends at a low learning rate instead of on a noisy plateau.
                total = int(self.trainer.estimated_stepping_batches)
                sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr,
                                                            total_steps=max(1, total),
                                                            pct_start=0.3)
                return {"optimizer": opt,
                        "lr_scheduler": {"scheduler": sched, "interval": "step"}}
            mode = "max" if self.monitor == "val_auc" else "min"
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5,
                                                               patience=2)
            return {"optimizer": opt,
                    "lr_scheduler": {"scheduler": sched, "monitor": self.monitor}}

    return DermClassifier()


def make_ctrl_c_guard():
    """A callback and context manager: Ctrl-C during ``fit`` stops at a batch boundary.

    Raised where the signal lands, a KeyboardInterrupt can be lost: CPython discards an
    exception raised while it evaluates a file's ``closed`` property in a finalizer, which
    is where Ctrl-C often lands while Lightning saves a checkpoint (fsspec's file object),
    and training then carries on as if nothing was pressed. Inside ``with guard:`` the
    SIGINT handler only records the signal; the callback raises KeyboardInterrupt after
    the current training or validation batch, so Lightning's own interrupt handling runs
    and every checkpoint written so far is whole. A second Ctrl-C raises at once. The
    handler is installed only in the main thread and only over Python's default one.
    """
    import signal
    import threading

    pl = _lightning()

    class CtrlCAtBatchBoundary(pl.Callback):
        def __init__(self):
            self.pending = False
            self._previous = None

        def __enter__(self):
            if (threading.current_thread() is threading.main_thread()
                    and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
                self._previous = signal.signal(signal.SIGINT, self._record)
            return self

        def __exit__(self, *exc) -> None:
            if self._previous is not None:
                signal.signal(signal.SIGINT, self._previous)
                self._previous = None

        def _record(self, signum, frame) -> None:
            if self.pending:
                raise KeyboardInterrupt
            self.pending = True

        def check(self, *args, **kwargs) -> None:
            if self.pending:
                raise KeyboardInterrupt

        on_train_batch_end = on_validation_batch_end = on_train_epoch_start = check

    return CtrlCAtBatchBoundary()


def make_history_callback(path: Path):
    pl = _lightning()
    import pandas as pd

    from dermcam.io import write_csv

    class HistoryWriter(pl.Callback):
        """Writes ``history.csv`` (one row per epoch) atomically after each validation."""

        def __init__(self):
            self.rows: list[dict[str, Any]] = []
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            if trainer.sanity_checking or not trainer.is_global_zero:
                return
            m = trainer.callback_metrics
            row = {"epoch": trainer.current_epoch + 1}
            for k in ("train_loss", "val_loss", "val_auc", "val_ap", "val_n"):
                v = m.get(k)
                row[k] = float(v) if v is not None else float("nan")
            row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
            row["elapsed_s"] = round(time.perf_counter() - self.t0, 3)
            self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
            write_csv(path, pd.DataFrame(self.rows))

        def state_dict(self):
            return {"rows": self.rows}

        def load_state_dict(self, state):
            self.rows = list(state.get("rows", []))

    return HistoryWriter()


# ------------------------------------------------------------------------ train

def _seed(seed: int) -> None:
    pl = _lightning()
    pl.seed_everything(seed, workers=True, verbose=False)


def _class_weights(labels: np.ndarray) -> torch.Tensor:
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return torch.tensor(len(labels) / (2.0 * counts), dtype=torch.float32)


def train_one(name: str, cfg: TrainConfig, arrays, tr_idx, va_idx, run_dir: Path,
              resume: bool = False) -> dict[str, Any]:
    """Train one architecture, restore its best checkpoint, choose the threshold, save.

    Returns the model's manifest record (``{}`` on a process of rank > 0)."""
    t0 = time.perf_counter()
    mdir = run_dir / runmod.MODELS_DIR / name
    ckdir = mdir / "lightning"
    ytr = arrays.labels[tr_idx]
    module, info, lr = _build_module(name, cfg, ytr, len(tr_idx))
    train_ds, val_ds = arrays.dataset(tr_idx), arrays.dataset(va_idx)
    callbacks, best_cb, ctrl_c = _callbacks(cfg, mdir, ckdir)
    trainer, precision = _trainer(name, cfg, callbacks, mdir)
    if trainer.global_rank == 0:
        ckdir.mkdir(parents=True, exist_ok=True)
    train_dl, val_dl = _loaders(cfg, trainer, ytr, train_ds, val_ds)
    # The guard stays on until model.pt is written: a Ctrl-C after the last batch (while
    # the best checkpoint is restored and the threshold chosen) stops before the save
    # instead of landing, possibly lost, in code that has no batch boundary.
    with ctrl_c:
        _fit(name, trainer, module, train_dl, val_dl, ctrl_c, ckdir / "last.ckpt", resume)
        if not trainer.is_global_zero:
            return {}
        model, best_epoch = _restore_best(name, module, best_cb, ckdir)
        decision = _choose_threshold(model, val_ds, arrays.labels[va_idx], cfg.calibration)
        ctrl_c.check()
        wall = time.perf_counter() - t0
        best_score = float(best_cb.best_model_score or math.nan)
        card = _model_card(info, cfg, len(tr_idx), len(va_idx), decision)
        save_checkpoint(mdir / runmod.MODEL_FILE, model, info, {
            "image_size": cfg.image_size, "threshold": decision.threshold,
            "best_epoch": best_epoch, "monitor": cfg.monitor, "best_score": best_score,
            "temperature": decision.temperature, "calibration_bias": decision.bias,
            "calibration": decision.calibration, "model_card": card})
    return _model_record(name, info, cfg, trainer, decision, best_epoch, best_score,
                         precision, lr, wall)


def _build_module(name: str, cfg: TrainConfig, ytr: np.ndarray, n_train: int):
    """``(module, info, lr)``: the seeded model ``name`` in its Lightning module."""
    from dermcam.models import build_model

    _seed(cfg.seed)
    model, info = build_model(name, cfg.weights)
    if use_channels_last(name, cfg.channels_last):
        # oneDNN runs depthwise convolutions ~30 % faster in NHWC on CPU (benchmarks/).
        model = model.to(memory_format=torch.channels_last)
    weights = _class_weights(ytr) if cfg.imbalance == "weighted_loss" else None
    lr = cfg.lr_by_model.get(name, cfg.lr)
    module = make_module(model, lr, cfg.weight_decay, weights, cfg.augment, cfg.monitor,
                         cfg.seed, cfg.schedule, cfg.colour_jitter)
    module.global_batch, module.n_train = cfg.batch_size, n_train
    return module, info, lr


def _model_progress_bar(name: str):
    """Lightning's rich progress bar, naming the model and counting epochs from 1."""
    from lightning.pytorch.callbacks import RichProgressBar

    class ModelProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            return f"{name} epoch {current_epoch + 1}/{self.trainer.max_epochs}"

    return ModelProgressBar(leave=True)


def _callbacks(cfg: TrainConfig, mdir: Path, ckdir: Path):
    """``(callbacks, best checkpoint callback, Ctrl-C guard)`` of one model's Trainer."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    mode = "max" if cfg.monitor == "val_auc" else "min"
    # weights only: a resume restores the optimizer from last.ckpt, and the best epoch
    # is restored from here for its weights alone
    best_cb = ModelCheckpoint(dirpath=ckdir, filename="best", monitor=cfg.monitor, mode=mode,
                              save_top_k=1, save_weights_only=True,
                              enable_version_counter=False)
    callbacks = [best_cb]
    if cfg.resumable:
        # Lightning's save_last only follows improvements; resuming needs every epoch's.
        callbacks.append(ModelCheckpoint(dirpath=ckdir, filename="last", monitor=None,
                                         save_top_k=1, every_n_epochs=1,
                                         enable_version_counter=False))
    ctrl_c = make_ctrl_c_guard()
    callbacks += [EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.patience),
                  make_history_callback(mdir / runmod.HISTORY_FILE), ctrl_c]
    if cfg.progress:
        callbacks.append(_model_progress_bar(mdir.name))
    callbacks.append(_run_folder_barrier())
    return callbacks, best_cb, ctrl_c


def _trainer(name: str, cfg: TrainConfig, callbacks: list, mdir: Path):
    """``(Trainer, precision)`` for model ``name`` (its precision: :func:`model_precision`)."""
    pl = _lightning()
    precision = model_precision(cfg, name)
    if precision != cfg.precision:
        log.info("%s: --precision %s trains in %s here", name, cfg.precision, precision)
    trainer = pl.Trainer(
        max_epochs=cfg.max_epochs, callbacks=callbacks,
        logger=False, enable_progress_bar=cfg.progress, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=str(mdir),
        limit_train_batches=cfg.limit_train_batches, log_every_n_steps=1,
        **_trainer_kwargs(cfg, precision))
    return trainer, precision


def _loaders(cfg: TrainConfig, trainer, ytr: np.ndarray, train_ds, val_ds):
    """``(train, validation)`` DataLoaders of this process's share of each batch."""
    from dermcam.device import default_num_workers

    rank, world = trainer.global_rank, trainer.world_size
    on_gpu = trainer.strategy.root_device.type == "cuda"
    workers = (cfg.num_workers if cfg.num_workers is not None
               else default_num_workers(on_gpu, trainer.num_devices))
    loader_kw = {"num_workers": workers, "pin_memory": on_gpu,
                 "persistent_workers": workers > 0}
    # --batch-size is the global batch: each of the world's processes takes its share of
    # the single-device batches (RankBatches), so N devices run the 1-device recipe.
    order = EpochSampler(ytr, cfg.seed, balanced=cfg.imbalance == "balanced_sampler")
    train_dl = torch.utils.data.DataLoader(
        _Keep(train_ds), batch_sampler=RankBatches(order, cfg.batch_size, rank, world),
        **loader_kw)
    val_dl = torch.utils.data.DataLoader(
        _Indexed(val_ds), batch_sampler=RankPositions(len(val_ds), max(cfg.batch_size, 64),
                                                      rank, world), **loader_kw)
    return train_dl, val_dl


def _fit(name: str, trainer, module, train_dl, val_dl, ctrl_c, last: Path,
         resume: bool) -> None:
    """``trainer.fit``, from ``last`` (Lightning's last.ckpt) where resuming and it exists,
    inside the ``ctrl_c`` guard the caller entered; Ctrl-C, however Lightning reports it,
    becomes KeyboardInterrupt."""
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


@dataclass
class _Decision:
    """What validation decides for a trained model: calibration and threshold."""
    temperature: float
    bias: float
    calibration: dict[str, Any]
    threshold: float
    val_auc: float


def _choose_threshold(model, val_ds, yva: np.ndarray, method: str) -> _Decision:
    """Calibrate ``model`` on validation (set on it), then Youden's threshold and the AUC on
    the calibrated validation probabilities."""
    from sklearn.metrics import roc_auc_score

    from dermcam.calibration import apply_temperature, set_temperature
    from dermcam.evaluation import youden_threshold

    val_logit = predict_logit_diff(model, val_ds)
    temperature, bias, calibration = _calibrate(val_logit, yva, method)
    set_temperature(model, temperature, bias)
    val_prob = apply_temperature(val_logit, temperature, bias)
    threshold = float(youden_threshold(yva, val_prob))  # on the calibrated probabilities
    return _Decision(temperature, bias, calibration, threshold,
                     float(roc_auc_score(yva, val_prob)))


def _model_card(info, cfg: TrainConfig, n_train: int, n_val: int,
                decision: _Decision) -> dict[str, Any]:
    """The model card stored in model.pt ('dermcam predict' prints it)."""
    return {
        "architecture": info.display_name, "weights_source": info.weights_source,
        "trained_on": str(Path(cfg.data).resolve()), "image_size": cfg.image_size,
        "n_train": int(n_train), "n_val": int(n_val),
        "val_auc": decision.val_auc, "threshold": decision.threshold,
        "threshold_rule": "Youden J on validation",
        "temperature": decision.temperature, "calibration_bias": decision.bias,
        "calibration": decision.calibration["method"],
        "intended_use": "research on dermoscopy classification and attention auditing; "
                        "not validated for clinical use",
    }


def _model_record(name: str, info, cfg: TrainConfig, trainer, decision: _Decision,
                  best_epoch: int, best_score: float, precision: str, lr: float,
                  wall: float) -> dict[str, Any]:
    """The model's entry in the manifest's ``models`` (status added by :func:`train`)."""
    world = trainer.world_size
    return {"display_name": info.display_name, "weights_source": info.weights_source,
            "target_layer": info.target_layer, "best_epoch": best_epoch,
            "epochs_run": int(trainer.current_epoch), "monitor": cfg.monitor,
            "best_score": best_score,
            "val_auc": decision.val_auc, "threshold": decision.threshold,
            "temperature": decision.temperature, "calibration_bias": decision.bias,
            "global_batch_size": cfg.batch_size, "world_size": world,
            "per_process_batch_size": math.ceil(cfg.batch_size / world),
            "optimizer_steps": int(trainer.global_step), "precision": precision, "lr": lr,
            "calibration": decision.calibration, "wall_time_s": round(wall, 2),
            "checkpoint": f"{runmod.MODELS_DIR}/{name}/{runmod.MODEL_FILE}"}


def _calibrate(val_logit: np.ndarray, yva: np.ndarray, method: str
               ) -> tuple[float, float, dict[str, Any]]:
    """``(T, b, record)``: the calibration fitted on validation (``(1, 0)`` with ``"none"``)
    and NLL, ECE and Brier on validation before and after it (plain floats, for the
    checkpoint)."""
    from dermcam import calibration as cal

    t, b = cal.fit_calibration(val_logit, yva, method)
    record: dict[str, Any] = {
        "method": method, "fitted_on": "validation", "n": int(len(yva)),
        "temperature": t, "bias": b,
        "before": cal.calibration_scores(yva, cal.apply_temperature(val_logit, 1.0)),
        "after": cal.calibration_scores(yva, cal.apply_temperature(val_logit, t, b))}
    lo, hi = cal.T_BOUNDS
    if method != "none" and not lo * 1.01 < t < hi / 1.01:
        record["note"] = (f"T = {t:.3g} is at the edge of the search interval {cal.T_BOUNDS}: the "
                          "validation NLL has no interior minimum (perfectly separated, or "
                          "no signal on validation"
                          + (", or an offset only a bias can fit: try --calibration platt)"
                             if method == "temperature" else ")"))
        log.warning("%s scaling: %s", method, record["note"])
    return t, b, record


def train(cfg: TrainConfig, overwrite: bool = False, resume: bool = False,
          progress=None) -> dict[str, Any]:
    """Train every model in ``cfg.models`` into the run folder ``cfg.out``."""
    from dermcam.models import check_model_name

    for m in cfg.models:
        check_model_name(m)
    unknown = sorted(set(cfg.lr_by_model) - set(cfg.models))
    if unknown:
        raise DermcamError(f"--lr names model(s) {', '.join(unknown)} that are not among "
                           f"--models ({', '.join(cfg.models)})")
    if cfg.monitor not in ("val_auc", "val_loss"):
        raise DermcamError(f"--monitor must be val_auc or val_loss, not {cfg.monitor!r}")
    if cfg.schedule not in SCHEDULES:
        raise DermcamError(f"--schedule must be one of {', '.join(SCHEDULES)}, not "
                           f"{cfg.schedule!r}")
    from dermcam.calibration import CALIBRATIONS

    if cfg.calibration not in CALIBRATIONS:
        raise DermcamError(f"--calibration must be one of {', '.join(CALIBRATIONS)}, not "
                           f"{cfg.calibration!r}")
    if not 0.0 <= cfg.colour_jitter < 1.0:
        raise DermcamError(f"--colour-jitter must be at least 0 and below 1, not "
                           f"{cfg.colour_jitter!r}")
    if cfg.imbalance not in ("weighted_loss", "balanced_sampler", "none"):
        raise DermcamError(f"--imbalance must be weighted_loss, balanced_sampler or none, "
                           f"not {cfg.imbalance!r}")
    out = Path(cfg.out)
    t0 = time.perf_counter()
    if resume:
        run = runmod.Run.open(out)
        cfg = replace(run.config, progress=cfg.progress)
    # The rank as Lightning's Trainer sees it (SLURM, torchrun, MPI, its own launcher):
    # only rank 0 prepares the run folder; the others wait for it in fit's setup (barrier).
    rank, _ = launch_rank(cfg)
    ds = load_dataset(cfg.data)
    train_samples = ds.split("train")
    test_samples = ds.split("test")
    if not train_samples:
        raise DermcamError("the data set has no training split", cfg.data)
    # Refuse a split that cannot be made before any folder is created or image decoded.
    labels = np.array([s.label for s in train_samples], dtype=np.int64)
    tr_idx, va_idx = stratified_split(labels, cfg.val_fraction, cfg.seed,
                                      groups=[s.group for s in train_samples], path=cfg.data)
    if rank == 0 and not resume:
        runmod.prepare_run_dir(out, overwrite)
    elif rank == 0 and run.data.get("fingerprint") != ds.fingerprint():
        raise DermcamError("the data changed since this run started; start a new run", cfg.data)
    n_dev = int(cfg.devices) if str(cfg.devices).isdigit() else 1
    on_cpu = cfg.accelerator == "cpu" or (cfg.accelerator == "auto"
                                          and not torch.cuda.is_available())
    # Several CPU processes each running all cores' threads thrash; share the cores.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // (n_dev if on_cpu else 1)))
    cache = ImageCache(cfg.cache_dir)
    arrays = CachedSplit(train_samples, cfg.image_size, cache)
    # A bad image stops here, before the run's manifest exists.
    if arrays.image_bytes <= IN_MEMORY_BYTES:
        arrays.hold_in_memory(progress=progress)
    elif cache.enabled:
        warm_cache(train_samples, cfg.image_size, cache, progress=progress)
    if rank != 0:
        # A process started by Lightning's DDP launcher: rank 0 owns the run folder.
        run = run if resume else runmod.Run(out, {"models": {}})  # read, never written
    elif not resume:
        run = runmod.Run.create(out, {
            "kind": "dermcam-run", "created": runmod.now(), "status": "training",
            "config": asdict(cfg), "seed": cfg.seed, "versions": runmod.versions(),
            "data": {"root": str(Path(cfg.data).resolve()), "name": ds.name,
                     "layout": ds.layout, "fingerprint": ds.fingerprint(),
                     "has_masks": ds.has_masks, "notes": ds.notes,
                     "counts": {"train": _counts(train_samples), "test": _counts(test_samples)}},
            "models": {}, "stages": {"train": {"status": "running", "at": runmod.now()}},
        })
    else:
        run.set_stage("train", "running")
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
            # Only now: until the manifest says complete, a resume needs last.ckpt.
            _drop_lightning_checkpoints(out, name, cfg)
    except Exception as exc:  # recorded, so later stages say why; Ctrl-C stays 'running'
        if rank == 0:
            run.set_stage("train", "failed", error=str(exc).splitlines()[0][:300])
        raise
    if rank != 0:
        return {}
    run.set_stage("train", runmod.STATUS_COMPLETE, run_status="trained",
                  wall_time_s=round(time.perf_counter() - t0, 2),
                  n_train=int(len(tr_idx)), n_val=int(len(va_idx)))
    return run.manifest


def _drop_lightning_checkpoints(run_dir: Path, name: str, cfg: TrainConfig) -> None:
    """Delete ``models/<name>/lightning/`` of a finished model unless ``keep_checkpoints``.

    Each of its two files holds the weights and Adam's two moment buffers (ResNet18:
    about 130 MB each, whatever the input size); ``model.pt`` is all later stages read.
    With ``--resume`` the run's saved setting applies, like every other option.
    """
    import shutil

    ckdir = Path(run_dir) / runmod.MODELS_DIR / name / "lightning"
    if not cfg.keep_checkpoints and ckdir.is_dir():
        shutil.rmtree(ckdir)
        log.info("%s: removed %s (pass --keep-checkpoints to keep it)", name, ckdir)


PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")  # and "auto"
# Rank variables of launchers; a process that one of them numbers > 0 must not be rank 0.
LAUNCHER_RANKS = ("SLURM_PROCID", "RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


def model_precision(cfg: TrainConfig, name: str) -> str:
    """The precision model ``name`` trains in under ``cfg`` (``auto`` resolved here)."""
    from dermcam.device import resolve_precision

    return resolve_precision(cfg.precision, cfg.accelerator,
                             depthwise=depthwise_net(name),
                             image_size=cfg.image_size)


def _trainer_kwargs(cfg: TrainConfig, precision: str | None = None) -> dict[str, Any]:
    """The Trainer arguments that decide devices, processes, precision and determinism.

    ``precision``: the model's (:func:`model_precision`); default ``cfg.precision`` with
    ``auto`` resolved for a model without depthwise convolutions."""
    if precision is None:
        from dermcam.device import resolve_precision

        precision = resolve_precision(cfg.precision, cfg.accelerator)
    cfg = replace(cfg, precision=precision)
    if cfg.precision == "16-true":  # measured: NaN loss in the first epochs on this CPU
        raise DermcamError("--precision 16-true is not supported: float16 weights under Adam "
                           "overflow (its eps 1e-8 is 0 in float16); use 16-mixed, bf16-mixed "
                           "or bf16-true")
    if cfg.precision not in PRECISIONS:
        raise DermcamError(f"--precision must be one of {', '.join(('auto',) + PRECISIONS)}, not "
                           f"{cfg.precision!r}")
    devices: Any = int(cfg.devices) if str(cfg.devices).isdigit() else cfg.devices
    from dermcam.device import accelerator_is_gpu

    on_gpu = accelerator_is_gpu(cfg.accelerator)
    several = cfg.num_nodes > 1 or devices not in (1, "1")
    return {"accelerator": cfg.accelerator, "devices": devices, "strategy": cfg.strategy,
            "num_nodes": cfg.num_nodes, "precision": cfg.precision,
            # the samplers split the single-device batches themselves (RankBatches)
            "use_distributed_sampler": False,
            # BatchNorm statistics over the global batch, as on one device (CUDA only:
            # torch's SyncBatchNorm refuses CPU tensors, so CPU DDP normalises per process)
            "sync_batchnorm": on_gpu and several,
            "deterministic": "warn" if cfg.deterministic else False,
            # every input has the same size: let cuDNN pick its fastest kernels, unless
            # --deterministic asks for repeatable ones
            "benchmark": not cfg.deterministic}


def launch_rank(cfg: TrainConfig) -> tuple[int, int]:
    """``(global rank, world size)`` of this process, as Lightning's Trainer detects them.

    The Trainer knows its cluster environment (SLURM's ``srun``, torchrun, MPI with mpi4py,
    LSF, its own subprocess launcher) as soon as it is built. A process that a launcher
    numbered above 0 but that the Trainer would run as rank 0 (``srun -n 4`` with
    ``--devices 1``, ``mpirun`` without mpi4py) is refused, in one line, before it can touch
    the run folder.
    """
    pl = _lightning()
    try:
        trainer = pl.Trainer(logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             **_trainer_kwargs(cfg))
    except DermcamError:
        raise
    except Exception as exc:  # Lightning's MisconfigurationException, ValueError, ...
        raise DermcamError("--accelerator/--devices/--strategy/--num-nodes/--precision: "
                           + str(exc).strip().splitlines()[0][:300]) from None
    rank, world = int(trainer.global_rank), int(trainer.world_size)
    if rank == 0:
        for var in LAUNCHER_RANKS:
            v = os.environ.get(var, "")
            if v.isdigit() and int(v) > 0:
                env = type(getattr(trainer.strategy, "cluster_environment", None)).__name__
                raise DermcamError(
                    f"this process is rank {v} of its launcher ({var}) but Lightning would run "
                    f"it as rank 0 of {world} ({env}): set --devices and --num-nodes to the "
                    "launched processes per node and nodes (with --strategy ddp), or for MPI "
                    "install mpi4py")
    return rank, world


def _run_folder_barrier():
    """Callback: every process waits in fit's setup until rank 0 has prepared the run
    folder (rank 0 does so before fit; the process group exists from setup on)."""
    pl = _lightning()

    class RunFolderBarrier(pl.Callback):
        def setup(self, trainer, pl_module, stage):
            trainer.strategy.barrier("dermcam-run-folder")

    return RunFolderBarrier()


def _counts(samples) -> dict[str, int]:
    return class_counts(samples)
