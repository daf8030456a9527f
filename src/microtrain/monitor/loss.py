"""Read the training losses every N steps: log them, and stop a run whose loss went NaN or infinite."""

import math
import time
from typing import TYPE_CHECKING, Any, Optional, cast

import lightning as L
import torch

from microtrain.errors import TrainingDiverged
from microtrain.monitor.parameters import tensorboard_writer
from microtrain.monitor.scalars import ScalarBuffer

if TYPE_CHECKING:  # the callbacks read the module's model, loss and loss window
    from microtrain.engine.module import Trainee


class LossWatch(L.Callback):
    """Writes ``train_loss_step`` (the mean of each N-step window) and guards against divergence.

    It also reads at the last batch of every epoch, before validation and checkpointing run,
    and before every step checkpoint, so a diverged model is never saved as ``last.ckpt``.
    """

    def __init__(self, every_n_steps: int = 50, checkpoint_every_n_steps: int | None = None):
        self.every_n_steps = every_n_steps
        # also read before every step checkpoint, so no checkpoint ever holds a diverged model
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self._epoch_losses: list[float] = []
        # losses read but not yet written: reads at an epoch's end do not cut a window short
        self._unwritten: list[float] = []
        self._written_at = 0  # the step of the last train_loss_step point
        self._unwritten_rows = 0
        self._clock: float | None = None
        self._scalars = ScalarBuffer()

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        window = cast("Trainee", pl_module).loss_window
        rows = window.rows
        last_of_epoch = batch_idx + 1 == trainer.num_training_batches
        last_of_run = 0 < trainer.max_steps <= trainer.global_step
        # steps_per_call divides checkpoint_every_n_steps, so checkpoints land on call boundaries
        before_checkpoint = bool(self.checkpoint_every_n_steps and trainer.global_step % self.checkpoint_every_n_steps == 0)
        # a point each time the step passes a multiple of N: the same grid for a resumed run
        crossed = trainer.global_step // self.every_n_steps > self._written_at // self.every_n_steps
        if not crossed and not (last_of_epoch or last_of_run or before_checkpoint):
            return
        first_step, losses = window.drain()
        if not losses:
            return
        for offset, loss in enumerate(losses):
            if not math.isfinite(loss):
                raise TrainingDiverged(_diverged_message(cast("Trainee", pl_module), first_step + offset, loss))
        self._epoch_losses += losses
        self._unwritten += losses
        self._unwritten_rows += rows
        if crossed or last_of_run:
            self._write_window(trainer, pl_module)

    def _write_window(self, trainer: "L.Trainer", pl_module: "L.LightningModule", force: bool = False) -> None:
        """``train_loss_step``, the mean of the losses read since the last write, and the speed."""
        losses, rows = self._unwritten, self._unwritten_rows
        self._unwritten, self._unwritten_rows = [], 0
        self._written_at = trainer.global_step
        if losses:
            self._scalars.add("train_loss_step", sum(losses) / len(losses), trainer.global_step)
            self._add_speed(trainer, pl_module, rows)
        self._scalars.flush(tensorboard_writer(trainer), force=force)

    def _add_speed(self, trainer: "L.Trainer", pl_module: "L.LightningModule", rows: int) -> None:
        """samples_per_s since the last read; on CUDA also gpu_memory_peak_mib (a host-side counter, no sync)."""
        now = time.perf_counter()
        if self._clock is not None and now > self._clock:
            self._scalars.add("samples_per_s", rows / (now - self._clock), trainer.global_step)
        self._clock = now
        if pl_module.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
            self._scalars.add("gpu_memory_peak_mib", peak, trainer.global_step)

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._written_at = trainer.global_step  # a resumed run goes on with the grid of its first part
        self._clock = time.perf_counter()

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._write_window(trainer, pl_module, force=True)  # the run's last steps, and all held

    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        self._scalars.flush(tensorboard_writer(trainer), force=True)  # the curve up to a divergence

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """``train_loss``: the mean loss of the epoch's steps, from the windows already read.

        Not ``self.log``: that costs ~1 ms a call, which on a tiny model's short epoch (32 steps
        of 150 us) would be a fifth of the training time."""
        if self._epoch_losses:
            self._scalars.add("train_loss", sum(self._epoch_losses) / len(self._epoch_losses), trainer.global_step)
        self._epoch_losses = []
        self._scalars.flush(tensorboard_writer(trainer))


def _diverged_message(pl_module: "Trainee", step: int, loss: float) -> str:
    callbacks = pl_module.trainer.callbacks  # type: ignore[attr-defined]  # Lightning sets it without declaring it on Trainer
    inspected = next((cb.first_nonfinite for cb in callbacks if getattr(cb, "first_nonfinite", None)), None)
    grads = {n: p.grad for n, p in pl_module.model.named_parameters() if p.grad is not None}
    return diverged_message(step, loss, divergence(inspected, grads)[1])


def divergence(inspected: Optional[str], grads: dict[str, torch.Tensor]) -> tuple[Optional[str], str]:
    """(the parameter, where) a divergence names: what inspection saw go non-finite first, with its
    NaN and Inf counts; else the first non-finite gradient; else the largest gradient norm."""
    bad = [name for name, grad in grads.items() if not torch.isfinite(grad).all()]
    if inspected:
        return inspected.split(": ")[1].split(" at ")[0], inspected
    if bad:
        return bad[0], f"first non-finite gradient: {bad[0]}"
    if grads:
        norms = {name: float(grad.double().norm()) for name, grad in grads.items()}
        name = max(norms, key=norms.__getitem__)
        return name, f"gradients still finite, largest {name} with norm {norms[name]:.3g}"
    return None, "no gradients yet"


def diverged_message(step: int, loss: float, where: str) -> str:
    return f"training diverged at step {step}: loss={loss} ({where}); lower optimizer.lr or use a smaller init"
