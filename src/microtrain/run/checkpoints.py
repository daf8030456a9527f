"""Which checkpoints a run writes, and when: last.ckpt to resume from, best.ckpt by validation loss."""

import os
import signal
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from microtrain.errors import Interrupted
from microtrain.internals import final_epoch, saved_step
from microtrain.run import interrupt


class CheckpointBudget:
    """Whether this epoch's ``last.ckpt`` is written: a write takes ~1 ms here and a tiny model's
    32-step epoch ~5 ms, so a write every epoch would cost a fifth of the run. A write is skipped
    while the last one cost more than ``budget`` of the time trained since (2 %: at most one
    write per ~50 ms); the first and the final epoch are always written, and with several
    processes every epoch is (every rank must decide alike without a sync)."""

    def __init__(self, budget: float):
        self.budget = budget
        self._written: Optional[tuple[float, float]] = None  # (when the last write ended, what it cost)

    def due_now(self, always: bool = False) -> bool:
        if self.budget <= 0 or self._written is None or always:
            return True
        ended, cost = self._written
        return (time.perf_counter() - ended) * self.budget >= cost

    def record(self, started: float) -> None:
        ended = time.perf_counter()
        self._written = (ended, ended - started)

    def now(self) -> float:
        """The clock ``record`` takes its ``started`` from (this module's, which tests replace)."""
        return time.perf_counter()


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, whose saved state names its files by absolute path: restored
    in a copied or moved run folder, it would test the other folder's best.ckpt (test_r2 0.22 ->
    -2.10 measured) or fail on a path that is gone, and it drops the best score, so a worse epoch
    would replace best.ckpt. Here every path is taken as the file of that name in this run's
    checkpoints/, and the rest of the state is restored."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        def here(path: Any) -> Any:
            return os.path.join(self.dirpath, os.path.basename(path)) if path and self.dirpath else path

        moved = dict(state_dict, dirpath=self.dirpath)
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in moved:
                moved[key] = here(moved[key])
        if moved.get("best_k_models"):
            moved["best_k_models"] = {here(path): score for path, score in moved["best_k_models"].items()}
        super().load_state_dict(moved)


class LastCheckpoint(RunCheckpoint):
    """``last.ckpt`` at the end of every epoch, within a budget of the training time
    (``checkpoint.budget``, see ``CheckpointBudget``)."""

    def __init__(self, dirpath: Path, budget: float = 0.0):
        # Written at the train epoch's end, which comes after that epoch's validation: best.ckpt
        # is up to date by then, and last.ckpt saves its state too.
        super().__init__(dirpath=dirpath, filename="last", monitor=None, enable_version_counter=False, save_on_train_epoch_end=True)
        self.budget = CheckpointBudget(budget)

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not self.budget.due_now(trainer.world_size > 1 or final_epoch(trainer)):
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
        callbacks.append(RunCheckpoint(dirpath=folder, filename="best", monitor="val_loss", enable_version_counter=False))
    callbacks.append(LastCheckpoint(folder, budget))
    if every_n_steps:
        # a second checkpointer: Lightning's step and epoch triggers are mutually exclusive
        callbacks.append(
            RunCheckpoint(dirpath=folder, filename="last", monitor=None, every_n_train_steps=every_n_steps, enable_version_counter=False)
        )
    return callbacks


class InterruptCheckpoint(L.Callback):
    """At the end of each Lightning call after a signal: last.ckpt of that moment, then Interrupted."""

    def __init__(self, last: Path):
        self.last = last

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """One process: SIGTERM is noted here only, where Lightning's own handler would raise its
        SIGTERMException mid-validation, without a checkpoint. Several processes keep Lightning's,
        which agrees across ranks on when to stop (``engine.fit`` turns it into Interrupted)."""
        if trainer.world_size == 1:
            signal.signal(signal.SIGTERM, interrupt._note)

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx + 1 < trainer.num_training_batches:  # the epoch's last call: validation first, then on_train_epoch_end
            self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """After the epoch's validation (its val_loss point is logged) and its own last.ckpt."""
        self._stop_if_signalled(trainer)

    def _stop_if_signalled(self, trainer: "L.Trainer") -> None:
        signum = interrupt.stop_signal()
        if signum is None and not getattr(trainer, "received_sigterm", False):
            return
        trainer.save_checkpoint(str(self.last))  # through the run's AtomicCheckpointIO: whole or not at all
        signum = signum if signum is not None else signal.SIGTERM
        raise Interrupted(f"interrupted by {signal.Signals(signum).name} at step {trainer.global_step}; {self.last} saved", signum)
