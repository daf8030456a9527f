"""Which checkpoints a run writes, and when: last.ckpt to resume from, best.ckpt by validation loss."""

import time
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from microtrain.train.bypass import CheckpointBudget, saved_step


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` at the end of every epoch, within a budget of the training time
    (``checkpoint.budget``, see ``train.bypass.CheckpointBudget``)."""

    def __init__(self, dirpath: Path, budget: float = 0.0):
        # Written at the train epoch's end, which comes after that epoch's validation: best.ckpt
        # is up to date by then, and last.ckpt saves its state too.
        super().__init__(dirpath=dirpath, filename="last", monitor=None, enable_version_counter=False, save_on_train_epoch_end=True)
        self.budget = CheckpointBudget(budget)

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not self.budget.due(trainer):
            return
        steps_saved = saved_step(self)
        started = time.perf_counter()
        super().on_train_epoch_end(trainer, pl_module)
        if saved_step(self) != steps_saved:
            self.budget.record(started)


def checkpoint_callbacks(folder: Path, has_val: bool, every_n_steps: Optional[int], budget: float) -> list[ModelCheckpoint]:
    """last.ckpt after every epoch (within ``budget``) and every N steps if asked; best.ckpt by
    validation loss. Without validation the best is the last: one file."""
    callbacks: list[ModelCheckpoint] = []
    if has_val:
        callbacks.append(ModelCheckpoint(dirpath=folder, filename="best", monitor="val_loss", enable_version_counter=False))
    callbacks.append(LastCheckpoint(folder, budget))
    if every_n_steps:
        # a second checkpointer: Lightning's step and epoch triggers are mutually exclusive
        callbacks.append(
            ModelCheckpoint(dirpath=folder, filename="last", monitor=None, every_n_train_steps=every_n_steps, enable_version_counter=False)
        )
    return callbacks
