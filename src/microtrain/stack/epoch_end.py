"""How each job of a stacked group ends an epoch, in the order a solo run's Lightning hooks do:
its epoch's train_loss, validation (all jobs in one pass), its scheduler, best.ckpt's moment,
its early stopping (a job it stops is frozen, its neighbours go on), then last.ckpt."""

import time
import warnings
from contextlib import nullcontext
from typing import TYPE_CHECKING, Optional

from microtrain.internals import early_stop
from microtrain.optimizers import on_val_loss
from microtrain.run import folder as run_folder
from microtrain.run import interrupt
from microtrain.stack.finish import end_jobs
from microtrain.stack.validate import split_metrics

if TYPE_CHECKING:  # the group: its jobs, stacked weights, counters and checkpoint budget
    from microtrain.stack.train import StackedRun


def end_epoch(run: "StackedRun", batches_done: int) -> None:
    """The epoch that ended after ``batches_done`` of its batches (fewer: stopped mid-epoch)."""
    active = [k for k, job in enumerate(run.jobs) if job.active]
    for k in active:
        job = run.jobs[k]
        if job.epoch_losses:
            job.scalars.add("train_loss", sum(job.epoch_losses) / len(job.epoch_losses), run.step_count)
        job.epoch_losses = []
    validate = run.val is not None and run.epoch % run.val_every == 0
    if validate and run.val is not None:  # validate implies a val split
        with run.trainer.precision_plugin.val_step_context() if run.trainer else nullcontext():  # bf16-mixed: autocast, as a solo run's validation
            values = split_metrics(run.stacked, run.val, run.jobs[0], "val_")
        for k in active:
            for name, column in values.items():
                run.jobs[k].scalars.add(name, column[k], run.step_count)
    last_epoch_done = batches_done if batches_done < run.batches_per_epoch else None
    improved = [k for k in active if run.jobs[k].improves(values["val_loss"][k])] if validate else []
    run.best.keep(improved)  # the weights of this validation
    # each job's scheduler on its own optimizer, before its checkpoints as under Lightning (the
    # module's epoch-end hook runs before the checkpoint callbacks'): best.ckpt too holds it stepped
    with warnings.catch_warnings():  # torch.optim's "before optimizer.step()": the stacked step took the steps
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`")
        for k in active:
            if (scheduler := run.jobs[k].scheduler) is not None and not on_val_loss(scheduler):
                scheduler.step()
            elif scheduler is not None and validate:  # ReduceLROnPlateau: on the job's own val_loss
                scheduler.step(values["val_loss"][k])
    for k in active if validate else []:
        moment = run.jobs[k].moment(run.epoch, run.step_count, last_epoch_done) if k in improved else None
        run.jobs[k].record_val(values["val_loss"][k], moment)
    # callbacks=early_stopping, after the scheduler as under Lightning (a monitoring callback):
    # each job's own EarlyStopping; a job it stops is frozen and its neighbours go on
    stopped = [k for k in active if validate and any([early_stop(s, values[s.monitor][k], run.epoch - 1) for s in run.jobs[k].stoppers])]
    for k in stopped:
        run.jobs[k].stopped = (run.step_count, run.epoch, time.perf_counter() - run.started)
    if stopped or any(job.scheduler is not None for job in run.jobs):
        run.stacked.set_lr([job.lr() if job.active else 0.0 for job in run.jobs])
    # read once: the checkpoint written below and the stop after it agree on whether to stop
    run.stopping = interrupt.stop_signal() is not None and not run.done()
    if run.budget.due_now(run.done() or run.stopping or bool(stopped)):
        written = run.budget.now()
        write_last(run, active, last_epoch_done)
        run.budget.record(written)
    if stopped:
        end_jobs(run, stopped)
    for k in active:
        run.jobs[k].scalars.flush(run.jobs[k].writer)


def write_last(run: "StackedRun", ks: list[int], batches_done: Optional[int], mid_epoch: bool = False) -> None:
    """Jobs ks' last.ckpt (and best.ckpt after a better epoch) of now, all in one atomic batch:
    a stacked resume finds the group's checkpoints all of one moment."""
    files = []
    for k in ks:
        params, state = run.stacked.job_state(k)
        snap = run.jobs[k].snapshot(params, state, run.epoch, run.step_count, batches_done, mid_epoch=mid_epoch)
        files += run.jobs[k].checkpoint_files(snap, run.shape, lambda k=k: run.best.of(k))
    run_folder.write_all_atomic(files)
