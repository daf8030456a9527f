"""``train_group``: K jobs that agree on everything but their hyper-parameters, trained as one
stacked model, each ending with the files, curves and metrics of its solo run."""

import math
import time
from pathlib import Path
from typing import Any, Optional, cast

import torch
from lightning.pytorch.callbacks import Timer
from omegaconf import DictConfig

from microtrain import device as devices
from microtrain.data.batches import TensorBatches
from microtrain.run import folder as run_folder
from microtrain.run import interrupt
from microtrain.stack.best import BestEpochs
from microtrain.stack.finish import finished, interrupted
from microtrain.stack.inspect import StackedInspector
from microtrain.stack.jobs import StackedJob
from microtrain.stack.step import StackedStep
from microtrain.stack.validate import split_metrics
from microtrain.engine.build import multiply_adds_per_step, steps_per_call
from microtrain.internals import early_stop
from microtrain.run.checkpoints import CheckpointBudget

# loop.compile=auto compiles the stacked step when it saves more than it costs: ~26 us a job-step
# (33 eager against 7 compiled, 3->64->1 MLP, 64 jobs), against ~5 s of compiling with a warm cache.
COMPILE_FROM_JOB_STEPS = 200_000


def train_group(
    cfgs: list[DictConfig], run_dirs: list[Path], resume: list[bool], overrides: Optional[list[list[str]]] = None
) -> list[dict[str, Any]]:
    """Train the jobs stacked; returns each job's metrics (also in its metrics.json)."""
    overrides = overrides or [[] for _ in cfgs]
    jobs: list[StackedJob] = []
    for cfg, run_dir, job_overrides in zip(cfgs, run_dirs, overrides):
        jobs.append(StackedJob(cfg, run_dir, job_overrides, like=jobs[0] if jobs else None))
    for job, again in zip(jobs, resume):
        if again:
            job.resume()
    return StackedRun(jobs).run()


