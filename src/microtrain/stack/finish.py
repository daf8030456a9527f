"""How each job of a stacked group ends: its metrics.json, HParams entry and last events, as a solo run's."""

import signal
from typing import TYPE_CHECKING, Any, cast

from microtrain.run import folder as run_folder
from microtrain.run import interrupt
from microtrain.stack.jobs import StackedJob
from microtrain.stack.validate import test_metrics

if TYPE_CHECKING:  # the group's final losses, step count and device
    from microtrain.stack.train import StackedRun


def interrupted(job: StackedJob, step: int) -> dict[str, Any]:
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
            "error": f"interrupted by {name} at step {step}",
            "resume": f"python scripts/train.py resume=true {run_folder.hydra_override('hydra.run.dir', job.run_dir)}",
        }
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
        metrics.update(test_metrics(job, run.device, run.dtype))
    metrics["threads"] = threads
    metrics["stacked"] = {"jobs": len(run.jobs), "job": k}
    job.finish(metrics)
    return metrics
