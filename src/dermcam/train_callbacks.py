"""The Lightning callbacks of one model's training and :func:`model_callbacks`; imports
Lightning at module level, so the train stage imports it when it first trains."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
from lightning.pytorch.callbacks import (
    EarlyStopping,
    ModelCheckpoint,
    RichProgressBar,
)

from dermcam import run as runmod
from dermcam.config import TrainConfig
from dermcam.io import write_csv
from dermcam.objective import monitor_mode

__all__ = ["CtrlCAtBatchBoundary", "HistoryWriter", "ModelProgressBar", "RunFolderBarrier",
           "model_callbacks"]


class CtrlCAtBatchBoundary(pl.Callback):
    """A callback and context manager: Ctrl-C during ``fit`` stops at a batch boundary.

    Raised where it lands (often a finalizer while Lightning saves a checkpoint), a
    KeyboardInterrupt can be silently discarded by CPython. Inside ``with guard:`` SIGINT is
    only recorded and raised after the current batch; a second Ctrl-C raises at once. Installed
    only in the main thread, over Python's default handler."""

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


class HistoryWriter(pl.Callback):
    """Writes ``history.csv`` (one row per epoch) atomically after each validation."""

    #: Its rows' key in last.ckpt (Lightning's ``state_key`` property, overridden): its old
    #: name, so resuming an older run keeps its history.
    state_key = "make_history_callback.<locals>.HistoryWriter"

    def __init__(self, path: Path):
        self.path = path
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
        write_csv(self.path, pd.DataFrame(self.rows))

    def state_dict(self):
        return {"rows": self.rows}

    def load_state_dict(self, state):
        self.rows = list(state.get("rows", []))


class RunFolderBarrier(pl.Callback):
    """Every process waits in fit's setup until rank 0 has prepared the run folder."""

    def setup(self, trainer, pl_module, stage):
        trainer.strategy.barrier("dermcam-run-folder")


class ModelProgressBar(RichProgressBar):
    """Lightning's rich progress bar, naming the model and counting epochs from 1."""

    def __init__(self, name: str, **kwargs):
        super().__init__(**kwargs)
        self.model_name = name

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{self.model_name} epoch {current_epoch + 1}/{self.trainer.max_epochs}"


def model_callbacks(cfg: TrainConfig, mdir: Path, ckdir: Path
                    ) -> tuple[list, ModelCheckpoint, CtrlCAtBatchBoundary]:
    mode = monitor_mode(cfg.monitor)
    # weights only: a resume restores the optimizer from last.ckpt
    best_cb = ModelCheckpoint(dirpath=ckdir, filename="best", monitor=cfg.monitor, mode=mode,
                              save_top_k=1, save_weights_only=True,
                              enable_version_counter=False)
    callbacks = [best_cb]
    if cfg.resumable:
        # Lightning's save_last only follows improvements; resuming needs every epoch's.
        callbacks.append(ModelCheckpoint(dirpath=ckdir, filename="last", monitor=None,
                                         save_top_k=1, every_n_epochs=1,
                                         enable_version_counter=False))
    ctrl_c = CtrlCAtBatchBoundary()
    callbacks += [EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.patience),
                  HistoryWriter(mdir / runmod.HISTORY_FILE), ctrl_c]
    if cfg.progress:
        callbacks.append(ModelProgressBar(mdir.name, leave=True))
    callbacks.append(RunFolderBarrier())
    return callbacks, best_cb, ctrl_c
