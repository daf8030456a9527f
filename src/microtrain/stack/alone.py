"""A solo run as a stack of one: the engine of a stacked sweep (``stack.train.StackedRun``:
``Trainee`` under Lightning's ``Trainer.fit``, the step of ``stack.step``, each epoch's end of
``stack.epoch_end``) with K = 1, taking a plain loop's own kernels (``StackedStep``'s ``solo``)."""

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from microtrain import device
from microtrain.console import quiet_libraries
from microtrain.data.prepare import describe as describe_data
from microtrain.engine.fit import RunResult
from microtrain.engine.trainer import trainer_arguments
from microtrain.errors import Interrupted, MicrotrainError, TrainingDiverged
from microtrain.stack.jobs import StackedJob
from microtrain.stack.train import StackedRun


def train_alone(cfg: DictConfig, run_dir: Path, resume_changes: Optional[list[str]] = None, begin: Optional[Callable[[], None]] = None) -> RunResult:
    """``engine.fit.train``'s contract (its arguments, its result, its errors) for a config that
    stacks (``stack.groups.why_alone`` is None). ``begin``: called once the run is built and
    checked, before its first write into ``run_dir``."""
    quiet_libraries()
    run_dir = Path(run_dir)
    trainer_arguments(cfg.trainer, cfg.loop.compile)  # the trainer keys' checks, as a solo run's
    plan = device.resolve(cfg.device)
    job = StackedJob(cfg, run_dir)  # the seeded model, optimizer and data; optimize.metric checked
    job.solo = True
    print(describe_data(job.prepared.data_info), flush=True)
    if cfg.resume:
        job.resume(resume_changes or [])
    run = StackedRun([job], solo=True)
    # the model takes the trained weights as the run holds them (precision 64: float64); the
    # metrics' states stay float32, as Lightning keeps them
    job.model.to(run.device, run.dtype)
    if begin is not None:
        begin()
    (metrics,) = run.run()
    if metrics["status"] == "diverged":
        raise TrainingDiverged(metrics["error"])
    if metrics["status"] == "interrupted":
        raise Interrupted(metrics["error"], signal.Signals[metrics["signal"]])
    if metrics["status"] != "ok":
        raise MicrotrainError(metrics["error"])
    # best.ckpt; without a validation split, last.ckpt (Lightning's best_model_path); none if it never validated
    best = job.best_path if job.best_path.is_file() else job.last_path if not job.has_val and job.last_path.is_file() else None
    return RunResult(run_dir, metrics, plan.description, str(best) if best else None, job.prepared.module)
