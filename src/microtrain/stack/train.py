"""``train_group``: K jobs that agree on everything but their hyper-parameters, trained as one
stacked model, each ending with the files, curves and metrics of its solo run.

The group is a run of the one engine: ``engine.module.Trainee`` under a Lightning
``Trainer.fit``, its steps taken by ``StackedRun`` (each one functional call of the K models,
``stack.step``), which is also the Lightning callback that ends each epoch for every job."""

import math
import signal
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Optional, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from microtrain import device as devices
from microtrain.console import quiet_libraries
from microtrain.data.batches import Batch, on_device
from microtrain.errors import ConfigError
from microtrain.run import interrupt
from microtrain.stack.batches import StackedBatches
from microtrain.stack.best import BestEpochs
from microtrain.stack.epoch_end import end_epoch, write_last
from microtrain.stack.finish import end_jobs, finish_jobs
from microtrain.stack.inspect import StackedInspector
from microtrain.stack.jobs import StackedJob
from microtrain.stack.plan import failed
from microtrain.stack.step import StackedModel, StackedStep
from microtrain.engine import loss_scale
from microtrain.engine.build import multiply_adds_per_step, steps_per_call
from microtrain.engine.compiled import compiles
from microtrain.engine.module import StackTrainee, WholeSteps
from microtrain.engine.trainer import stack_trainer
from microtrain.monitor.progress import StepsBar
from microtrain.run.checkpoints import CheckpointBudget


def train_group(
    cfgs: list[DictConfig], run_dirs: list[Path], resume: list[bool], overrides: Optional[list[list[str]]] = None
) -> list[dict[str, Any]]:
    """Train the jobs stacked; returns each job's metrics (also in its metrics.json)."""
    quiet_libraries()  # as a solo run: no "GPU available" lines, tips or known warnings of Lightning's
    overrides = overrides or [[] for _ in cfgs]
    jobs: list[StackedJob] = []
    refused: dict[int, dict[str, Any]] = {}
    for k, (cfg, run_dir, job_overrides) in enumerate(zip(cfgs, run_dirs, overrides)):
        try:
            jobs.append(StackedJob(cfg, run_dir, job_overrides, like=jobs[0] if jobs else None))
        except ConfigError as err:  # what its solo run refuses once its data is known (optimize.metric): it alone fails
            refused[k] = failed(Path(run_dir), str(err), since=math.inf)  # a folder holding an earlier run keeps it
    for job in [job for job, again in zip(jobs, [again for k, again in enumerate(resume) if k not in refused]) if again]:
        job.resume()
    trained = iter(StackedRun(jobs).run() if jobs else [])
    return [refused[k] if k in refused else next(trained) for k in range(len(cfgs))]


