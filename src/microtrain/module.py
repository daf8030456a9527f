"""The LightningModule: one training step written out as the notebooks do it.

Optimization is manual so the four moves stay visible: forward, loss, backward, step.
Lightning still owns devices, precision, DDP gradient sync and checkpoints.
"""

from collections.abc import Callable
from typing import Any, Optional

import lightning as L
import torch
from torch import nn

from torchmetrics import MetricCollection

from microtrain.batching import Batch


class LossWindow:
    """The training losses of the last few steps, kept on the device.

    Reading a loss with ``.item()`` waits for the device (a CPU-GPU sync point), so each step
    only copies its loss into this buffer; ``LossWatch`` reads the whole window every N steps.
    """

    def __init__(self, size: int):
        self.size = size
        self.buffer: Optional[torch.Tensor] = None
        self.count = 0
        self.first_step = 0

    def add(self, loss: torch.Tensor, step: int) -> None:
        if self.buffer is None or self.buffer.device != loss.device:
            self.buffer = torch.empty(self.size, dtype=torch.float32, device=loss.device)
        if self.count == 0:
            self.first_step = step
        self.buffer[self.count].copy_(loss)
        self.count += 1

    def drain(self) -> tuple[int, list[float]]:
        """(1-based number of the first step, the losses) since the last drain; this syncs with the device."""
        losses = [] if self.buffer is None else self.buffer[: self.count].tolist()
        self.count = 0
        return self.first_step, losses


class Trainee(L.LightningModule):
    """Wraps a model, a loss and an optimizer factory for Lightning."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        make_optimizer: Callable[..., torch.optim.Optimizer],
        make_scheduler: Optional[Callable[..., Any]] = None,
        log_every_n_steps: int = 50,
        val_metrics: Optional[MetricCollection] = None,
        test_metrics: Optional[MetricCollection] = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.loss_fn = loss_fn
        self.make_optimizer = make_optimizer
        self.make_scheduler = make_scheduler
        self.loss_window = LossWindow(log_every_n_steps)
        self.val_metrics = val_metrics
        self.test_metrics = test_metrics
        self.epoch_loss_sum: Optional[torch.Tensor] = None
        self.epoch_steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        optimizer = self.optimizers()
        prediction = self.model(x)  # forward
        loss = self.loss_fn(prediction, y)  # loss
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)  # backward: fills every parameter's .grad
        # step: Lightning calls the callbacks' on_before_optimizer_step first, which is where
        # ParameterInspector reads the weights and gradients of this step.
        optimizer.step()
        self._remember(loss.detach())

    def _remember(self, loss: torch.Tensor) -> None:
        self.loss_window.add(loss, self.global_step)
        self.epoch_loss_sum = loss if self.epoch_loss_sum is None else self.epoch_loss_sum + loss
        self.epoch_steps += 1

    def on_train_epoch_end(self) -> None:
        if self.epoch_steps:
            self.log("train_loss", self.epoch_loss_sum / self.epoch_steps, on_epoch=True, sync_dist=True)
        self.epoch_loss_sum, self.epoch_steps = None, 0
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def _evaluate(self, batch: Batch, stage: str, metrics: Optional[MetricCollection]) -> None:
        x, y = batch
        prediction = self.model(x)
        self.log(f"{stage}_loss", self.loss_fn(prediction, y), on_epoch=True, batch_size=len(x), sync_dist=True)
        if metrics is not None:
            metrics.update(self.predict_targets(prediction), y)
            # logging the collection lets Lightning compute it once per epoch and reset it
            self.log_dict(metrics, on_epoch=True, on_step=False, batch_size=len(x))

    def predict_targets(self, prediction: torch.Tensor) -> torch.Tensor:
        """Class labels (argmax of the logits) for classification, the outputs themselves for regression."""
        return prediction.argmax(dim=1) if self.is_classifier else prediction

    @property
    def is_classifier(self) -> bool:
        return isinstance(self.loss_fn, nn.CrossEntropyLoss)

    def configure_optimizers(self) -> Any:
        optimizer = self.make_optimizer(self.model.parameters())
        if self.make_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.make_scheduler(optimizer), "interval": "epoch"}}
