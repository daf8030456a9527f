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

from microtrain.data.batches import Batch


class LossWindow:
    """The training losses of the last few steps, kept on the device.

    Reading a loss with ``.item()`` waits for the device (a CPU-GPU sync point), so each step
    only keeps a reference to its (detached) loss; ``LossWatch`` reads the whole window with
    one copy every N steps.
    """

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.first_step = 0
        self.rows = 0  # training rows seen since the last drain, for samples/s
        self.last_mean: float = float("nan")  # the last window's mean loss, shown by the progress bar

    def add(self, loss: torch.Tensor, step: int, rows: int) -> None:
        if not self.losses:
            self.first_step = step
        self.losses.append(loss)
        self.rows += rows

    @property
    def count(self) -> int:
        return len(self.losses)

    def drain(self) -> tuple[int, list[float]]:
        """(1-based number of the first step, the losses) since the last drain; this syncs with the device."""
        values = torch.stack(self.losses).float().tolist() if self.losses else []
        self.losses, self.rows = [], 0
        if values:
            self.last_mean = sum(values) / len(values)
        return self.first_step, values


def _clear_grads(params: list[torch.Tensor]) -> None:
    """What ``optimizer.zero_grad(set_to_none=True)`` does, without the profiler context and
    checks wrapped around it: ~15 us a step, a tenth of a tiny model's step (measured here)."""
    for param in params:
        param.grad = None


def _never(step: int) -> bool:
    return False


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
    ):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.loss_fn = loss_fn
        self.make_optimizer = make_optimizer
        self.make_scheduler = make_scheduler
        self.loss_window = LossWindow()
        self.fast_path = False  # decided in on_train_start
        # What training calls: the model itself, or its torch.compile-d wrapper (compile_model).
        # Kept out of the module tree, or the checkpoint would hold every parameter twice.
        object.__setattr__(self, "forward_model", model)
        self.needs_hooks: Callable[[int], bool] = _never  # the steps callbacks must see
        self.val_metrics = val_metrics
        self.test_metrics = test_metrics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def to_model(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        """(x, y) on the model's device, floats in its dtype (float64 under precision 64), for
        evaluations outside Lightning's loop, which does this conversion itself."""
        dtype = next(self.model.parameters()).dtype
        y = y.to(self.device, dtype=dtype) if y.is_floating_point() else y.to(self.device)
        return x.to(self.device, dtype=dtype), y

    def compile_model(self) -> None:
        """Train through ``torch.compile(model)``. The compiled wrapper is kept out of the module
        tree (``object.__setattr__``), so parameter names, checkpoints and inspection still see
        ``weight``, ``fc1.weight``, ... of the one model both share."""
        object.__setattr__(self, "forward_model", torch.compile(self.model))

    def training_step(self, batches: list[Batch], batch_idx: int) -> None:
        """One optimizer step per (x, y) in ``batches``: Lightning's per-call overhead (~0.3 ms)
        is paid once for several steps of a tiny model (``trainer.steps_per_call``)."""
        optimizer = self.optimizers()
        # read once: each is a chain of attribute lookups, a few us a step on a tiny model
        step, last = self.global_step, self.trainer.max_steps
        model, loss_fn, window = self.forward_model, self.loss_fn, self.loss_window
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for x, y in batches:
            if 0 < last <= step:
                break
            prediction = model(x)  # forward
            loss = loss_fn(prediction, y)  # loss
            # The graph keeps what backward needs; a name kept on the outputs would hold them
            # into the next forward: ~3 % slower on the 256->1024->256 MLP (measured).
            del prediction
            _clear_grads(params)  # optimizer.zero_grad(set_to_none=True)
            if self.fast_path and not self.needs_hooks(step):
                loss.backward()  # backward
                self._plain_step(optimizer)  # step
            else:
                self.manual_backward(loss)  # backward, with Lightning's hooks and loss scaling
                # step: Lightning first calls the callbacks' on_before_optimizer_step, which is
                # where ParameterInspector reads this step's weights and gradients.
                optimizer.step()
            step += 1
            window.add(loss.detach(), step, len(x))

    @staticmethod
    def _plain_step(optimizer: Any) -> None:
        """The optimizer's own step, counted by Lightning as its ``LightningOptimizer.step`` counts it,
        without the hook dispatch around it (~60 us a step, as long as a tiny model's whole step).
        Only taken where the strategy and precision add nothing to a step (see ``fast_path``)."""
        optimizer._on_before_step()
        optimizer.optimizer.step()
        optimizer._on_after_step()

    def on_train_start(self) -> None:
        from lightning.pytorch.strategies import SingleDeviceStrategy

        # Loss scaling (16-mixed) needs every step to go through Lightning, and so does DDP, whose
        # manual_backward prepares the gradient reducer: every rank must take the same path.
        single = type(self.trainer.strategy) is SingleDeviceStrategy
        self.fast_path = single and self.trainer.precision != "16-mixed"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints written before forward_model left the module tree held its parameters twice."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("forward_model.")]:
            del state[key]

    def on_train_epoch_end(self) -> None:
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
        # Lightning's x-axis counts calls (several optimizer steps each); "step" sets it to the step
        self.log("step", float(self.global_step), on_epoch=True, batch_size=len(x))
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
