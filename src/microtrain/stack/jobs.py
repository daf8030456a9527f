"""One job of a stacked group, and everything it leaves in its folder, as a solo run would:
``config.yaml``, ``data_info.json``, its TensorBoard run (the same tags), ``checkpoints/last.ckpt``
and ``best.ckpt`` in Lightning's format, and ``metrics.json``."""

import math
from pathlib import Path
from typing import Any, Optional, cast

from collections.abc import Callable, Iterable, Sequence

import torch
from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import DictConfig

from microtrain.errors import ConfigError
from microtrain.monitor import tags
from microtrain.monitor.events import EventFile
from microtrain.monitor.hparams import log_hparams
from microtrain.monitor.logger import RunLogger, tensorboard_layout
from microtrain.monitor.loss import diverged_message, divergence
from microtrain.monitor.scalars import ScalarBuffer
from microtrain.run import folder as run_folder
from microtrain.run import resume as run_resume
from microtrain.run.checkpoints import checkpoint_callbacks
from microtrain.engine.build import Prepared, prepare
from microtrain.engine.loss_scale import PRECISION_KEY
from microtrain.engine.fit import check_optimize_metric
from microtrain.engine.trainer import build_callbacks
from microtrain.run.checkpoint_format import epoch_end_checkpoint
from microtrain.run.checksums import sealed

Snapshot = dict[str, Any]  # what a checkpoint needs of one moment of one job


