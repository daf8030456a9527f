"""Everything a run needs before the Trainer starts: seeded model, loss, optimizer and split data.

``train`` and ``explain_step`` both start here, so one step explained is one step trained.
"""

from dataclasses import dataclass
from typing import Any, Optional

import lightning as L
import torch
from omegaconf import DictConfig

from microtrain import closed_form, device, losses, models, optimizers
from microtrain.errors import ConfigError
from microtrain.data.prepare import prepare_data
from microtrain.data.splits import Splits
from microtrain.data.sources import Dataset
from microtrain.data.batches import TensorDataModule
from microtrain.monitor.metrics import build_metrics
from microtrain.engine.bypass import StepLoop
from microtrain.engine.module import Trainee


@dataclass
class Prepared:
    module: Trainee
    datamodule: TensorDataModule
    splits: Splits
    dataset: Dataset
    data_info: dict[str, Any]  # features, targets, task, classes, standardization: saved as data_info.json
    optimum: Optional[float] = None  # least-squares training loss, for linear models with mse/sse


def prepare(cfg: DictConfig, loop: Optional[StepLoop] = None, like: Optional[Prepared] = None) -> Prepared:
    """The seeded model, loss, optimizer factory and data of a checked config (``config.schema``).
    ``like``: a job of the same stacked group, whose data (and least-squares optimum) this one
    shares: the group agrees on data and model, and the data does not depend on ``seed``."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dataset, splits, info = (like.dataset, like.splits, like.data_info) if like is not None else prepare_data(cfg)
    _check_it_fits(cfg, dataset.x.shape[1], info["n_outputs"], len(splits.train[0]))
    model = models.build_model(cfg.model, dataset.x.shape[1], info["n_outputs"])
    rows = lambda pair: 0 if pair is None else len(pair[0])  # noqa: E731
    loop = loop or StepLoop()
    module = Trainee(
        model,
        losses.build_loss(cfg.loss),
        optimizers.optimizer_factory(cfg.optimizer),
        optimizers.scheduler_factory(cfg.scheduler),
        # a stacked group's jobs share the metrics' objects (1.3 ms a job to build): each job resets them before it uses them
        val_metrics=like.module.val_metrics if like is not None else build_metrics(info["task"], info["n_outputs"], rows(splits.val), "val_"),
        test_metrics=like.module.test_metrics if like is not None else build_metrics(info["task"], info["n_outputs"], rows(splits.test), "test_"),
        loop=loop,
    )
    if info["standardize_targets"]:
        module.target_scale = (torch.tensor(info["standardize_targets"]["mean"]), torch.tensor(info["standardize_targets"]["std"]))
    # Built once and thrown away: an optimizer or scheduler that refuses its settings is one line
    # now, before anything is written, not a traceback once training starts.
    trial = optimizers.trial_step(module.make_optimizer, model, device.resolve(cfg.device).accelerator == "cuda")
    scheduler = module.make_scheduler(trial) if module.make_scheduler is not None else None
    optimizers.check_length(scheduler, cfg.trainer.max_epochs)
    if optimizers.on_val_loss(scheduler) and splits.val is None:
        raise ConfigError(
            f"scheduler {cfg.scheduler._target_} steps on val_loss, and this run has no validation split; set data.val_fraction above 0"
        )
    # a Lightning call takes steps_per_call optimizer steps of accumulate_grad_batches batches each
    batches_per_call = steps_per_call(cfg, model, splits) * loop.accumulate
    datamodule = TensorDataModule(splits.train, splits.val, cfg.data.batch_size, cfg.seed, test=splits.test, steps_per_call=batches_per_call)
    optimum = like.optimum if like is not None else None
    if like is None and closed_form.applies(cfg.model.name, cfg.loss.name):
        try:  # a diagnostic: when it cannot be computed, the run goes on without it
            optimum = closed_form.least_squares_loss(*splits.train, bias=cfg.model.bias, loss_name=cfg.loss.name)
        except (RuntimeError, MemoryError) as err:
            reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            print(f"note: the least-squares optimum is not computed ({reason}); training goes on without it", flush=True)
    return Prepared(module, datamodule, splits, dataset, info, optimum)


def _check_it_fits(cfg: DictConfig, features: int, outputs: int, train_rows: int) -> None:
    """A model too large for the device's free memory is one line before it is built, not
    minutes of swapping (model.hidden=1000000000 took 20 GB over 93 s before failing)."""
    width = 8 if str(cfg.device.precision) in ("64", "64-true") else 4
    need = models.training_bytes(cfg.model, features, outputs, cfg.data.batch_size or train_rows, width)
    accelerator = device.resolve(cfg.device).accelerator
    free = device.available_bytes(accelerator)
    if need > 0.9 * free:
        count = models.parameter_count(cfg.model, features, outputs)
        raise ConfigError(
            f"this model has {count:,} parameters and training it needs about {need / 2**30:.1f} GiB, but the "
            f"{'GPU' if accelerator == 'cuda' else 'machine'} has {free / 2**30:.1f} GiB free; "
            "choose a smaller model.hidden or data.batch_size"
        )


# auto runs up to this many multiply-adds per Lightning call (~40 ms of 2 CPU cores), which makes
# Lightning's ~0.3-1 ms per call a small share: a tiny model gets 128 steps a call, the
# 256->1024->256 MLP with batch 1024 (0.54 G a step) 4, anything above 4 G a step 1.
MULTIPLY_ADDS_PER_CALL = 4_000_000_000
STEPS_PER_CALL_CHOICES = (128, 64, 32, 16, 8, 4, 2, 1)


def multiply_adds_per_step(cfg: DictConfig, model: Any, splits: Splits) -> int:
    """About what one step of this model costs: batch rows times parameters (the forward's
    multiply-adds; backward is twice that)."""
    return (cfg.data.batch_size or len(splits.train[0])) * sum(p.numel() for p in model.parameters())


def steps_per_call(cfg: DictConfig, model: Any, splits: Splits) -> int:
    """``loop.steps_per_call``: auto = as many steps as fit in ~4 G multiply-adds, at most 128.

    Step checkpoints land on call boundaries, so K must divide ``checkpoint.every_n_steps``.
    """
    wanted, every = cfg.loop.steps_per_call, cfg.checkpoint.every_n_steps
    if cfg.trainer.devices not in (1, "1") or cfg.trainer.num_nodes != 1:
        # DDP synchronises gradients once per forward of its wrapped module, i.e. once per call
        if wanted not in ("auto", 1):
            raise ConfigError(f"loop.steps_per_call={wanted} needs one device; with several devices use 1 or auto")
        return 1
    if wanted != "auto":
        if every and every % wanted:
            raise ConfigError(f"checkpoint.every_n_steps={every} must be a multiple of loop.steps_per_call={wanted}")
        return wanted
    multiply_adds = multiply_adds_per_step(cfg, model, splits)
    fits = [k for k in STEPS_PER_CALL_CHOICES if k * multiply_adds <= MULTIPLY_ADDS_PER_CALL] or [1]
    return next(k for k in fits if not (every and every % k))
