"""SIGTERM (what SLURM and most schedulers send on pre-emption), SIGINT (Ctrl-C) and SLURM's
USR1 warning: the run writes ``last.ckpt`` at the next step boundary (the end of a Lightning
call: at most ``loop.steps_per_call`` steps), records ``"status": "interrupted"`` and exits
128 + the signal (143 for SIGTERM, 130 for SIGINT). A second Ctrl-C stops at once.

Under SLURM with auto-requeue, Lightning's own SLURM environment handles USR1 (it saves and
requeues the job); these handlers are added to Lightning's, not put in their place."""

import signal
from pathlib import Path
from types import FrameType
from typing import Any, Optional

import lightning as L

from microtrain.errors import Interrupted

received: Optional[int] = None  # the signal received, process-wide (a sweep stops launching after it)


def _note(signum: int, frame: Optional[FrameType]) -> None:
    global received
    if signum == signal.SIGINT and received == signal.SIGINT:
        raise KeyboardInterrupt  # the second Ctrl-C
    received = signum


_previous: dict[int, Any] = {}


def install() -> None:
    """From the start of a run: a signal is noted, and acted on at the next safe point."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not _note:
            _previous[signum] = signal.getsignal(signum)
            signal.signal(signum, _note)


def restore() -> None:
    """The handlers of before ``install`` (a sweep's later jobs install them again)."""
    for signum, handler in list(_previous.items()):
        signal.signal(signum, handler)
        del _previous[signum]


def check(step: Optional[int] = None) -> None:
    """Raise Interrupted if a signal came (called between start-up phases and at step boundaries)."""
    if received is not None:
        name = signal.Signals(received).name
        where = f" at step {step}" if step is not None else " during start-up"
        raise Interrupted(f"interrupted by {name}{where}", received)


class InterruptCheckpoint(L.Callback):
    """At the end of each Lightning call after a signal: last.ckpt of that moment, then Interrupted."""

    def __init__(self, last: Path):
        self.last = last

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """One process: SIGTERM is noted here only, where Lightning's own handler would raise its
        SIGTERMException mid-validation, without a checkpoint. Several processes keep Lightning's,
        which agrees across ranks on when to stop (``train.fit`` turns it into Interrupted)."""
        if trainer.world_size == 1:
            signal.signal(signal.SIGTERM, _note)

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx + 1 < trainer.num_training_batches:  # the epoch's last call: validation first, then on_train_epoch_end
            self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """After the epoch's validation (its val_loss point is logged) and its own last.ckpt."""
        self._stop_if_signalled(trainer)

    def _stop_if_signalled(self, trainer: "L.Trainer") -> None:
        if received is None and not getattr(trainer, "received_sigterm", False):
            return
        trainer.save_checkpoint(str(self.last))  # through the run's AtomicCheckpointIO: whole or not at all
        signum = received if received is not None else signal.SIGTERM
        raise Interrupted(f"interrupted by {signal.Signals(signum).name} at step {trainer.global_step}; {self.last} saved", signum)