class StackedJob:
    """A job's config, folder, seeded model and optimizer, and its progress in the group."""

    def __init__(self, cfg: DictConfig, run_dir: Path, overrides: Optional[list[str]] = None, like: Optional["StackedJob"] = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.overrides = overrides or []  # its command-line overrides: HParams shows the keys they set
        # the seeded model and the data, as its solo run has them (the data prepared once a group: ``like``)
        self.prepared: Prepared = prepare(cfg, like=like.prepared if like is not None else None)
        check_optimize_metric(cfg, self.prepared)  # a name the run does not report would rank the sweep by nothing
        module = self.prepared.module
        self.model = module.model
        self.optimizer = module.make_optimizer(self.model.parameters())
        self.scheduler = module.make_scheduler(self.optimizer) if module.make_scheduler is not None else None
        self.has_val = self.prepared.splits.val is not None
        self.checkpointers = checkpoint_callbacks(self.run_dir / run_folder.CHECKPOINTS, self.has_val, cfg.checkpoint.every_n_steps, 0.0)
        # callbacks=early_stopping: the job's own EarlyStopping, which stops it alone (stack.groups)
        logged = ["val_loss", *(cast("Iterable[str]", module.val_metrics.keys()) if module.val_metrics is not None else [])] if self.has_val else []
        self.stoppers = cast("list[EarlyStopping]", build_callbacks(cfg.callbacks, logged))  # stack.groups stacks no other callback
        self.timer: Optional[Any] = None  # trainer.max_time: the group's Timer, whose state each checkpoint saves
        self.stopped: Optional[tuple[int, int, float]] = None  # (step, epochs, seconds) when its early stopping ended it
        self.start_step, self.start_epoch, self.start_batch = 0, 0, 0
        self.changes: list[str] = []  # what a resume changed in its config
        self.solo = False  # a solo run (stack.alone), not a job of a sweep
        self.status = "ok"
        self.error: Optional[str] = None
        self.saved_callbacks: dict[str, Any] = {}
        self.saved_scaler: Optional[dict[str, Any]] = None  # 16-mixed: its GradScaler's state at the checkpoint resumed
        self.scaler: Optional[Callable[[], dict[str, Any]]] = None  # 16-mixed: its loss scale's state of now (the group's)
        self.diverged: dict[str, Any] = {}  # the step and the parameter, for metrics.json
        self.best_score: Optional[float] = None
        self.best: Optional[dict[str, Any]] = None  # the best epoch's moment (StackedRun keeps its weights)
        self.best_written = True
        self.current_score: Optional[float] = None  # the last validation's val_loss
        self.best_scored = True  # best_score is in the ModelCheckpoint's state (_keep_scores)
        # written as ParameterInspector's: a 64-job grid step 0.44 ms, 0.52 writing every 64 values
        self.scalars = ScalarBuffer(max_items=1024, max_seconds=2.0)
        self.epoch_losses: list[float] = []
        self.window: list[float] = []
        self.first_nonfinite: Optional[str] = None  # set by the group's inspection
        self.shown_loss = math.nan  # the last log window's mean, for a solo run's progress bar
        self.logger: Optional[RunLogger] = None

    @property
    def last_path(self) -> Path:
        return self.run_dir / run_folder.CHECKPOINTS / "last.ckpt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / run_folder.CHECKPOINTS / "best.ckpt"

    def resume(self, changes: Sequence[str] = ()) -> None:
        """Continue from ``checkpoints/last.ckpt``: weights, optimizer and scheduler state, the
        best so far, and the step and epoch it ended at. ``changes``: what ``run.resume`` applied
        to its config (a new lr or weight decay is set on the restored optimizer, as a solo run's)."""
        try:
            saved = torch.load(self.last_path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 -- a damaged file is one line, not a traceback
            raise ConfigError(f"{self.last_path} cannot be read ({type(err).__name__}); delete it to restart the job") from None
        self.model.load_state_dict({k.removeprefix("model."): v for k, v in saved["state_dict"].items()})
        self.optimizer.load_state_dict(saved["optimizer_states"][0])
        if self.scheduler is not None and saved["lr_schedulers"]:
            self.scheduler.load_state_dict(saved["lr_schedulers"][0])
        changed = {k: self.cfg.optimizer[k] for k in run_resume.APPLIED_TO_OPTIMIZER if any(c.startswith(f"optimizer.{k}:") for c in changes)}
        for group in self.optimizer.param_groups:
            group.update(changed)
        if self.scheduler is not None and "lr" in changed and hasattr(self.scheduler, "base_lrs"):  # not ReduceLROnPlateau's
            self.scheduler.base_lrs = [changed["lr"]] * len(self.optimizer.param_groups)
        self.changes = list(changes)
        for callback in [*self.checkpointers, *self.stoppers]:
            if callback.state_key in saved["callbacks"]:
                callback.load_state_dict(saved["callbacks"][callback.state_key])
        self.saved_callbacks = saved["callbacks"]  # the Timer's elapsed time, read by the group
        self.saved_scaler = saved.get(PRECISION_KEY)
        best = self.checkpointers[0]
        if self.has_val and best.best_model_score is not None:
            self.best_score = float(best.best_model_score)
        # a checkpoint.every_n_steps checkpoint ends mid-epoch: the group goes on from that batch of that epoch
        loader = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
        epochs = saved["loops"]["fit_loop"]["epoch_progress"]["current"]
        mid = epochs["processed"] < epochs["ready"]
        self.start_step, self.start_epoch = saved["global_step"], saved["epoch"] + (0 if mid else 1)
        self.start_batch = loader["position"] if mid else 0
        if any(s.stopped_epoch > 0 or s.wait_count >= s.patience for s in self.stoppers):
            # early stopping had ended it (its last.ckpt is of that epoch): it stays stopped, frozen
            self.stopped = (self.start_step, self.start_epoch, 0.0)

    def open(self) -> None:
        """The job's TensorBoard run and its config files; a resumed run hides the steps it redoes."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.cfg.resume:
            run_resume.record(self.run_dir, self.changes, self.start_step)  # history.jsonl
        elif self.cfg.get("overwrite") and run_folder.earlier_run(self.run_dir):
            run_folder.clear_run(self.run_dir)  # overwrite=true, as a solo run: once the job is built, so a refused job keeps it
        # a resumed job hides what its first part logged after its checkpoint at step S (points of
        # steps > S); the points at S itself (that epoch's validation) came before it and stay, as in a solo run
        purge = self.start_step + 1 if self.start_step else None
        # the training's events without an open file or thread each (1,024 jobs: monitor.events); the
        # logger writes the run's end (HParams, the layout, hparams.yaml) after them, with no purge of its own
        self.writer = EventFile(tags.events_folder(self.run_dir), purge)
        self.logger = RunLogger(self.run_dir, layout=tensorboard_layout(self.cfg, self.prepared))
        run_folder.write_text_atomic(self.run_dir / run_folder.CONFIG, run_folder.yaml_text(self.cfg))
        run_folder.write_json_atomic(self.run_dir / run_folder.DATA_INFO, self.prepared.data_info)
        if self.prepared.dataset.truth:
            run_folder.write_json_atomic(self.run_dir / run_folder.DATA_TRUTH, self.prepared.dataset.truth)
        if self.prepared.optimum is not None:
            self.scalars.add("train_loss_optimum", self.prepared.optimum, self.start_step)

    @property
    def active(self) -> bool:
        """Still training: not diverged, failed or stopped early (those are frozen: learning rate 0, no more writes)."""
        return self.status == "ok" and self.stopped is None

    def diverge(self, step: int, loss: float, names: list[str], grads: list[torch.Tensor]) -> None:
        """Marked diverged (``grads``: this job's own), with what a solo run's guard would say;
        the group freezes it (learning rate 0, no more writes) and its neighbours go on."""
        name, where = divergence(self.first_nonfinite, dict(zip(names, grads)))
        self.status = "diverged"
        self.error = diverged_message(step, loss, where)
        self.diverged = {"diverged_at_step": step, "parameter": name}
        self.scalars.flush(self.writer, force=True)

    def read_losses(self, losses: list[float], first: int, log_at: Optional[int], rate: float, names: list[str], grads: list[torch.Tensor]) -> bool:
        """Its losses of steps first+1... (one host copy for the group): into its epoch's and its
        log window's, the window's mean logged at step ``log_at``; or diverged (True) at the first
        that is not finite (``grads``: its own, of the last step)."""
        bad = next((i for i, value in enumerate(losses) if not math.isfinite(value)), None)
        if bad is not None:
            self.diverge(first + bad + 1, losses[bad], names, grads)
            return True
        self.epoch_losses += losses
        self.window += losses
        if log_at is not None:
            self.shown_loss = sum(self.window) / len(self.window)
            self.scalars.add("train_loss_step", self.shown_loss, log_at)
            self.scalars.add("samples_per_s", rate, log_at)
            self.window = []
        self.scalars.flush(self.writer)
        return False

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def snapshot(
        self,
        params: dict[str, torch.Tensor],
        state: list[dict[str, torch.Tensor]],
        epochs: int,
        step: int,
        batches_done: Optional[int] = None,
        moment: Optional[dict[str, Any]] = None,
        mid_epoch: bool = False,
    ) -> Snapshot:
        """What a checkpoint holds, in torch.optim's and Lightning's formats: of now, or of the
        ``moment`` recorded when the job had these weights (its best epoch)."""
        moment = moment or self.moment(epochs, step, batches_done)
        return {
            "state_dict": {f"model.{name}": value for name, value in params.items()},
            # torch.optim's state_dict: its state by parameter index (no empty slots), its groups
            "optimizer": {"state": {i: slot for i, slot in enumerate(state) if slot}, "param_groups": moment["param_groups"]},
            "schedulers": moment["schedulers"],
            "epochs": moment["epochs"],
            "step": moment["step"],
            "batches_done": moment["batches_done"],
            "mid_epoch": mid_epoch,
            "precision": moment["precision"],
        }

    def moment(self, epochs: int, step: int, batches_done: Optional[int] = None) -> dict[str, Any]:
        """Everything of now that a checkpoint holds besides weights and optimizer state."""
        return {
            "epochs": epochs,
            "step": step,
            "batches_done": batches_done,
            "schedulers": [self.scheduler.state_dict()] if self.scheduler is not None else [],
            "param_groups": self._param_groups(),
            "precision": self.scaler() if self.scaler is not None else None,
        }

    def _param_groups(self) -> list[dict[str, Any]]:
        """``optimizer.state_dict()["param_groups"]`` of now, copied: the hyper-parameters and the
        parameters' indices. Built here because ``state_dict()`` also packs the whole state, and a
        deep copy of it cost ~1 ms an epoch for 64 jobs (measured); the values are numbers,
        flags and tuples, or a tensor (copied)."""
        groups, start = [], 0
        for group in self.optimizer.param_groups:
            packed = {key: value.clone() if isinstance(value, torch.Tensor) else value for key, value in group.items() if key != "params"}
            packed["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(packed)
        return groups

    def improves(self, score: float) -> bool:
        return self.best_score is None or score < self.best_score

    def record_val(self, score: float, moment: Optional[dict[str, Any]]) -> None:
        """ModelCheckpoint's bookkeeping for best.ckpt (monitor val_loss, mode min); ``moment``
        is given when the score is the job's best, whose weights the caller keeps."""
        self.current_score = score  # handed to the ModelCheckpoint when a checkpoint is written (_keep_scores)
        if moment is not None:
            self.best_score = score
            self.best, self.best_written, self.best_scored = moment, False, False

    def _keep_scores(self) -> None:
        """The scores record_val took, into best.ckpt's ModelCheckpoint, whose state each
        checkpoint saves: once a write rather than for each job at each validation."""
        best = self.checkpointers[0]
        if self.current_score is not None:
            best.current_score = torch.tensor(self.current_score)
        if not self.best_scored and self.best_score is not None:
            path, score = str(self.best_path), self.best_score
            best.best_model_score = best.kth_value = torch.tensor(score)
            best.best_model_path = best.kth_best_model_path = path
            best.best_k_models = {path: torch.tensor(score)}
            self.best_scored = True

    def checkpoint_files(self, last: Snapshot, shape: dict[str, int], best_weights: Callable[..., tuple[Any, Any]]) -> list[tuple[Path, Any]]:
        """last.ckpt, and best.ckpt when a better epoch came since it was last written
        (``best_weights``: that epoch's parameters and optimizer state), as (path, writer) pairs
        for ``run.folder.write_all_atomic``."""
        self._keep_scores()
        for checkpointer in self.checkpointers:  # the ones writing last.ckpt (all but best.ckpt's)
            if checkpointer.monitor is None:
                checkpointer.best_model_path = str(self.last_path)
        files = []
        if self.best is not None and not self.best_written:
            params, state = best_weights()
            files.append((self.best_path, self._saver(self.snapshot(params, state, 0, 0, moment=self.best), shape)))
            self.best_written = True
        files.append((self.last_path, self._saver(last, shape)))
        self.last_path.parent.mkdir(parents=True, exist_ok=True)
        return files

    def _saver(self, snap: Snapshot, shape: dict[str, int]) -> Callable[[Path], None]:
        callbacks = [*self.checkpointers, *self.stoppers, *([self.timer] if self.timer is not None else [])]
        checkpoint = epoch_end_checkpoint(
            snap["state_dict"],
            snap["optimizer"],
            snap["schedulers"],
            snap["epochs"],
            snap["step"],
            callbacks=callbacks,
            batches_done=snap["batches_done"],
            mid_epoch=snap["mid_epoch"],
            precision=snap["precision"],
            **shape,
        )
        return lambda partial: torch.save(sealed(checkpoint), partial)

    def finish(self, metrics: dict[str, Any]) -> None:
        """metrics.json, the HParams entry, and every event on disk."""
        self.scalars.flush(self.writer, force=True)
        if metrics.get("status") in ("ok", "diverged"):  # a diverged job is a row of the HParams table too
            if self.solo:  # its own experiment, or its sweep's (a basic launcher's job), as Hydra says
                log_hparams(self.logger, self.cfg, metrics)
            else:  # the sweep's end writes the experiment
                log_hparams(self.logger, self.cfg, metrics, self.overrides, experiment=False)
        assert self.logger is not None  # open() made it, before the group trained
        self.logger.finalize("success" if metrics.get("status") == "ok" else "failed")  # hparams.yaml, flushed events
        run_folder.write_json_atomic(self.run_dir / run_folder.METRICS, metrics)
