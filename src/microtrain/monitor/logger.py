"""The run's TensorBoard logger: Lightning's ``TensorBoardLogger``, writing into
``<run>/tensorboard`` (``monitor.tags.events_folder``) under microtrain's tag names, with the
Custom Scalars layout written first."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from microtrain.monitor import events  # noqa: F401 -- its checksums for this logger's writer too
from microtrain.monitor import tags
from microtrain.monitor.activations import hidden_layers


class RunLogger(TensorBoardLogger):
    def __init__(self, run_dir: Path, purge_step: Optional[int] = None, layout: Optional[dict] = None):
        # name="" and version="tensorboard": the event files go to <run>/tensorboard, a run named
        # "tensorboard" (and "<job>/tensorboard" in a sweep) rather than "."
        super().__init__(save_dir=str(run_dir), name="", version=tags.EVENTS, default_hp_metric=False, purge_step=purge_step)
        self._layout = layout

    @property
    def experiment(self) -> Any:
        fresh = self._experiment is None
        writer = super().experiment
        if fresh and self._layout and writer is not None:
            writer.add_custom_scalars(self._layout)  # the Custom Scalars tab's charts
        return writer

    @rank_zero_only
    def save(self) -> None:
        """Lightning writes ``hparams.yaml`` once, at the first checkpoint, before the run's
        hyper-parameters are known (it stayed ``{}``): here it is rewritten once they are
        (``monitor.hparams.log_hparams``), and left out before."""
        if self._experiment is not None:
            self._experiment.flush()
        if self.hparams and Path(self.log_dir).is_dir():
            import yaml

            from microtrain.run.folder import write_text_atomic

            # plain values (monitor.hparams.hparams_of), in order; yaml's C dumper: ~10x OmegaConf's
            dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
            text = yaml.dump(dict(self.hparams), Dumper=dumper, sort_keys=False, allow_unicode=True)
            write_text_atomic(Path(self.log_dir) / self.NAME_HPARAMS_FILE, text)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        """Lightning's metrics (val_loss, val_r2, epoch, ...) under their TensorBoard tags."""
        super().log_metrics({tags.tensorboard_tag(k): v for k, v in metrics.items()}, step)


def tensorboard_layout(cfg: Any, prepared: Any) -> dict:
    """The Custom Scalars layout of a run with this config (``monitor.tags.layout``)."""
    model = prepared.module.model
    layers = [name for name, _ in hidden_layers(model)] if cfg.log.inspect and cfg.log.activations else []
    splits = prepared.splits
    return tags.layout(
        [n for n, _ in model.named_parameters()], layers, cfg.log.inspect and cfg.log.curvature, splits.val is not None, splits.test is not None
    )
