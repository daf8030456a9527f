"""How each job of a stacked group ends: its metrics.json, HParams entry and last events, as a solo run's."""

import signal
from typing import TYPE_CHECKING, Any, cast

from microtrain.run import folder as run_folder
from microtrain.run import interrupt
from microtrain.stack.jobs import StackedJob
from microtrain.stack.validate import split_metrics, test_metrics

if TYPE_CHECKING:  # the group's final losses, step count and device
    from microtrain.stack.train import StackedRun


def end_jobs(run: "StackedRun", jobs: list[int]) -> None:
    """What a solo run writes as it ends (``on_train_end``): the final weights' inspection and the last steps' window."""
    run.inspector.final(run.step_count, jobs)
    for k in jobs:
        job = run.jobs[k]
        if job.window:
            job.scalars.add("train_loss_step", sum(job.window) / len(job.window), run.step_count)
            job.scalars.add("samples_per_s", run.rate(), run.step_count)
            job.window = []


def interrupted(run: "StackedRun", k: int, job: StackedJob) -> dict[str, Any]:
    """A signal: each job that was training ends as a single run does (``interrupted``, its
    last.ckpt of the step boundary it stopped at, the command that resumes it); a diverged one
    keeps its status."""
    if not job.active:
        metrics = {"status": job.status, "error": job.error, **job.diverged}
    else:
        name = signal.Signals(cast(int, interrupt.stop_signal())).name
        metrics = {
            "status": "interrupted",
            "signal": name,
            "error": f"interrupted by {name} at step {run.step_count}",
            "resume": f"python scripts/train.py resume=true {run_folder.hydra_override('hydra.run.dir', job.run_dir)}",
        }
        run.inspector.save_trajectory(k, job)
    job.finish(metrics)
    return metrics


def finished(run: "StackedRun", k: int, job: StackedJob, seconds: float, threads: int) -> dict[str, Any]:
    """Job k at the group's end: ok with its final losses (those of its stop, when early stopping
    ended it), test metrics on its best checkpoint; or the status it diverged or failed with."""
    if job.status != "ok":
        metrics: dict[str, Any] = {"status": job.status, "error": job.error, **job.diverged}
        job.finish(metrics)
        return metrics
    params, _ = run.stacked.job_state(k)
    job.model.load_state_dict(params)
    steps, epochs, seconds = job.stopped or (run.step_count, run.epoch, seconds)  # early stopping: where it stopped
    metrics = {
        "status": "ok",
        "train_loss": run.final["train_loss"][k],
        "val_loss": run.final["val_loss"][k] if "val_loss" in run.final else None,
        **{name: run.final[name][k] for name in sorted(run.final) if name.startswith("val_") and name != "val_loss"},  # by name, as a solo run's
        "steps": steps,
        "epochs": epochs,
        "seconds": round(seconds, 3),
    }
    if run.stacked.compile_seconds is not None:
        metrics["compile_seconds"] = round(run.stacked.compile_seconds, 3)
    if job.prepared.optimum is not None:
        metrics["train_loss_optimum"] = job.prepared.optimum
        metrics["optimality_gap"] = metrics["train_loss"] - job.prepared.optimum
    if job.prepared.splits.test is not None:
        context = run.trainer.precision_plugin.test_step_context() if run.trainer is not None else None
        metrics.update(tested := test_metrics(job, run.device, run.dtype, context))
        for name, value in tested.items():  # the scalars a solo run's trainer.test logs, at its last step
            if isinstance(value, float):
                job.scalars.add(name, value, steps)
    metrics["threads"] = threads
    if not run.solo:  # a stacked job's place in its group (a solo run is a stack of one, and says nothing)
        metrics["stacked"] = {"jobs": len(run.jobs), "job": k, **run.inspector.widened()}
    run.inspector.save_trajectory(k, job)
    job.finish(metrics)
    return metrics


def finish_jobs(run: "StackedRun", seconds: float, threads: int) -> list[dict[str, Any]]:
    """Every job's end: its final losses and validation metrics (the final weights on the whole
    train and validation splits, all jobs in one pass each; a frozen job's are those it stopped
    with, its learning rate 0 since), then its metrics.json, or ``interrupted`` after a signal."""
    run.final = split_metrics(run.stacked, run.train, run.jobs[0], "train_", only_loss=True)
    if run.val is not None:  # val_loss on all rows at once, as a solo run's (a summed loss would differ in chunks)
        run.final |= {k: v for k, v in split_metrics(run.stacked, run.val, run.jobs[0], "val_", final=True).items() if k != "val_loss"}
        run.final |= split_metrics(run.stacked, run.val, run.jobs[0], "val_", only_loss=True)
    if run.stopping:  # jobs early stopping had ended are done: they finish ok
        return [
            finished(run, k, job, seconds, threads) if job.stopped and job.status == "ok" else interrupted(run, k, job)
            for k, job in enumerate(run.jobs)
        ]
    return [finished(run, k, job, seconds, threads) for k, job in enumerate(run.jobs)]
