"""The progress bar: Lightning's tqdm bar, one for the whole run, counting optimizer steps."""

import math
import sys
import time
from typing import TYPE_CHECKING, Any, Optional, Union, cast

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

if TYPE_CHECKING:  # the bar reads the module's loss window
    from microtrain.engine.module import Trainee


class StepProgressBar(TQDMProgressBar):
    """One bar over the run's optimizer steps (a Lightning call may take several), with the epoch,
    the step and ``loss``, the mean of the last window LossWatch read: no sync and no ``self.log``
    call (~0.27 ms each) is added to training.

    It redraws at most every ``REDRAW_EVERY_S``: a tiny model's epoch lasts a few ms, and
    Lightning's bar, redrawn and reset at every epoch's start and end, cost ~0.25 ms an epoch
    (measured). Validation, one batch or a few, gets no bar of its own.
    """

    REDRAW_EVERY_S = 0.1

    def __init__(self) -> None:
        super().__init__()
        self._drawn_at = float("-inf")

    def init_train_tqdm(self) -> Tqdm:
        """The run's bar, drawn first with its total (a resumed run starts where it stopped)."""
        trainer = self.trainer
        return bar(trainer.current_epoch, planned_steps(trainer), trainer.global_step, position=2 * self.process_position, disable=self.is_disabled)

    def on_train_epoch_start(self, trainer: "L.Trainer", *args: Any) -> None:
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}", refresh=False)

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", *args: Any) -> None:
        if time.monotonic() - self._drawn_at >= self.REDRAW_EVERY_S:
            self._draw(trainer, pl_module)

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        pass

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._draw(trainer, pl_module, refresh=False)
        super().on_train_end(trainer, pl_module)  # closing draws the final step and loss

    def _draw(self, trainer: "L.Trainer", pl_module: "L.LightningModule", refresh: bool = True) -> None:
        bar = self.train_progress_bar
        bar.n = trainer.global_step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        if refresh:
            bar.refresh()
        self._drawn_at = time.monotonic()

    def on_validation_start(self, *args: Any) -> None:
        pass

    def on_validation_batch_start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_validation_end(self, *args: Any) -> None:
        pass  # val_loss, logged by then, shows at the next redraw

    def get_metrics(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items | shown(trainer.global_step, cast("Trainee", pl_module).loss_window.last_mean)


def bar(epoch: int, total: Optional[Union[int, float]], initial: int, **options: Any) -> Tqdm:
    """Lightning's tqdm bar over a run's optimizer steps, drawn to stdout."""
    return Tqdm(
        desc=f"Epoch {epoch}",
        total=total,
        initial=initial,
        leave=True,
        dynamic_ncols=True,
        file=sys.stdout,
        smoothing=0,
        bar_format=TQDMProgressBar.BAR_FORMAT,
        **options,
    )


def shown(step: int, loss: float) -> dict[str, Any]:
    """The bar's step and loss (the loss once a window has been read: not NaN)."""
    return {"step": step, **({"loss": f"{loss:.4g}"} if loss == loss else {})}


def planned_steps(trainer: "L.Trainer") -> Optional[Union[int, float]]:
    """Optimizer steps the run will take: max_steps, or max_epochs times the steps of an epoch."""
    per_epoch = getattr(trainer.train_dataloader, "batches_per_epoch", None)
    if per_epoch:  # an accumulated step takes several batches (the epoch's last one maybe fewer)
        per_epoch = math.ceil(per_epoch / cast("Trainee", trainer.lightning_module).loop.accumulate)
    by_epochs = per_epoch * trainer.max_epochs if per_epoch and trainer.max_epochs and trainer.max_epochs > 0 else None
    by_steps = trainer.max_steps if trainer.max_steps > 0 else None
    known = [n for n in (by_epochs, by_steps) if n is not None]
    return min(known) if known else None


class StepsBar:
    """The same bar for a run whose steps ``stack.train.StackedRun`` takes (a solo run: a stack of
    one), drawn from its own counts: Lightning's bar reads the Trainer's, which a stack does not
    advance. Redrawn at most every ``StepProgressBar.REDRAW_EVERY_S``, for the reason above."""

    def __init__(self, total: Optional[Union[int, float]], initial: int) -> None:
        self.bar = bar(0, total, initial)
        self._drawn_at = float("-inf")

    def show(self, epoch: int, step: int, loss: float) -> None:
        if time.monotonic() - self._drawn_at >= StepProgressBar.REDRAW_EVERY_S:
            self._set(epoch, step, loss)
            self.bar.refresh()
            self._drawn_at = time.monotonic()

    def close(self, epoch: int, step: int, loss: float) -> None:
        self._set(epoch, step, loss)
        self.bar.close()  # draws the final line once

    def _set(self, epoch: int, step: int, loss: float) -> None:
        self.bar.set_description(f"Epoch {epoch}", refresh=False)
        self.bar.n = step
        self.bar.set_postfix(shown(step, loss), refresh=False)
