"""The Lightning Trainer of a run: ``trainer.*`` passes through to ``lightning.Trainer`` as
lightning-hydra-template's ``instantiate(cfg.trainer, ...)`` does, and ``callbacks.*`` are
instantiated from their ``_target_``.

microtrain sets the arguments that other config groups own (the device group's accelerator and
precision, the logger, the run folder) and takes three itself, because Lightning refuses them
under manual optimization: ``gradient_clip_val``, ``gradient_clip_algorithm`` and
``accumulate_grad_batches`` are applied in the step (``engine.bypass.StepLoop``).
"""

import inspect
from collections.abc import Mapping
from typing import Any, cast

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import OmegaConf

from microtrain.errors import ConfigError
from microtrain.engine.bypass import StepLoop

# Trainer arguments that come from elsewhere in the config, and where to set them instead.
OWNED = {
    "accelerator": "device=cpu|cuda|auto",
    "precision": "device.precision",
    "logger": "the run folder's TensorBoard logger (always on)",
    "callbacks": "callbacks=<name> (conf/callbacks/)",
    "plugins": "microtrain's atomic checkpoint writer",
    "default_root_dir": "hydra.run.dir",
    "enable_checkpointing": "checkpoint.every_n_steps and checkpoint.budget",
}
# Arguments that count Lightning's calls, which take up to loop.steps_per_call optimizer steps each
# in microtrain: they would not mean what they say.
COUNT_CALLS = {
    "limit_train_batches": "trainer.max_steps",
    "overfit_batches": "a small data set (data.n_samples) and trainer.max_steps",
    "val_check_interval": "trainer.check_val_every_n_epoch",
    "log_every_n_steps": "log.every_n_steps",
}


def trainer_arguments(cfg: Mapping[str, Any], compile: bool = False) -> tuple[dict[str, Any], StepLoop]:
    """(the arguments for ``lightning.Trainer``, the step loop that applies the in-the-step ones
    and ``loop.compile``)."""
    args = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True)) if OmegaConf.is_config(cfg) else dict(cfg)
    known = inspect.signature(L.Trainer.__init__).parameters
    for key in args:
        if key in OWNED:
            raise ConfigError(f"trainer.{key} is set by microtrain; use {OWNED[key]} instead")
        if key in COUNT_CALLS:
            raise ConfigError(f"trainer.{key} counts Lightning calls of several steps here; use {COUNT_CALLS[key]} instead")
        if key not in known:
            raise ConfigError(f"trainer.{key} is not an argument of lightning.Trainer; see its documentation for the arguments it takes")
    _check_values(args)
    loop = StepLoop(args.pop("gradient_clip_val", None), args.pop("gradient_clip_algorithm", "norm"), args.pop("accumulate_grad_batches", 1), compile)
    return args, loop


def _check_values(args: dict[str, Any]) -> None:
    """Values ``lightning.Trainer`` takes without a word and fails on once training has started
    (``check_val_every_n_epoch=0``: a modulo by zero), refused before anything is written."""
    every = args.get("check_val_every_n_epoch")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ConfigError(f"trainer.check_val_every_n_epoch={every} must be a whole number of epochs, 1 or more")
    if args.get("fast_dev_run"):
        raise ConfigError(
            "trainer.fast_dev_run is not supported: it turns off the logger and checkpoints every run writes; "
            "for a quick check use trainer.max_steps=5"
        )
    if args.get("max_time") is not None:
        from lightning.pytorch.callbacks import Timer

        try:
            Timer(args["max_time"])
        except Exception:  # noqa: BLE001 -- Lightning's MisconfigurationException, or an int's AttributeError
            raise ConfigError(
                f"trainer.max_time={args['max_time']!r} is not a duration; write DD:HH:MM:SS ('+trainer.max_time=\"00:00:05:00\"') "
                "or a mapping ('+trainer.max_time={minutes: 5}')"
            ) from None


def build_trainer(args: dict[str, Any], **owned: Any) -> L.Trainer:
    """``lightning.Trainer(**args, **owned)``, with microtrain's defaults for the rest."""
    defaults = {
        # Nothing is self.log-ged per step (LossWatch and ParameterInspector write directly), so
        # this only silences Lightning's warning about epochs shorter than the interval.
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "enable_model_summary": False,
    }
    try:
        return L.Trainer(**{**defaults, **args, **owned})
    except (MisconfigurationException, ValueError, TypeError) as err:
        raise ConfigError(f"Lightning refused the trainer settings: {str(err).splitlines()[0]}") from None


def stack_trainer(plan: Any, deterministic: bool, callback: L.Callback, scratch: str) -> L.Trainer:
    """The Trainer of a stacked group (``stack.train``): the group counts its epochs and steps,
    validates and checkpoints each job itself (``callback``), and stops the fit itself."""
    from lightning.fabric.plugins.environments import LightningEnvironment

    return build_trainer(
        {"max_epochs": -1, "limit_val_batches": 0, "enable_progress_bar": False},
        accelerator=plan.accelerator,
        devices=1,
        precision=plan.precision,  # bf16-mixed: Lightning's autocast around each call's steps, as a solo run's
        deterministic=deterministic,
        logger=False,  # each job has its own TensorBoard run
        callbacks=[callback],
        enable_checkpointing=False,  # each job has its own checkpoints
        # not Lightning's SLURM environment: its USR1 requeue would save and resume the group's
        # Trainee, which holds none of the jobs' state (they resume from their own checkpoints)
        plugins=[LightningEnvironment()],
        # a scratch folder: Lightning resumes by itself from an hpc_ckpt_*.ckpt it finds in default_root_dir
        default_root_dir=scratch,
    )


def build_callbacks(cfg: Any, logged: list[str]) -> list[L.Callback]:
    """The ``callbacks`` group's entries, each ``{_target_: ..., **arguments}``; ``logged`` are
    the metrics a callback may monitor (none starting with val_ without a validation split)."""
    built = []
    for name, spec in (cfg or {}).items():
        monitor = spec.get("monitor") if isinstance(spec, Mapping) else None
        if isinstance(monitor, str) and monitor not in logged:
            if monitor.startswith("val_") and not any(m.startswith("val_") for m in logged):
                raise ConfigError(f"callbacks.{name} monitors {monitor} but the run has no validation split; set data.val_fraction above 0")
            raise ConfigError(f"callbacks.{name}.monitor={monitor} is not logged by this run; pick one of: {', '.join(logged)}")
        target = spec.get("_target_") if isinstance(spec, Mapping) else None
        if not _is_callback_class(target):  # checked before anything is called: a target may be any callable
            raise ConfigError(f"callbacks.{name}._target_={target} is not a Lightning callback class; nothing was built")
        try:
            callback = instantiate(spec)
        except InstantiationException as err:
            raise ConfigError(f"callbacks.{name} cannot be built: {_reason(err)}") from None
        built.append(callback)
    return built


def _is_callback_class(target: Any) -> bool:
    from microtrain.config.targets import locate_class

    found = locate_class(str(target))
    return found is not None and issubclass(found, L.Callback)


def _reason(err: Exception) -> str:
    """The underlying reason of Hydra's InstantiationException (a policy, a TypeError, ...), not
    its last line, which is often only ``full_key: callbacks.x``."""
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause).strip():
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[0]}"
    lines = [line for line in str(err).strip().splitlines() if line.strip() and not line.strip().startswith("full_key")]
    return lines[0] if lines else type(err).__name__
