"""``train(cfg, run_dir)`` on Lightning's per-step path (the runs a stack does not take: ``microtrain.training``): build data, model, loss and optimizer from a config and fit them with Lightning."""

import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, cast

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
import torch
from omegaconf import DictConfig

from microtrain import device
from microtrain.config import schema
from microtrain.console import quiet_libraries
from microtrain.errors import ConfigError, Interrupted, TrainingDiverged
from microtrain.monitor.hparams import log_hparams
from microtrain.monitor.logger import RunLogger, tensorboard_layout
from microtrain.monitor.loss import LossWatch
from microtrain.monitor.parameters import ParameterInspector
from microtrain.run import folder as run_folder
from microtrain.run import resume
from microtrain.run.checkpoint_io import AtomicCheckpointIO
from microtrain.run.checkpoints import InterruptCheckpoint, checkpoint_callbacks
from microtrain.data.prepare import describe as describe_data
from microtrain.engine.build import Prepared, multiply_adds_per_step, prepare
from microtrain.monitor.progress import StepProgressBar
from microtrain.engine.bypass import StepLoop
from microtrain.engine.module import Trainee
from microtrain.engine.trainer import build_callbacks, build_trainer, trainer_arguments


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    device: str
    best_checkpoint: Optional[str] = None
    module: Optional[Trainee] = field(default=None, repr=False)
    is_global_zero: bool = True  # False in the other ranks of a DDP run, which stay quiet


