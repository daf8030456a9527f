"""Read the training losses every N steps: log them, and stop a run whose loss went NaN or infinite."""

import math
import time
from typing import Any

import lightning as L
import torch

from microtrain.errors import TrainingDiverged
from microtrain.inspection import tensorboard_writer


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
        self._clock: float | None = None

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        window = pl_module.loss_window
        rows = window.rows
        last_of_epoch = batch_idx + 1 == trainer.num_training_batches
        last_of_run = 0 < trainer.max_steps <= trainer.global_step
        # steps_per_call divides checkpoint_every_n_steps, so checkpoints land on call boundaries
        before_checkpoint = bool(self.checkpoint_every_n_steps) and trainer.global_step % self.checkpoint_every_n_steps == 0
        if window.count < self.every_n_steps and not (last_of_epoch or last_of_run or before_checkpoint):
            return
        first_step, losses = window.drain()
        if not losses:
            return
        for offset, loss in enumerate(losses):
            if not math.isfinite(loss):
                raise TrainingDiverged(_diverged_message(pl_module, first_step + offset, loss))
        self._epoch_losses += losses
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_scalar("train_loss_step", sum(losses) / len(losses), trainer.global_step)
            self._write_speed(writer, trainer, pl_module, rows)

    def _write_speed(self, writer: Any, trainer: "L.Trainer", pl_module: "L.LightningModule", rows: int) -> None:
        """samples_per_s since the last read; on CUDA also gpu_memory_peak_mib (a host-side counter, no sync)."""
        now = time.perf_counter()
        if self._clock is not None and now > self._clock:
            writer.add_scalar("samples_per_s", rows / (now - self._clock), trainer.global_step)
        self._clock = now
        if pl_module.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
            writer.add_scalar("gpu_memory_peak_mib", peak, trainer.global_step)

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._clock = time.perf_counter()

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """``train_loss``: the mean loss of the epoch's steps, from the windows already read.

        Written straight to TensorBoard: ``self.log`` costs ~1 ms a call, which on a tiny model's
        short epoch (32 steps of 150 us) would be a fifth of the training time."""
        writer = tensorboard_writer(trainer)
        if self._epoch_losses and writer is not None:
            writer.add_scalar("train_loss", sum(self._epoch_losses) / len(self._epoch_losses), trainer.global_step)
        self._epoch_losses = []


def _diverged_message(pl_module: "L.LightningModule", step: int, loss: float) -> str:
    grads = {n: p.grad for n, p in pl_module.model.named_parameters() if p.grad is not None}
    bad = [name for name, grad in grads.items() if not torch.isfinite(grad).all()]
    if bad:
        where = f"first non-finite gradient: {bad[0]}"
    elif grads:
        norms = {name: grad.double().norm().item() for name, grad in grads.items()}
        name = max(norms, key=norms.get)
        where = f"gradients still finite, largest {name} with norm {norms[name]:.3g}"
    else:
        where = "no gradients yet"
    return f"training diverged at step {step}: loss={loss} ({where}); lower optimizer.lr or use a smaller init"
