"""The private Lightning attributes microtrain reads, here only (``tests/test_core.py`` checks
that no other module touches them, and fails loudly if a Lightning upgrade moves them).

A lower layer than ``engine/``, ``stack/`` and ``run/``: they use it, and it imports nothing of microtrain.
"""

from typing import Any

import lightning as L
import torch


def before_step(optimizer: Any) -> None:
    """What ``LightningOptimizer.step`` does before an optimizer step, for a step taken around it."""
    optimizer._on_before_step()


def after_step(optimizer: Any) -> None:
    """... and after it: counts the step (``trainer.global_step``)."""
    optimizer._on_after_step()


def saved_step(checkpoint: "L.pytorch.callbacks.ModelCheckpoint") -> int:
    """The global step of the checkpoint's last write (private in ModelCheckpoint)."""
    return checkpoint._last_global_step_saved


def final_epoch(trainer: "L.Trainer") -> bool:
    """Whether training stops after this epoch (Lightning's own ``fit_loop.done`` logs as it checks)."""
    if trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step:
        return True
    current: Any = trainer.fit_loop.epoch_progress.current  # typed _ReadyCompletedTracker; an epoch's is a _ProcessedTracker
    epochs_done = current.processed  # counts this epoch already
    return trainer.max_epochs is not None and 0 <= trainer.max_epochs <= epochs_done


def early_stop(stopper: "L.pytorch.callbacks.EarlyStopping", value: float, epoch: int) -> bool:
    """Lightning's EarlyStopping decision for one job of a stacked group, whose metric is one
    column of the group's validation rather than the trainer's logged value that its own
    ``_run_early_stopping_check`` reads: the same criteria (patience, min_delta, mode,
    thresholds, check_finite) and the same state, which the job's checkpoints save."""
    should_stop, _ = stopper._evaluate_stopping_criteria(torch.tensor(value))
    if should_stop:
        stopper.stopped_epoch = epoch
    return should_stop