class StackedRun:
    def __init__(self, jobs: list[StackedJob]):
        self.jobs = jobs
        cfg = jobs[0].cfg
        self.cfg = cfg
        plan = devices.resolve(cfg.device)
        self.device = torch.device("cuda" if plan.accelerator == "cuda" else "cpu")
        self.dtype = torch.float64 if str(cfg.device.precision) in ("64", "64-true") else torch.float32
        splits = jobs[0].prepared.splits
        self.train_x, self.train_y = self._on_device(splits.train)
        self.val = None if splits.val is None else self._on_device(splits.val)
        batches = [TensorBatches(*splits.train, cfg.data.batch_size, True, job.cfg.seed) for job in jobs]
        self.samplers = [b.sampler for b in batches]
        self.batch_size, self.batches_per_epoch = batches[0].batch_size, batches[0].batches_per_epoch
        model = jobs[0].model
        self.multiply_adds = multiply_adds_per_step(cfg, model, splits)
        per_call = steps_per_call(cfg, model, splits)
        val_rows = 0 if splits.val is None else len(splits.val[0])
        eval_rows = max(cfg.data.batch_size or val_rows, 4096)
        self.shape = {
            "steps_per_call": min(per_call, self.batches_per_epoch),  # what a Lightning call of a solo run serves
            "batches_per_epoch": self.batches_per_epoch,
            "val_batches": math.ceil(val_rows / eval_rows) if val_rows else 0,
        }
        self.step_count, self.epoch, self.first_batch = jobs[0].start_step, jobs[0].start_epoch, jobs[0].start_batch
        self.max_steps, self.max_epochs = cfg.trainer.max_steps, cfg.trainer.max_epochs
        planned = self._planned_steps()
        wanted = cfg.loop.compile
        compile = wanted is True or (wanted == "auto" and planned * len(jobs) >= COMPILE_FROM_JOB_STEPS and self.multiply_adds <= 1_000_000)
        clip = cfg.trainer.get("gradient_clip_val")
        self.step = StackedStep(
            [j.model for j in jobs],
            [j.optimizer for j in jobs],
            jobs[0].prepared.module.loss_fn,
            self.device,
            self.dtype,
            compile,
            clip,
            cfg.trainer.get("gradient_clip_algorithm", "norm"),
            start_step=self.step_count,
        )
        self.loss_fn = jobs[0].prepared.module.loss_fn
        self.budget = CheckpointBudget(cfg.checkpoint.budget)
        self.inspector = StackedInspector(self.jobs, self.step, cfg.log, self.step_count, (self.train_x, self.train_y), planned)
        self.pending: list[torch.Tensor] = []
        self.best = BestEpochs(self.step)
        if not all(job.active for job in jobs):  # a resumed job early stopping had ended stays frozen
            self.step.set_lr([job.lr() if job.active else 0.0 for job in jobs])
        self.pending_first = self.step_count
        self.stopping = False  # a signal came: the group stops at this epoch's end (_epoch_end)
        # +trainer.max_time: Lightning's own Timer (its duration formats, its state in each checkpoint),
        # checked at every step, where a solo run checks it after each Lightning call
        self.timer = Timer(cfg.trainer.max_time) if cfg.trainer.get("max_time") else None
        if self.timer is not None:
            self.timer.load_state_dict(jobs[0].saved_callbacks.get(self.timer.state_key, {"time_elapsed": {}}))
        for job in jobs:
            job.timer = self.timer
        self.timed_out = False

    def _on_device(self, pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = pair
        y = y.to(self.device, self.dtype) if y.is_floating_point() else y.to(self.device)
        return x.to(self.device, self.dtype), y

    def _planned_steps(self) -> int:
        by_epochs = self.max_epochs * self.batches_per_epoch if self.max_epochs is not None and self.max_epochs >= 0 else math.inf
        by_steps = self.max_steps if self.max_steps > 0 else math.inf
        planned = min(by_epochs, by_steps)
        return int(planned) if planned != math.inf else 10**9

    def _done(self) -> bool:
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
        started = time.perf_counter()
        self.started = started
        if self.timer is not None:
            self.timer.on_train_start(None, None)  # type: ignore[arg-type]  # it reads neither; its clock starts (a resumed group's time carries on)
        try:
            while not self._done():
                self._epoch()
                if self.stopping:  # SIGTERM or Ctrl-C before the last epoch: this epoch's last.ckpt was written
                    break
            else:
                self._end([k for k, job in enumerate(self.jobs) if job.active])
        finally:
            torch.set_num_threads(threads_before)
        seconds = time.perf_counter() - started
        # the final weights on the whole train and validation splits, all jobs in one pass each
        # (a frozen job's weights are those it stopped with: its learning rate is 0 since)
        self.final = split_metrics(self.step, (self.train_x, self.train_y), self.loss_fn, self.jobs[0], "train_", only_loss=True)
        if self.val is not None:
            self.final |= split_metrics(self.step, self.val, self.loss_fn, self.jobs[0], "val_", only_loss=True)
        if self.stopping:  # jobs early stopping had ended are done: they finish ok
            return [
                finished(self, k, job, seconds, threads) if job.stopped and job.status == "ok" else interrupted(job, self.step_count)
                for k, job in enumerate(self.jobs)
            ]
        return [finished(self, k, job, seconds, threads) for k, job in enumerate(self.jobs)]

    def _end(self, jobs: list[int]) -> None:
        """What a solo run writes as it ends (``on_train_end``): the final weights' inspection and the last steps' window."""
        self.inspector.final(self.step_count, jobs)
        for k in jobs:
            job = self.jobs[k]
            if job.window:
                job.scalars.add("train_loss_step", sum(job.window) / len(job.window), self.step_count)
                job.window = []

    def _epoch(self) -> None:
        for sampler in self.samplers:
            sampler.set_epoch(self.epoch)
        orders = torch.stack([s.order() for s in self.samplers]).to(self.device)
        batch_size, done, grads = self.batch_size, 0, cast("list[torch.Tensor]", [])
        first, self.first_batch = self.first_batch, 0  # a group resumed from a mid-epoch checkpoint goes on from there
        for b in range(first, self.batches_per_epoch):
            if 0 < self.max_steps <= self.step_count or self._out_of_time():
                break
            index = orders[:, b * batch_size : (b + 1) * batch_size]
            x, y = self.train_x[index], self.train_y[index]
            before = [p.clone() for p in self.step.params] if self.inspector.due(self.step_count) else None
            loss, grads = self.step(x, y)
            self.pending.append(loss.detach())
            if before is not None:
                self.inspector.inspect(self.step_count, before, grads, x, y)
            self.step_count += 1
            done = b + 1
            if self.step_count % self.cfg.log.every_n_steps == 0:  # on the grid of multiples, as a resumed solo run
                self._drain(grads)
            every = self.cfg.checkpoint.every_n_steps  # inside the epoch (its end writes its own), as a solo run
            if every and self.step_count % every == 0 and done < self.batches_per_epoch and not 0 < self.max_steps <= self.step_count:
                self._drain(grads)  # read first: no checkpoint holds a diverged job
                self._checkpoint_mid_epoch(done)
        self._drain(grads, epoch_end=True)
        self.epoch += 1
        self._epoch_end(done)

    def _checkpoint_mid_epoch(self, batches_done: int) -> None:
        """checkpoint.every_n_steps: every training job's last.ckpt after this step, in one atomic batch."""
        files = []
        for k, job in enumerate(self.jobs):
            if job.active:
                params, state = self.step.job_state(k)
                snap = job.snapshot(params, state, self.epoch, self.step_count, batches_done, mid_epoch=True)
                files += job.checkpoint_files(snap, self.shape, lambda k=k: self.best.of(k))
        run_folder.write_all_atomic(files)

    def _drain(self, grads: list[torch.Tensor], epoch_end: bool = False) -> None:
        """Read the held losses (one host copy): each job's loss windows, and its divergence guard."""
        if not self.pending:
            return
        losses = torch.stack(self.pending).double().cpu()  # [steps, K]
        first, self.pending, self.pending_first = self.pending_first, [], self.step_count
        every = self.cfg.log.every_n_steps
        for k, job in enumerate(self.jobs):
            if not job.active:
                continue
            column = losses[:, k].tolist()
            bad = next((i for i, value in enumerate(column) if not math.isfinite(value)), None)
            if bad is not None:
                job.diverge(first + bad + 1, column[bad], self.step.names, [g[k] for g in grads])
                lrs = self.step.varying["lr"].clone()
                lrs[k] = 0.0  # frozen: its neighbours go on
                self.step.set_lr(lrs.tolist())
                continue
            job.epoch_losses += column
            job.window += column
            if self.step_count % every == 0 or epoch_end and (0 < self.max_steps <= self.step_count or self.timed_out):
                job.scalars.add("train_loss_step", sum(job.window) / len(job.window), self.step_count)
                elapsed = time.perf_counter() - self.started
                job.scalars.add("samples_per_s", self.step_count * self.batch_size / max(elapsed, 1e-9), self.step_count)
                job.window = []
            job.scalars.flush(job.writer)

    def _epoch_end(self, batches_done: int) -> None:
        active = [k for k, job in enumerate(self.jobs) if job.active]
        for k in active:
            job = self.jobs[k]
            if job.epoch_losses:
                job.scalars.add("train_loss", sum(job.epoch_losses) / len(job.epoch_losses), self.step_count)
            job.epoch_losses = []
        every_val = self.cfg.trainer.get("check_val_every_n_epoch", 1) or 1
        validate = self.val is not None and self.epoch % every_val == 0
        if validate and self.val is not None:  # validate implies a val split
            values = split_metrics(self.step, self.val, self.loss_fn, self.jobs[0], "val_")
            for k in active:
                for name, column in values.items():
                    self.jobs[k].scalars.add(name, column[k], self.step_count)
        last_epoch_done = batches_done if batches_done < self.batches_per_epoch else None
        if validate:
            improved = [k for k in active if self.jobs[k].improves(values["val_loss"][k])]
            self.best.keep(improved)
            for k in active:
                moment = self.jobs[k].moment(self.epoch, self.step_count, last_epoch_done) if k in improved else None
                self.jobs[k].record_val(values["val_loss"][k], moment)
        # each job's scheduler on its own optimizer, before last.ckpt as under Lightning (the module's
        # epoch-end hook runs before the checkpoint callback's); best.ckpt was taken at validation
        for k in active:
            if (scheduler := self.jobs[k].scheduler) is not None:
                scheduler.step()
        # callbacks=early_stopping, after the scheduler as under Lightning (a monitoring callback):
        # each job's own EarlyStopping; a job it stops is frozen and its neighbours go on
        stopped = [k for k in active if validate and any([early_stop(s, values[s.monitor][k], self.epoch - 1) for s in self.jobs[k].stoppers])]
        for k in stopped:
            self.jobs[k].stopped = (self.step_count, self.epoch, time.perf_counter() - self.started)
        if stopped or any(job.scheduler is not None for job in self.jobs):
            self.step.set_lr([job.lr() if job.active else 0.0 for job in self.jobs])
        # read once: the checkpoint written below and the stop after it agree on whether to stop
        self.stopping = interrupt.stop_signal() is not None and not self._done()
        if self.budget.due_now(self._done() or self.stopping or bool(stopped)):
            written = time.perf_counter()
            files = []
            for k in active:
                params, state = self.step.job_state(k)
                snap = self.jobs[k].snapshot(params, state, self.epoch, self.step_count, last_epoch_done)
                files += self.jobs[k].checkpoint_files(snap, self.shape, lambda k=k: self.best.of(k))
            run_folder.write_all_atomic(files)  # the group's checkpoints all of one epoch, for a stacked resume
            self.budget.record(written)
        if stopped:
            self._end(stopped)
        for k in active:
            self.jobs[k].scalars.flush(self.jobs[k].writer)
