"""The LightningModule: the training step written out as the notebooks do it.

Optimization is manual so the four moves stay visible: forward, loss, backward, step.
Lightning still owns devices, precision, DDP gradient sync and checkpoints; how each step goes
around Lightning's per-step machinery lives in ``engine.bypass``.

Every run is this module under a Lightning ``Trainer.fit``. ``stack.train.StackedRun`` takes the
steps of a stack of K >= 1 models whole (a solo run is a stack of one: ``microtrain.training``),
with the update rules of ``engine.step``; ``engine.bypass.StepLoop`` takes them, one move at a
time as below, for the runs a stack does not take (several devices, other callbacks, an
optimizer without a rule).
"""

from collections.abc import Callable, Iterator
from typing import Any, Optional, Protocol, cast

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import nn
from torchmetrics import MetricCollection

from microtrain.data.batches import Batch, on_device
from microtrain.engine.bypass import LossWindow, StepLoop
from microtrain.optimizers import on_val_loss


class Steps(Protocol):
    """What takes ``Trainee``'s steps: ``engine.bypass.StepLoop`` or ``stack.train.StackedRun``."""

    step_count: int
    accumulate: int
    batch: list
    holds_optimizer_state: bool  # True: Trainee builds no optimizer (a stack's step holds the K jobs' states)

    def start(self, module: Any) -> None: ...
    def call_started(self) -> None: ...
    def release(self) -> None: ...
    def groups(self, batches: list) -> Iterator[list[Batch]]: ...
    def whole_step_now(self, group: list[Batch]) -> bool: ...
    def whole_step(self, x: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> None: ...
    def clip(self) -> None: ...


class WholeSteps:
    """A ``Steps`` that takes every step whole (``whole_step``: ``stack.train.StackedRun``, whose
    one call steps K jobs and clips inside): StepLoop's other moves have nothing to do."""

    def start(self, module: Any) -> None: ...
    def call_started(self) -> None: ...
    def release(self) -> None: ...
    def clip(self) -> None: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> None: ...

    def whole_step_now(self, group: list[Batch]) -> bool:
        return True


class Trainee(L.LightningModule):
    """Wraps a model, a loss and an optimizer factory for Lightning."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        make_optimizer: Callable[..., torch.optim.Optimizer],
        make_scheduler: Optional[Callable[..., Any]] = None,
        val_metrics: Optional[MetricCollection] = None,
        test_metrics: Optional[MetricCollection] = None,
        loop: Optional[Steps] = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.loss_fn = loss_fn
        self.make_optimizer = make_optimizer
        self.make_scheduler = make_scheduler
        self.loop: Steps = loop or StepLoop()
        self.loss_window = LossWindow()
        self.val_metrics = val_metrics
        self.test_metrics = test_metrics
        # (mean, std) of standardized regression targets: test metrics are reported in the units
        self.target_scale: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        # a resumed run's new optimizer.lr or weight_decay, set once the checkpoint's optimizer is restored
        self.optimizer_overrides: dict[str, float] = {}
        self.validated = False  # in the epoch going on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batches: list[Batch], batch_idx: int) -> None:
        """One optimizer step per ``trainer.accumulate_grad_batches`` batches of the call's
        ``loop.steps_per_call`` (Lightning's ~0.3 ms per call is paid once for many steps)."""
        model, loss_fn, loop = self.model, self.loss_fn, self.loop
        for group in loop.groups(batches):  # gradients cleared before each group
            if loop.whole_step_now(group):  # loop.compile, or K stacked jobs: the four moves below as one call
                if (loss := loop.whole_step(*group[0])) is not None:  # a stack keeps each job's losses itself
                    self.loss_window.add(loss, loop.step_count, len(group[0][0]))
                continue
            total = None
            for x, y in group:
                prediction = model(x)  # forward
                loss = loss_fn(prediction, y)  # loss
                # The graph keeps what backward needs; a name kept on the outputs would hold them
                # into the next forward: ~3 % slower on the 256->1024->256 MLP (measured).
                del prediction
                if loop.accumulate > 1:
                    loss = loss / loop.accumulate  # as Lightning's accumulation: gradients average
                loop.backward(loss)  # backward
                total = loss.detach() if total is None else total + loss.detach()
            loop.step()  # step: clip, update, count
            assert total is not None  # a group holds a batch or more
            self.loss_window.add(total, loop.step_count, sum(len(x) for x, _ in group))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.loop.call_started()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.loop.release()

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Steps through Lightning (inspected ones, 16-mixed, DDP): clipped here, after Lightning
        unscaled 16-mixed gradients and after the callbacks saw them."""
        self.loop.clip()

    def on_train_start(self) -> None:
        if self.optimizer_overrides:
            optimizer = cast(LightningOptimizer, self.optimizers()).optimizer  # configure_optimizers returns one
            for group in optimizer.param_groups:
                group.update(self.optimizer_overrides)
            scheduler = cast("Optional[torch.optim.lr_scheduler.LRScheduler]", self.lr_schedulers())  # configure_optimizers gives one at most
            if scheduler is not None and "lr" in self.optimizer_overrides and hasattr(scheduler, "base_lrs"):  # not ReduceLROnPlateau's
                scheduler.base_lrs = [self.optimizer_overrides["lr"]] * len(optimizer.param_groups)
        self.loop.start(self)

    def to_model(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        """(x, y) on the model's device, floats in its dtype (float64 under precision 64), for
        evaluations outside Lightning's loop, which does this conversion itself."""
        return on_device((x, y), self.device, next(self.model.parameters()).dtype)

    def on_validation_epoch_end(self) -> None:
        self.validated = not self.trainer.sanity_checking  # this epoch's val_loss is there for a ReduceLROnPlateau

    def on_train_epoch_end(self) -> None:
        """The scheduler's epoch step, after the epoch's validation (Lightning's order); a
        ReduceLROnPlateau steps on val_loss, and only in the epochs that validate."""
        scheduler = cast("Optional[torch.optim.lr_scheduler.LRScheduler]", self.lr_schedulers())  # configure_optimizers gives one at most
        if scheduler is not None and not on_val_loss(scheduler):
            scheduler.step()
        elif scheduler is not None and self.validated:
            cast(Any, scheduler).step(float(self.trainer.callback_metrics["val_loss"]))
        self.validated = False

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def _evaluate(self, batch: Batch, stage: str, metrics: Optional[MetricCollection]) -> None:
        x, y = batch
        prediction = self.model(x)
        self.log(f"{stage}_loss", self.loss_fn(prediction, y), on_epoch=True, batch_size=len(x), sync_dist=True)
        # Lightning's x-axis counts calls (several optimizer steps each); "step" sets it to the step
        self.log("step", float(self.global_step), on_epoch=True, batch_size=len(x))
        if metrics is not None:
            prediction = self.predict_targets(prediction)
            if stage == "test" and self.target_scale is not None:
                mean, std = (t.to(y) for t in self.target_scale)
                prediction, y = prediction * std + mean, y * std + mean
            metrics.update(prediction, y)
            # logging the collection lets Lightning compute it once per epoch and reset it
            self.log_dict(metrics, on_epoch=True, on_step=False, batch_size=len(x))

    def predict_targets(self, prediction: torch.Tensor) -> torch.Tensor:
        """Class labels (argmax of the logits) for classification, the outputs themselves for regression."""
        return prediction.argmax(dim=1) if self.is_classifier else prediction

    @property
    def is_classifier(self) -> bool:
        return isinstance(self.loss_fn, nn.CrossEntropyLoss)

    def configure_optimizers(self) -> Any:
        if self.loop.holds_optimizer_state:  # a stack: its step holds the K optimizers' states, stacked
            return None
        optimizer = self.make_optimizer(self.model.parameters())
        if self.make_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.make_scheduler(optimizer), "interval": "epoch"}}


class StackTrainee(Trainee):
    """``Trainee`` under a stack's fit (``stack.train``), which hands Lightning its own batches,
    cut from tensors already on the device (a solo run's data module does the same for its own)."""

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """They need no move: Lightning's generic walk over a call's list of batches cost ~12 us a
        step (measured, 3->64->1 MLP)."""
        first = batch[0][0]
        if isinstance(first, torch.Tensor) and first.device == device:
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
