"""The Lightning module that trains a torchvision classifier: :class:`DermClassifier`.
Imports Lightning at module level (the train stage imports it at first use)."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F

from dermcam.augment import augment as augment_fn
from dermcam.augment import normalize, to_float
from dermcam.errors import DermcamError
from dermcam.objective import global_mean_loss, make_adam, make_schedule
from dermcam.samplers import dedupe_by_index, rank_slice

__all__ = ["DermClassifier"]


class DermClassifier(pl.LightningModule):
    """Binary dermoscopy classifier on uint8 NHWC batches.

    Training batches carry ``keep`` weights (0 for a padded repeat), validation batches each
    image's position; ``global_batch`` and ``n_train`` are set by the caller."""

    def __init__(self, model, lr: float, weight_decay: float,
                 class_weights: torch.Tensor | None, augment: bool, monitor: str,
                 seed: int = 0, schedule: str = "plateau", colour_jitter: float = 0.2):
        super().__init__()
        self.model, self.lr, self.weight_decay, self.monitor = model, lr, weight_decay, monitor
        self.do_augment, self.colour_jitter = augment, colour_jitter
        self.seed, self.schedule = seed, schedule
        if class_weights is not None:
            self.register_buffer("class_weights", class_weights.float())
        else:
            self.class_weights = None
        self._val: dict[str, list[torch.Tensor]] = {}  # validation outputs of one epoch
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

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised ``x``, cast to the weights' dtype (--precision bf16-true)."""
        x, p = normalize(x), next(self.model.parameters(), None)
        return self.model(x if p is None or p.dtype == x.dtype else x.to(p.dtype))

    def training_step(self, batch, batch_idx):
        images, labels, *rest = batch  # rest: (keep,) weights, 0 for a padded repeat
        # Draws fixed by (seed, epoch, batch): a resumed run repeats an uninterrupted one, and
        # each DDP process takes its rows of the global batch's draws. Dropout draws per process.
        base = self.seed * 1_000_003 + self.current_epoch * 10_007 + batch_idx * 101
        torch.manual_seed(base)
        x = to_float(images)
        if self.do_augment:
            n_global, lo = self._rows(batch_idx, len(labels))
            x = augment_fn(x, jitter=self.colour_jitter,
                           draws=torch.rand(n_global, 6)[lo:lo + len(labels)])
        if self.global_rank:
            torch.manual_seed(base + self.global_rank)
        logits = self._logits(x)
        loss = global_mean_loss(self, logits.float(), labels, rest[0] if rest else None)
        if not torch.isfinite(loss):
            raise DermcamError(
                f"training diverged: loss is {loss.item()} at epoch {self.current_epoch}, "
                f"batch {batch_idx}; lower --lr or check the input images")
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(labels), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels, *rest = batch  # rest: (index,) of each image in the split
        logits = self._logits(to_float(images)).float()
        outputs = {"prob": torch.softmax(logits, 1)[:, 1], "label": labels,
                   "loss": F.cross_entropy(logits, labels, reduction="none")}
        if rest:
            outputs["index"] = rest[0]
        for key, value in outputs.items():
            self._val.setdefault(key, []).append(value.detach())

    def on_validation_epoch_end(self):
        from sklearn.metrics import average_precision_score, roc_auc_score
        if not self._val:
            return
        val = {key: torch.cat(parts) for key, parts in self._val.items()}
        self._val = {}
        if self.trainer.world_size > 1:  # the sampler pads ranks to equal length: repeats
            val = {key: self.all_gather(v).reshape(-1) for key, v in val.items()}
        if "index" in val:
            val["prob"], val["label"], val["loss"] = dedupe_by_index(
                val["index"], val["prob"], val["label"], val["loss"])
        y, p = val["label"].cpu().numpy(), val["prob"].cpu().numpy()
        both = len(np.unique(y)) == 2
        self.log("val_n", float(len(y)), sync_dist=False)
        self.log("val_loss", val["loss"].mean(), prog_bar=True, sync_dist=False)
        self.log("val_auc", float(roc_auc_score(y, p)) if both else float("nan"),
                 prog_bar=True, sync_dist=False)
        self.log("val_ap", float(average_precision_score(y, p)) if both else float("nan"),
                 sync_dist=False)

    def configure_optimizers(self):
        opt = make_adam(self.model.parameters(), self.lr, self.weight_decay)
        steps = (int(self.trainer.estimated_stepping_batches) if self.schedule == "onecycle"
                 else None)
        return make_schedule(opt, self.schedule, self.lr, self.monitor, steps)
