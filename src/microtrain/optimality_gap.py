"""Log how far the linear model still is from the best possible linear fit of its training data."""

from typing import Any

import lightning as L
import torch

from microtrain.inspection import tensorboard_writer


class OptimalityGap(L.Callback):
    """Every N steps: ``train_loss_full`` (current weights, whole training split) and
    ``optimality_gap`` = that minus ``train_loss_optimum`` (least squares, computed once).

    A gap that stalls far above 0 says the learning rate is too small or the run too short.
    The full-split forward pass costs one matmul over the training rows.
    """

    def __init__(self, optimum: float, train: tuple[torch.Tensor, torch.Tensor], every_n_steps: int):
        self.optimum = optimum
        self.x, self.y = train
        self.every_n_steps = every_n_steps

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self.x, self.y = self.x.to(pl_module.device), self.y.to(pl_module.device)
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_scalar("train_loss_optimum", self.optimum, trainer.global_step)

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", *args: Any) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or trainer.global_step % self.every_n_steps:
            return
        with torch.no_grad():
            full = pl_module.loss_fn(pl_module.model(self.x), self.y).item()
        writer.add_scalar("train_loss_full", full, trainer.global_step)
        writer.add_scalar("optimality_gap", full - self.optimum, trainer.global_step)
