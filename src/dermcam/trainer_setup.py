"""From a training run's options to Lightning Trainers: options checked (one line each,
before anything is written), each model's precision, the Trainer arguments and this
process's rank. Lightning is imported where a Trainer is built."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from dermcam.calibration import CALIBRATIONS
from dermcam.config import TrainConfig
from dermcam.device import accelerator_is_gpu, resolve_precision
from dermcam.errors import DermcamError
from dermcam.inference import depthwise_net
from dermcam.models import check_model_name
from dermcam.objective import MONITORS, SCHEDULES

__all__ = ["IMBALANCES", "LAUNCHER_RANKS", "PRECISIONS", "check_train_config",
           "launch_rank", "make_trainer", "trainer_kwargs"]

log = logging.getLogger(__name__)

IMBALANCES = ("weighted_loss", "balanced_sampler", "none")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")  # and "auto"
# Rank variables of launchers; a process that one of them numbers > 0 must not be rank 0.
LAUNCHER_RANKS = ("SLURM_PROCID", "RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


def _check_choice(flag: str, value: Any, choices: tuple, words: str | None = None) -> None:
    """Refuse ``--flag value`` outside ``choices`` (``words``: how the message lists them)."""
    if value not in choices:
        raise DermcamError(f"--{flag} must be {words or 'one of ' + ', '.join(choices)}, "
                           f"not {value!r}")


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse an unknown model, an ``--lr`` for a model not trained, or an option outside
    its choices, in one line."""
    for m in cfg.models:
        check_model_name(m)
    unknown = sorted(set(cfg.lr_by_model) - set(cfg.models))
    if unknown:
        raise DermcamError(f"--lr names model(s) {', '.join(unknown)} that are not among "
                           f"--models ({', '.join(cfg.models)})")
    _check_choice("monitor", cfg.monitor, MONITORS, "val_auc or val_loss")
    _check_choice("schedule", cfg.schedule, SCHEDULES)
    _check_choice("calibration", cfg.calibration, CALIBRATIONS)
    if not 0.0 <= cfg.colour_jitter < 1.0:
        raise DermcamError(f"--colour-jitter must be at least 0 and below 1, not "
                           f"{cfg.colour_jitter!r}")
    _check_choice("imbalance", cfg.imbalance, IMBALANCES,
                  "weighted_loss, balanced_sampler or none")


def trainer_kwargs(cfg: TrainConfig, precision: str | None = None) -> dict[str, Any]:
    """The Trainer arguments that decide devices, processes, precision and determinism
    (``precision``: the model's; default ``cfg.precision`` resolved)."""
    if precision is None:
        precision = resolve_precision(cfg.precision, cfg.accelerator)
    if precision == "16-true":  # measured: NaN loss in the first epochs on this CPU
        raise DermcamError("--precision 16-true is not supported: float16 weights under Adam "
                           "overflow (its eps 1e-8 is 0 in float16); use 16-mixed, bf16-mixed "
                           "or bf16-true")
    _check_choice("precision", precision, PRECISIONS,
                  f"one of {', '.join(('auto',) + PRECISIONS)}")
    devices: Any = int(cfg.devices) if str(cfg.devices).isdigit() else cfg.devices
    several = cfg.num_nodes > 1 or devices not in (1, "1")
    return {"accelerator": cfg.accelerator, "devices": devices, "strategy": cfg.strategy,
            "num_nodes": cfg.num_nodes, "precision": precision,
            "use_distributed_sampler": False,  # RankBatches splits the batches itself
            # global-batch BatchNorm statistics (CUDA only: SyncBatchNorm refuses CPU tensors)
            "sync_batchnorm": accelerator_is_gpu(cfg.accelerator) and several,
            "deterministic": "warn" if cfg.deterministic else False,
            "benchmark": not cfg.deterministic}  # fixed input size: cuDNN's fastest kernels


def launch_rank(cfg: TrainConfig) -> tuple[int, int]:
    """``(global rank, world size)`` of this process, as Lightning's Trainer detects them.
    A process a launcher numbered above 0 that the Trainer would run as rank 0 (``srun -n 4``
    with ``--devices 1``, ``mpirun`` without mpi4py) is refused before it touches the run folder."""
    import lightning.pytorch as pl
    try:
        trainer = pl.Trainer(logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             **trainer_kwargs(cfg))
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


def make_trainer(name: str, cfg: TrainConfig, callbacks: list, mdir: Path):
    """``(Trainer, precision)`` for model ``name`` (its precision resolved for its kind of
    net and the input size)."""
    import lightning.pytorch as pl
    precision = resolve_precision(cfg.precision, cfg.accelerator, depthwise=depthwise_net(name),
                                  image_size=cfg.image_size)
    if precision != cfg.precision:
        log.info("%s: --precision %s trains in %s here", name, cfg.precision, precision)
    trainer = pl.Trainer(
        max_epochs=cfg.max_epochs, callbacks=callbacks,
        logger=False, enable_progress_bar=cfg.progress, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=str(mdir),
        limit_train_batches=cfg.limit_train_batches, log_every_n_steps=1,
        **trainer_kwargs(cfg, precision))
    return trainer, precision
