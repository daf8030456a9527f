"""Every N optimizer steps, write what each parameter is doing to TensorBoard.

Per parameter ``name`` (``weight``, ``fc1.bias``, ...):
``weights/<name>`` and ``grads/<name>`` histograms, ``weight_norm/<name>`` and ``grad_norm/<name>``
(L2), and ``update_ratio/<name>`` = ‖Δw‖/‖w‖ of that step; plus ``lr``.

Weights and gradients are read in ``on_before_optimizer_step``: after backward filled the
gradients and before the optimizer changes the weights. Reading them copies to the host (a sync
point), and a histogram costs ~0.6 ms, which is why this runs every N steps and not every step.
"""

from typing import Any, Optional

import lightning as L
import torch
from torch.utils.tensorboard import SummaryWriter


def tensorboard_writer(trainer: "L.Trainer") -> Optional[SummaryWriter]:
    """The run's SummaryWriter on rank 0; None on other ranks or with no logger."""
    if not trainer.is_global_zero or trainer.logger is None:
        return None
    writer = trainer.logger.experiment
    return writer if isinstance(writer, SummaryWriter) else None


def _histogram(writer: SummaryWriter, tag: str, tensor: torch.Tensor, step: int) -> None:
    """Histogram of the finite values; a diverging run is reported by LossWatch, not by a crash here."""
    values = tensor.float().cpu().reshape(-1)
    finite = values[torch.isfinite(values)]
    if finite.numel():
        writer.add_histogram(tag, finite, step)


class ParameterInspector(L.Callback):
    def __init__(self, every_n_steps: int = 50, histograms: bool = True):
        self.every_n_steps = every_n_steps
        self.histograms = histograms
        self._before: dict[str, torch.Tensor] = {}
        self._step = 0

    def on_before_optimizer_step(self, trainer: "L.Trainer", pl_module: "L.LightningModule", optimizer: Any) -> None:
        step = trainer.global_step  # steps completed before this one
        writer = tensorboard_writer(trainer)
        if writer is None or step % self.every_n_steps:
            return
        self._step = step
        for name, param in pl_module.model.named_parameters():
            weight = param.detach()
            writer.add_scalar(f"weight_norm/{name}", weight.norm().item(), step)
            if self.histograms:
                _histogram(writer, f"weights/{name}", weight, step)
            if param.grad is not None:
                grad = param.grad.detach()
                writer.add_scalar(f"grad_norm/{name}", grad.norm().item(), step)
                if self.histograms:
                    _histogram(writer, f"grads/{name}", grad, step)
            self._before[name] = weight.clone()
        writer.add_scalar("lr", optimizer.param_groups[0]["lr"], step)

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", *args: Any) -> None:
        if not self._before:
            return
        writer = tensorboard_writer(trainer)
        for name, param in pl_module.model.named_parameters():
            before = self._before[name]
            ratio = (param.detach() - before).norm() / before.norm().clamp_min(1e-12)
            writer.add_scalar(f"update_ratio/{name}", ratio.item(), self._step)
        self._before.clear()