def train(cfg: DictConfig, run_dir: Path, resume_changes: Optional[list[str]] = None, begin: Optional[Callable[[], None]] = None) -> RunResult:
    """``resume_changes``: what ``run.resume`` applied to a resumed run's config (recorded in its
    history; a new lr or weight decay is set on the restored optimizer). ``begin``: called once
    everything is built and checked, before the run's first write into ``run_dir``."""
    schema.check(cfg)  # every key's type and range, before anything is built or written
    quiet_libraries()  # called from Python too: no "GPU available" lines, tips or known warnings
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = device.resolve(cfg.device)
    trainer_args, loop = trainer_arguments(cfg.trainer, cfg.loop.compile)
    prepared = prepare(cfg, loop)
    check_optimize_metric(cfg, prepared)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        print(describe_data(prepared.data_info), flush=True)
    loop.multiply_adds = multiply_adds_per_step(cfg, prepared.module.model, prepared.splits)
    threads_before = torch.get_num_threads()
    threads = device.use_threads(cfg.device.threads, loop.multiply_adds)
    ckpt_path = str(resume.last_checkpoint(run_dir)) if cfg.resume else None
    if ckpt_path:
        changes = resume_changes or []
        prepared.module.optimizer_overrides = {
            k: cfg.optimizer[k] for k in resume.APPLIED_TO_OPTIMIZER if any(c.startswith(f"optimizer.{k}:") for c in changes)
        }
    resumed_step = torch.load(ckpt_path, weights_only=True)["global_step"] if ckpt_path else None
    trainer = _build_trainer(cfg, trainer_args, plan, run_dir, prepared, resumed_step)
    if begin is not None:
        begin()
    if ckpt_path and trainer.is_global_zero:
        resume.record(run_dir, resume_changes or [], resumed_step)
    if trainer.is_global_zero:
        run_folder.write_text_atomic(run_dir / run_folder.CONFIG, run_folder.yaml_text(cfg))
        run_folder.write_json_atomic(run_dir / run_folder.DATA_INFO, prepared.data_info)
        if prepared.dataset.truth:
            run_folder.write_json_atomic(run_dir / run_folder.DATA_TRUTH, prepared.dataset.truth)
    started = time.perf_counter()
    try:
        trainer.fit(prepared.module, datamodule=prepared.datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:  # several processes: Lightning stopped every rank on SIGTERM
        raise Interrupted(f"interrupted by SIGTERM at step {trainer.global_step}", signal.SIGTERM) from None
    except TrainingDiverged:  # its HParams session too: the learning rate that diverged is a row of the table
        if trainer.is_global_zero and trainer.logger is not None:
            log_hparams(trainer.logger, cfg, {"status": "diverged", "steps": trainer.global_step})
            trainer.logger.finalize("failed")
        raise
    finally:
        loop.release()  # dynamo's guards back on, whatever happened
        torch.set_num_threads(threads_before)
    metrics = _final_metrics(prepared, trainer, time.perf_counter() - started) | {"threads": threads}
    if prepared.splits.test is not None:
        metrics.update(_test_best_checkpoint(trainer, prepared))
    if trainer.is_global_zero:
        log_hparams(trainer.logger, cfg, metrics)
        assert trainer.logger is not None  # _build_trainer gives every run its RunLogger
        trainer.logger.finalize("success")  # closes the writer log_hparams reopened (a thread and a file, in a notebook's process)
        run_folder.write_json_atomic(run_dir / run_folder.METRICS, metrics)
    best = cast("L.pytorch.callbacks.ModelCheckpoint", trainer.checkpoint_callback).best_model_path if trainer.checkpoint_callback else None
    return RunResult(run_dir, metrics, plan.description, best or None, prepared.module, trainer.is_global_zero)


def _build_trainer(
    cfg: DictConfig, args: dict[str, Any], plan: device.DevicePlan, run_dir: Path, prepared: Prepared, resumed_step: Optional[int]
) -> L.Trainer:
    has_val = prepared.splits.val is not None
    # A resumed run hides what the first run logged after its checkpoint at step S: points of
    # steps > S. Points at S itself (the loss window and validation that ended there) came before
    # the checkpoint and stay; the resumed run inspects step S again (identical values: a run
    # killed by SIGKILL after it had inspected S shows that point twice).
    purge_step = resumed_step + 1 if resumed_step is not None else None
    logger = RunLogger(run_dir, purge_step=purge_step, layout=tensorboard_layout(cfg, prepared))
    every = cfg.checkpoint.every_n_steps
    callbacks = [
        LossWatch(cfg.log.every_n_steps, every),
        ParameterInspector(
            cfg.log.inspect_every_n_steps,
            cfg.log.histograms,
            cfg.log.inspect_budget,
            prepared.optimum,
            prepared.splits.train,
            activations=cfg.log.activations,
            curvature=cfg.log.curvature,
            enabled=cfg.log.inspect,
        ),
        *checkpoint_callbacks(run_dir / run_folder.CHECKPOINTS, has_val, every, cfg.checkpoint.budget),
        InterruptCheckpoint(run_dir / run_folder.CHECKPOINTS / "last.ckpt"),
        *build_callbacks(cfg.callbacks, _logged(prepared) if has_val else []),
    ]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(StepProgressBar())
    return build_trainer(
        args,
        accelerator=plan.accelerator,
        precision=plan.precision,
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=logger.save_dir,
        **({} if has_val else {"limit_val_batches": 0}),
    )


def _logged(prepared: Prepared) -> list[str]:
    """The epoch metrics a callback can monitor: val_loss and the task's validation metrics."""
    return ["val_loss", *(cast("Iterable[str]", prepared.module.val_metrics.keys()) if prepared.module.val_metrics is not None else [])]


def check_optimize_metric(cfg: DictConfig, prepared: Prepared) -> None:
    """optimize.metric must be one the run reports: a name it does not would sort sweeps by nothing."""
    wanted = cfg.optimize.metric
    if wanted == "auto":
        return
    reported = ["train_loss", *(_logged(prepared) if prepared.splits.val is not None else [])]
    if prepared.splits.test is not None and prepared.module.test_metrics is not None:
        reported += ["test_loss", *cast("Iterable[str]", prepared.module.test_metrics.keys())]
    if wanted not in reported:
        raise ConfigError(f"optimize.metric={wanted} is not reported by this run; pick one of: auto, {', '.join(reported)}")


@torch.no_grad()
def _final_metrics(prepared: Prepared, trainer: L.Trainer, seconds: float) -> dict[str, Any]:
    """Losses of the final weights on the whole train and validation splits."""
    module = prepared.module
    module.eval()

    def loss_on(pair: Optional[tuple[torch.Tensor, torch.Tensor]]) -> Optional[float]:
        if pair is None:
            return None
        x, y = module.to_model(*pair)
        return float(module.loss_fn(module.model(x), y))

    def val_metrics() -> dict[str, float]:
        """val_acc, val_r2, ... as validation logs them (torchmetrics, in the model's units): what
        optimize.metric may name. Every rank holds the whole split: no sync across processes."""
        collection = module.val_metrics
        if prepared.splits.val is None or collection is None:
            return {}
        x, y = module.to_model(*prepared.splits.val)
        for metric in collection.values():
            metric.sync_on_compute = False
        collection.reset()
        collection.update(module.predict_targets(module.model(x)), y)
        values = {name: float(value) for name, value in sorted(collection.compute().items())}
        collection.reset()
        return values

    metrics: dict[str, Any] = {
        "status": "ok",
        "train_loss": loss_on(prepared.splits.train),
        "val_loss": loss_on(prepared.splits.val),
        **val_metrics(),
        **_progress(trainer),
        "seconds": round(seconds, 3),
    }
    compiled = cast(StepLoop, module.loop).compiled  # a solo run's
    if compiled is not None and compiled.compile_seconds is not None:
        metrics["compile_seconds"] = round(compiled.compile_seconds, 3)  # included in seconds
    if prepared.optimum is not None:
        metrics["train_loss_optimum"] = prepared.optimum
        metrics["optimality_gap"] = metrics["train_loss"] - prepared.optimum
    return metrics


def _test_best_checkpoint(trainer: L.Trainer, prepared: Prepared) -> dict[str, Any]:
    """Evaluate the test split with the best checkpoint (by validation loss; the last without validation).

    ``trainer.test`` loads that checkpoint into the module; the final weights are put back after,
    so the returned module is the trained one.
    """
    final_state = {k: v.clone() for k, v in prepared.module.state_dict().items()}
    best = cast("L.pytorch.callbacks.ModelCheckpoint", trainer.checkpoint_callback).best_model_path or None
    (results,) = trainer.test(prepared.module, datamodule=prepared.datamodule, ckpt_path=best, verbose=False)
    prepared.module.load_state_dict(final_state)
    # "step" is the x-axis value the evaluation logs for TensorBoard (Trainee._evaluate), not a metric
    return {key: float(value) for key, value in sorted(results.items()) if key != "step"} | {"test_checkpoint": best}


def _progress(trainer: L.Trainer) -> dict[str, int]:
    """Steps and epochs done. After ddp_spawn the main process's trainer never stepped, so the
    counts come from the last checkpoint that the rank-0 worker wrote."""
    checkpointer: Any = trainer.checkpoint_callback  # a RunCheckpoint (run.checkpoints): its dirpath is set
    last = Path(checkpointer.dirpath) / "last.ckpt" if checkpointer else None
    if trainer.global_step == 0 and last is not None and last.exists():
        saved = torch.load(last, map_location="cpu", weights_only=True)
        return {"steps": saved["global_step"], "epochs": saved["epoch"] + 1}
    return {"steps": trainer.global_step, "epochs": trainer.current_epoch}
