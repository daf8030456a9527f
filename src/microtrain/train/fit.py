"""``train(cfg, run_dir)``: build data, model, loss and optimizer from a config and fit them with Lightning."""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from microtrain import device
from microtrain.config import checks as validate
from microtrain.run import folder as run_folder
from microtrain.train.build import Prepared, prepare
from microtrain.run.checkpoint_io import AtomicCheckpointIO
from microtrain.run.checkpoints import checkpoint_callbacks
from microtrain.errors import ConfigError
from microtrain.monitor.parameters import ParameterInspector
from microtrain.monitor.loss import LossWatch
from microtrain.train.module import Trainee
from microtrain.train.bypass import StepProgressBar


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    device: str
    best_checkpoint: Optional[str] = None
    module: Optional[Trainee] = field(default=None, repr=False)
    is_global_zero: bool = True  # False in the other ranks of a DDP run, which stay quiet


def train(cfg: DictConfig, run_dir: Path) -> RunResult:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = device.resolve(cfg.device)
    prepared = prepare(cfg)
    ckpt_path = _resume_checkpoint(cfg, run_dir)
    trainer = _build_trainer(cfg, plan, run_dir, prepared, resumed=ckpt_path)
    if trainer.is_global_zero:
        run_folder.write_text_atomic(run_dir / run_folder.CONFIG, OmegaConf.to_yaml(cfg))
        run_folder.write_json_atomic(run_dir / run_folder.DATA_INFO, prepared.data_info)
        if prepared.dataset.truth:
            run_folder.write_json_atomic(run_dir / run_folder.DATA_TRUTH, prepared.dataset.truth)
    started = time.perf_counter()
    trainer.fit(prepared.module, datamodule=prepared.datamodule, ckpt_path=ckpt_path)
    metrics = _final_metrics(prepared, trainer, time.perf_counter() - started)
    if prepared.splits.test is not None:
        metrics.update(_test_best_checkpoint(trainer, prepared))
    if trainer.is_global_zero:
        _log_hparams(trainer, cfg, metrics)
        run_folder.write_json_atomic(run_dir / run_folder.METRICS, metrics)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
    return RunResult(run_dir, metrics, plan.description, best or None, prepared.module, trainer.is_global_zero)


def _build_trainer(cfg: DictConfig, plan: device.DevicePlan, run_dir: Path, prepared: Prepared, resumed: Optional[str]) -> L.Trainer:
    every = cfg.log.every_n_steps
    has_val = prepared.splits.val is not None
    purge_step = torch.load(resumed, weights_only=True)["global_step"] if resumed else None
    # version="" and name="" put the event files straight into the run folder, so a sweep folder's
    # TensorBoard runs are named by their job folders; purge_step hides steps a resumed run redoes.
    logger = TensorBoardLogger(save_dir=str(run_dir), name="", version="", default_hp_metric=False, purge_step=purge_step)
    checkpoint_every = validate.integer(
        cfg.trainer.get("checkpoint_every_n_steps"), "trainer.checkpoint_every_n_steps", minimum=1, allow_none=True
    )
    budget = validate.number(cfg.trainer.get("checkpoint_budget", 0.02), "trainer.checkpoint_budget", minimum=0)
    checkpoints = checkpoint_callbacks(run_dir / run_folder.CHECKPOINTS, has_val, checkpoint_every, budget)
    inspector = ParameterInspector(
        _inspect_every(cfg), cfg.log.histograms, cfg.log.get("inspect_budget", 0.02), prepared.optimum, prepared.splits.train
    )
    prepared.module.needs_hooks = inspector.needs_hooks  # steps it inspects go through Lightning's hooks
    callbacks = [LossWatch(every, checkpoint_every), inspector, *checkpoints]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(StepProgressBar())
    try:
        return _trainer(cfg, plan, logger, callbacks, has_val)
    except (MisconfigurationException, ValueError, TypeError) as err:
        raise ConfigError(f"Lightning refused the trainer settings: {str(err).splitlines()[0]}") from None


def _trainer(cfg: DictConfig, plan: device.DevicePlan, logger: TensorBoardLogger, callbacks: list, has_val: bool) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        accelerator=plan.accelerator,
        precision=plan.precision,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=logger.save_dir,
        limit_val_batches=None if has_val else 0,
        # Nothing is self.log-ged per step (LossWatch and ParameterInspector write directly), so
        # this only silences Lightning's warning about epochs shorter than the interval.
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=t.enable_progress_bar,
        deterministic=t.get("deterministic", False),
    )


def _inspect_every(cfg: DictConfig) -> Any:
    value = cfg.log.get("inspect_every_n_steps", "auto")
    if value == "auto":
        validate.number(cfg.log.get("inspect_budget", 0.02), "log.inspect_budget", positive=True)
        return value
    return validate.integer(value, "log.inspect_every_n_steps", minimum=1)


def _resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Optional[str]:
    if not cfg.get("resume", False):
        return None
    last = run_dir / run_folder.CHECKPOINTS / "last.ckpt"
    if not last.is_file():
        raise ConfigError(f"resume=true but {last} does not exist; point hydra.run.dir at a run folder that has checkpoints")
    return str(last)


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

    metrics = {
        "status": "ok",
        "train_loss": loss_on(prepared.splits.train),
        "val_loss": loss_on(prepared.splits.val),
        **_progress(trainer),
        "seconds": round(seconds, 3),
    }
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
    best = trainer.checkpoint_callback.best_model_path or None
    (results,) = trainer.test(prepared.module, datamodule=prepared.datamodule, ckpt_path=best, verbose=False)
    prepared.module.load_state_dict(final_state)
    return {key: float(value) for key, value in sorted(results.items())} | {"test_checkpoint": best}


def _progress(trainer: L.Trainer) -> dict[str, int]:
    """Steps and epochs done. After ddp_spawn the main process's trainer never stepped, so the
    counts come from the last checkpoint that the rank-0 worker wrote."""
    last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt" if trainer.checkpoint_callback else None
    if trainer.global_step == 0 and last is not None and last.exists():
        saved = torch.load(last, map_location="cpu", weights_only=True)
        return {"steps": saved["global_step"], "epochs": saved["epoch"] + 1}
    return {"steps": trainer.global_step, "epochs": trainer.current_epoch}


def _log_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """One HParams entry per run with its real final metrics, so sweep runs line up in TensorBoard."""
    params = {
        "model": cfg.model.name,
        "hidden": cfg.model.get("hidden") or 0,
        "activation": cfg.model.get("activation") or "none",
        "init": cfg.model.get("init", "default"),
        "loss": cfg.loss.name,
        "optimizer": str(cfg.optimizer._target_).rsplit(".", 1)[-1],
        "lr": cfg.optimizer.get("lr"),
        "weight_decay": cfg.optimizer.get("weight_decay", 0.0),
        "batch_size": cfg.data.get("batch_size") or 0,
        "data": cfg.data.name,
        "seed": cfg.seed,
    }
    final = {f"hparams/{k}": v for k, v in metrics.items() if k.split("_")[0] in ("train", "val", "test") and isinstance(v, float)}
    trainer.logger.log_hyperparams(params, final)
    trainer.logger.experiment.add_text("config", "```yaml\n" + OmegaConf.to_yaml(cfg) + "```")
    trainer.logger.experiment.flush()
