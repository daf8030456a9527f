"""The progress bar: Lightning's tqdm bar, counting optimizer steps and showing the latest loss."""

from typing import Any, Union

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """Counts optimizer steps (a Lightning call may take several) and shows ``loss``, the mean of
    the last window LossWatch read: no sync and no ``self.log`` call (~0.27 ms each) is added to
    training. Validation, one batch or a few, gets no bar of its own."""

    def __init__(self) -> None:
        super().__init__()
        self._epoch_start = 0

    @property
    def total_train_batches(self) -> Union[int, float]:
        loader = self.trainer.train_dataloader
        return getattr(loader, "batches_per_epoch", None) or super().total_train_batches

    def on_train_epoch_start(self, trainer: "L.Trainer", *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._epoch_start = trainer.global_step

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", *args: Any) -> None:
        bar = self.train_progress_bar
        bar.n = min(trainer.global_step - self._epoch_start, bar.total or bar.n)
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def on_validation_start(self, *args: Any) -> None:
        pass

    def on_validation_batch_start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self._train_progress_bar is not None:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        items["step"] = trainer.global_step
        loss = pl_module.loss_window.last_mean
        if loss == loss:  # not NaN: a window has been read
            items["loss"] = f"{loss:.4g}"
        return items
