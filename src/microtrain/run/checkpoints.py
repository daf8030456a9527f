"""Which checkpoints a run writes, and when: last.ckpt to resume from, best.ckpt by validation loss."""

import time
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` at the end of every epoch, within a budget of the training time.

    Writing a checkpoint takes ~1 ms here; a tiny model's epoch of 32 steps takes ~5 ms, so a
    write every epoch would cost a fifth of the run. An epoch's write is skipped while the last
    write's cost exceeds ``budget`` of the time trained since (2 %: at most one write per ~50 ms).
    Epochs longer than that are all written; the first and the final epoch always are. With
    several processes every rank must take the same decision, so each epoch is written.
    """

    def __init__(self, dirpath: Path, budget: float = 0.0):
        # Written at the train epoch's end, which comes after that epoch's validation: best.ckpt
        # is up to date by then, and last.ckpt saves its state too.
        super().__init__(dirpath=dirpath, filename="last", monitor=None, enable_version_counter=False, save_on_train_epoch_end=True)
        self.budget = budget
        self._written: Optional[tuple[float, float]] = None  # (when the last write ended, what it cost)

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not self._due(trainer):
            return
        steps_saved = self._last_global_step_saved
        started = time.perf_counter()
        super().on_train_epoch_end(trainer, pl_module)
        if self._last_global_step_saved != steps_saved:
            ended = time.perf_counter()
            self._written = (ended, ended - started)

    def _due(self, trainer: "L.Trainer") -> bool:
        if self.budget <= 0 or self._written is None or trainer.world_size > 1 or _final_epoch(trainer):
            return True
        ended, cost = self._written
        return (time.perf_counter() - ended) * self.budget >= cost


def _final_epoch(trainer: "L.Trainer") -> bool:
    """Whether training stops after this epoch (Lightning's own ``fit_loop.done`` logs as it checks)."""
    if 0 < trainer.max_steps <= trainer.global_step:
        return True
    epochs_done = trainer.fit_loop.epoch_progress.current.processed  # counts this epoch already
    return trainer.max_epochs is not None and 0 <= trainer.max_epochs <= epochs_done


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
