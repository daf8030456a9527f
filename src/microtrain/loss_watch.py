"""Read the training losses every N steps: log them, and stop a run whose loss went NaN or infinite."""

import math
from typing import Any

import lightning as L
import torch

from microtrain.errors import TrainingDiverged
from microtrain.inspection import tensorboard_writer


class LossWatch(L.Callback):
    """Writes ``train_loss_step`` (the mean of each N-step window) and guards against divergence.

    It also reads at the last batch of every epoch, before validation and checkpointing run,
    so a diverged model is never saved as ``last.ckpt``.
    """

    def __init__(self, every_n_steps: int = 50):
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        window = pl_module.loss_window
        last_of_epoch = batch_idx + 1 == trainer.num_training_batches
        last_of_run = 0 < trainer.max_steps <= trainer.global_step
        if window.count < self.every_n_steps and not (last_of_epoch or last_of_run):
            return
        first_step, losses = window.drain()
        if not losses:
            return
        for offset, loss in enumerate(losses):
            if not math.isfinite(loss):
                raise TrainingDiverged(_diverged_message(pl_module, first_step + offset + 1, loss))
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_scalar("train_loss_step", sum(losses) / len(losses), trainer.global_step)


def _diverged_message(pl_module: "L.LightningModule", step: int, loss: float) -> str:
    bad = [
        name
        for name, param in pl_module.model.named_parameters()
        if param.grad is not None and not torch.isfinite(param.grad).all()
    ]
    where = f"; first non-finite gradient: {bad[0]}" if bad else ""
    return (
        f"training diverged at step {step}: loss={loss}{where}; lower optimizer.lr or use a smaller init"
    )