class StackedRun(L.Callback, WholeSteps):
    """The group's steps for ``Trainee`` (``engine.module.Steps``: each step of the K jobs taken
    whole, ``stack.step`` clipping inside it) and its epoch ends, as a callback."""

    holds_optimizer_state = True  # Trainee builds no optimizer: the stacked step holds the K jobs' states

    def __init__(self, jobs: list[StackedJob], solo: bool = False):
        """``solo``: a solo run, a stack of one that was never part of a larger one (``stack.alone``)."""
        self.jobs = jobs
        cfg = self.cfg = jobs[0].cfg
        plan = devices.resolve(cfg.device)
        self.device = torch.device("cuda" if plan.accelerator == "cuda" else "cpu")
        self.dtype = torch.float64 if str(cfg.device.precision) in ("64", "64-true") else torch.float32
        splits = jobs[0].prepared.splits
        self.data = StackedBatches(splits.train, [job.cfg.seed for job in jobs], cfg.data.batch_size, self.device, self.dtype)
        self.train = self.data.x, self.data.y
        self.val = None if splits.val is None else on_device(splits.val, self.device, self.dtype)
        self.batch_size, self.batches_per_epoch = self.data.batch_size, self.data.batches_per_epoch
        model = jobs[0].model
        self.multiply_adds = multiply_adds_per_step(cfg, model, splits)
        self.accumulate = cfg.trainer.get("accumulate_grad_batches", 1)  # batches a step, as StepLoop's
        per_call = steps_per_call(cfg, model, splits) * self.accumulate
        val_rows = 0 if splits.val is None else len(splits.val[0])
        eval_rows = max(cfg.data.batch_size or val_rows, 4096)
        self.shape = {
            "steps_per_call": min(per_call, self.batches_per_epoch),  # what a Lightning call of a solo run serves
            "batches_per_epoch": self.batches_per_epoch,
            "val_batches": math.ceil(val_rows / eval_rows) if val_rows else 0,
        }
        self.step_count, self.epoch, self.first_batch = jobs[0].start_step, jobs[0].start_epoch, jobs[0].start_batch
        # read at every step or epoch: kept as ints (a read from the config takes 16-140 us, measured)
        self.max_steps, self.max_epochs = cfg.trainer.max_steps, cfg.trainer.max_epochs
        self.val_every = cfg.trainer.get("check_val_every_n_epoch", 1) or 1
        self.log_every, self.checkpoint_every = cfg.log.every_n_steps, cfg.checkpoint.every_n_steps
        planned = self.data.planned_steps(self.max_epochs, self.max_steps, self.accumulate)
        scaled = str(cfg.device.precision) == "16-mixed"  # each job's own loss scale (engine.loss_scale)
        compile = compiles(cfg, planned, len(jobs), self.multiply_adds, solo)
        self.stacked = StackedStep(
            [j.model for j in jobs],
            [j.optimizer for j in jobs],
            jobs[0].prepared.module.loss_fn,
            self.device,
            self.dtype,
            compile,
            cfg.trainer.get("gradient_clip_val"),
            cfg.trainer.get("gradient_clip_algorithm", "norm"),
            start_step=self.step_count,
            accumulate=self.accumulate,
            loss_scale=loss_scale.initial([j.saved_scaler for j in jobs], self.device) if scaled else None,
            solo=solo,
        )
        self.stacked.full_rows = self.batch_size  # the compiled graph's batch
        for k, job in enumerate(jobs if scaled else []):  # its GradScaler's state in each checkpoint, as a solo run's
            job.scaler = lambda k=k: loss_scale.scaler_state(
                float(self.stacked.varying["loss_scale"][k]), int(cast(torch.Tensor, self.stacked.tracker)[k])
            )
        self.loss_fn = jobs[0].prepared.module.loss_fn
        self.budget = CheckpointBudget(cfg.checkpoint.budget)
        self.inspector = StackedInspector(self.jobs, self.stacked, cfg.log, self.step_count, self.train, planned)
        self.pending: list[torch.Tensor] = []
        self.final: dict[str, list[float]] = {}  # the final weights' losses and metrics, per job (stack.finish)
        self.best = BestEpochs(self.stacked)
        if not all(job.active for job in jobs):  # a resumed job early stopping had ended stays frozen
            self.stacked.set_lr([job.lr() if job.active else 0.0 for job in jobs])
        self.pending_first = self.written_at = self.step_count  # a resumed group goes on with the grid of its first part
        self.stopping = False  # a signal came: the group stops at the next step boundary (a call's end)
        # +trainer.max_time: Lightning's own Timer (its formats, its state in each checkpoint), checked at every step (a solo run: each call)
        max_time = OmegaConf.to_container(cfg.trainer.max_time) if OmegaConf.is_config(cfg.trainer.get("max_time")) else cfg.trainer.get("max_time")
        self.timer = Timer(cast(Any, max_time)) if max_time else None  # {minutes: 5} as a dict, as a solo run's Trainer gets it
        if self.timer is not None:
            self.timer.load_state_dict(jobs[0].saved_callbacks.get(self.timer.state_key, {"time_elapsed": {}}))
        for job in jobs:
            job.timer = self.timer
        self.timed_out, self.plan, self.began_at = False, plan, 0
        self.trainer: Optional[L.Trainer] = None
        self.batch: list[Batch] = []
        self.batches_done, self.grads = 0, cast("list[torch.Tensor]", [])  # of the epoch going on
        self.bar: Optional[StepsBar] = None  # a solo run's, drawn once it trains
        self.planned, self.solo = planned, solo

    def call_started(self) -> None:
        self.stacked.skip_guards(True)

    def release(self) -> None:
        self.stacked.skip_guards(False)

    def done(self) -> bool:
        """Run length reached, time up, or every job stopped (early stopping, divergence)."""
        return (
            0 < self.max_steps <= self.step_count
            or (self.max_epochs is not None and 0 <= self.max_epochs <= self.epoch)
            or self._out_of_time()  # checked before an epoch starts too: no empty epoch (and scheduler step) after time ran out
            or not any(job.active for job in self.jobs)
        )

    def _out_of_time(self) -> bool:
        if self.timer is not None and not self.timed_out and cast(float, self.timer.time_remaining()) <= 0:
            self.timed_out = True
        return self.timed_out

    def run(self) -> list[dict[str, Any]]:
        threads_before = torch.get_num_threads()
        threads = devices.use_threads(self.cfg.device.threads, self.multiply_adds * len(self.jobs))
        for job in self.jobs:
            job.open()
        if self.solo and self.cfg.trainer.enable_progress_bar:
            self.bar = StepsBar(self.planned, self.step_count)
        started = self.started = time.perf_counter()
        self.steps_before = self.step_count  # a resumed group's: its speed counts the steps taken here
        if self.timer is not None:
            self.timer.on_train_start(None, None)  # type: ignore[arg-type]  # it reads neither; its clock starts (a resumed group's time carries on)
        try:
            if not self.done():
                self._fit()
            if not self.stopping:  # not SIGTERM or Ctrl-C before the last epoch (its last.ckpt was written)
                end_jobs(self, [k for k, job in enumerate(self.jobs) if job.active])
        finally:
            torch.set_num_threads(threads_before)
            self.stacked.skip_guards(False)  # whatever happened
            if self.bar is not None:
                ended = self.epoch - (self.epoch > 0 and self.batches_done >= self.batches_per_epoch)  # the last epoch's number
                self.bar.close(ended, self.step_count, self.jobs[0].shown_loss)
        return finish_jobs(self, time.perf_counter() - started, threads)

    def rate(self) -> float:
        """Training samples a second of each job since the group started (in this process)."""
        return (self.step_count - self.steps_before) * self.accumulate * self.batch_size / max(time.perf_counter() - self.started, 1e-9)

    def _fit(self) -> None:
        """The group's epochs under Lightning's fit loop: its count of epochs and steps is the
        group's own (a resumed group's go on from its checkpoints), and it stops the fit itself."""
        module = StackTrainee(StackedModel(self.stacked), self.loss_fn, self.jobs[0].prepared.module.make_optimizer, loop=self)
        batches = self.data.serve(self.shape["steps_per_call"], lambda: self.epoch, (self.epoch, self.first_batch))
        with tempfile.TemporaryDirectory(prefix="microtrain-stack-") as scratch, warnings.catch_warnings():
            # what a stack is by design: no Lightning optimizer, validation in _epoch_end
            warnings.filterwarnings("ignore", message=".*configure_optimizers` returned `None`.*")
            warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no `val_dataloader`.*")
            trainer = stack_trainer(self.plan, self.cfg.trainer.get("deterministic", False), self, scratch)
            try:
                trainer.fit(module, train_dataloaders=batches)
            except SIGTERMException:  # SIGTERM before on_train_start took it over: Lightning's own stop
                interrupt.note(signal.SIGTERM)
                self.stopping = True

    def groups(self, batches: list[Batch]) -> Any:
        """The call's grid steps, one at a time, while the run has steps and time left: a batch
        each, or ``accumulate`` batches as lists (the epoch's last step takes what is left)."""
        for start in range(0, len(batches), self.accumulate):
            if 0 < self.max_steps <= self.step_count or self._out_of_time():
                cast(L.Trainer, self.trainer).should_stop = True  # Lightning ends the epoch: _epoch_end
                return
            group = batches[start : start + self.accumulate]
            self.batch = group if self.accumulate == 1 else [([x for x, _ in group], [y for _, y in group])]  # type: ignore[list-item]
            yield self.batch

    def whole_step(self, x: Any, y: Any) -> None:
        """One grid step of the K jobs: forward, loss, backward and update each (``stack.step``)."""
        before = [p.clone() for p in self.stacked.params] if self.inspector.due(self.step_count) else None
        loss, self.grads = self.stacked(x, y)
        self.pending.append(loss.detach())
        first = (x[0], y[0]) if isinstance(x, list) else (x, y)  # the step's first batch, as a solo run inspects
        if before is not None:
            self.inspector.inspect(self.step_count, before, self.grads, *first)
        self.step_count += 1
        self.batches_done += len(x) if isinstance(x, list) else 1
        if 0 < self.max_steps <= self.step_count:
            cast(L.Trainer, self.trainer).should_stop = True  # no further call: its batches would be cut for nothing
        every, done = self.checkpoint_every, self.batches_done  # inside the epoch (its end writes its own), as a solo run
        if every and self.step_count % every == 0 and done < self.batches_per_epoch and not 0 < self.max_steps <= self.step_count:
            self._drain(self.grads)  # read first: no checkpoint holds a diverged job
            self._checkpoint_mid_epoch(done)

    # Lightning's hooks (StackedRun is the fit's one callback)
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """One process: SIGTERM is noted and acted on at the next call's end (on_train_batch_end),
        where Lightning's own handler would raise its SIGTERMException, without checkpoints (as
        run.checkpoints.InterruptCheckpoint). Signals can be handled in the main thread only."""
        self.trainer = trainer
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, interrupt._note)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches_done, self.first_batch, self.grads = self.first_batch, 0, []
        self.began_at = self.batches_done

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        """A call's end: a train_loss_step point when it passed a multiple of log.every_n_steps, or
        ended the run, as a solo run's (``monitor.loss``). A signal mid-epoch: each training job's
        last.ckpt of this step boundary, then the fit stops without the epoch's end (its validation,
        scheduler and early stopping come when the resumed group ends it)."""
        if self.step_count // self.log_every > self.written_at // self.log_every or 0 < self.max_steps <= self.step_count:
            self._drain(self.grads, log=True)
        if self.bar is not None:
            self.bar.show(self.epoch, self.step_count, self.jobs[0].shown_loss)
        if interrupt.stop_signal() is None or self.batches_done >= self.batches_per_epoch or self.done():
            return
        self._drain(self.grads)
        self._checkpoint_mid_epoch(self.batches_done)
        self.stopping = trainer.should_stop = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopping:  # stopped mid-epoch by a signal (on_train_batch_end)
            return
        if self.timed_out and self.batches_done == self.began_at:  # time ran out before its first step: no epoch
            write_last(self, [k for k, job in enumerate(self.jobs) if job.active], None)  # the last epoch's end (its budget may have skipped it)
            trainer.should_stop = True
            return
        self._drain(self.grads, epoch_end=True)
        self.epoch += 1
        self._epoch_end(self.batches_done)
        if self.stopping or self.done():
            trainer.should_stop = True

    def _checkpoint_mid_epoch(self, batches_done: int) -> None:
        """checkpoint.every_n_steps: every training job's last.ckpt after this step."""
        write_last(self, [k for k, job in enumerate(self.jobs) if job.active], batches_done, mid_epoch=True)

    def _drain(self, grads: list[torch.Tensor], epoch_end: bool = False, log: bool = False) -> None:
        """Read the held losses (one host copy): each job's loss windows, and its divergence guard."""
        if not self.pending:
            return
        losses = torch.stack(self.pending).double().cpu()  # [steps, K]
        first, self.pending, self.pending_first = self.pending_first, [], self.step_count
        rate = self.rate()
        log_now = log or epoch_end and (0 < self.max_steps <= self.step_count or self.timed_out)
        self.written_at = self.step_count if log_now else self.written_at
        at, names = self.step_count if log_now else None, self.stacked.names
        diverged = [
            k
            for k, job in enumerate(self.jobs)
            if job.active and job.read_losses(losses[:, k].tolist(), first, at, rate, names, [g[k] for g in grads])
        ]
        if diverged:  # frozen: its neighbours go on
            self.stacked.set_lr([0.0 if k in diverged else lr for k, lr in enumerate(self.stacked.varying["lr"].tolist())])

    def _epoch_end(self, batches_done: int) -> None:
        end_epoch(self, batches_done)
