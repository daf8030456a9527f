"""Optimizers and learning-rate schedulers from config: any ``torch.optim`` class via ``_target_``
whose step needs no closure (not LBFGS)."""

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Optional, cast

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from microtrain.errors import ConfigError


def optimizer_factory(cfg: Mapping[str, Any]) -> Callable[..., torch.optim.Optimizer]:
    """A function of the parameters, from ``_target_: torch.optim.X`` and ``_partial_: true``
    (``optimizer=torch``: ``_target_`` made from ``name``, which is not the class's argument)."""
    config = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.create(dict(cfg)), resolve=True))
    arguments = {k: v for k, v in config.items() if k != "name"}
    partial = _instantiate(arguments, "optimizer")
    step = getattr(getattr(partial, "func", None), "step", None)
    closure = inspect.signature(step).parameters.get("closure") if callable(step) else None
    if closure is not None and closure.default is inspect.Parameter.empty:  # torch.optim.LBFGS
        raise ConfigError(
            f"optimizer {arguments['_target_']} needs a closure that evaluates the loss again within its step, "
            "which microtrain's step (forward, loss, backward, update) does not give; choose another optimizer"
        )
    return OptimizerFactory(partial, str(arguments["_target_"]))


class OptimizerFactory:
    """Builds the optimizer for the parameters (or the scheduler for the optimizer); a class, not a
    closure, so ddp_spawn can pickle it."""

    def __init__(self, partial: Callable[..., Any], target: str, key: str = "optimizer"):
        self.partial, self.target, self.key = partial, target, key

    def __call__(self, argument: Any) -> Any:
        try:
            return self.partial(argument)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{self.key} {self.target} refused its settings: {err}{self._suggestion(err)}") from None

    def _suggestion(self, err: Exception) -> str:
        """A mistyped argument (+optimizer.lrr=0.1): the closest one the class takes."""
        import re

        from microtrain.config.overrides import did_you_mean

        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        target = getattr(self.partial, "func", None)
        if not unexpected or target is None:
            return ""
        try:
            names = [n for n in inspect.signature(target).parameters if n not in ("self", "params", "optimizer")]
        except (TypeError, ValueError):
            return ""
        hint = did_you_mean(unexpected.group(1), names).strip()
        return f"; did you mean {self.key}.{hint[len('(did you mean ') : -1]}" if hint else ""


def scheduler_factory(cfg: Optional[Mapping[str, Any]]) -> Optional[Callable[..., Any]]:
    """A function of the optimizer, or None when no scheduler is configured; stepped once per
    epoch, a ``on_val_loss`` one once per validation, on its val_loss."""
    if not cfg or "_target_" not in cfg:
        return None
    return OptimizerFactory(_instantiate(cfg, "scheduler"), str(cfg["_target_"]), "scheduler")


def trial_step(make_optimizer: Callable[..., torch.optim.Optimizer], model: torch.nn.Module, on_gpu: bool = False) -> torch.optim.Optimizer:
    """The optimizer, built over stand-ins of the model's weights (one element each, of their
    dtype and number of dimensions) that take one step on zero gradients: torch.optim checks some
    settings only in ``step()`` (SparseAdam's sparse gradients, Rprop's ``step_sizes``, an lr that
    overflows), which would otherwise fail once training has started. ~0.1-0.3 ms (measured).
    On a GPU run, not stepped with ``capturable`` or ``fused``, which need the weights there (the
    stand-ins stay on the CPU: CUDA is not started before Lightning starts it)."""
    stand_ins = [torch.zeros((1,) * p.dim(), dtype=p.dtype, requires_grad=True) for p in model.parameters()]
    trial = make_optimizer(stand_ins)
    if on_gpu and any(group.get("capturable") or group.get("fused") for group in trial.param_groups):
        return trial
    for stand_in in stand_ins:
        stand_in.grad = torch.zeros_like(stand_in)
    try:
        trial.step()
    except Exception as err:  # noqa: BLE001 -- whatever the class raises is the user's settings
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        target = getattr(make_optimizer, "target", "")
        raise ConfigError(f"optimizer {target} cannot take a step with these settings: {reason}") from None
    return trial


def check_length(scheduler: Any, max_epochs: Optional[int]) -> None:
    """A OneCycleLR shorter than the run, one step an epoch, raises past its last step: once the
    earlier epochs have trained (and ``overwrite=true`` has removed the earlier run)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and max_epochs is not None and 0 < scheduler.total_steps < max_epochs:
        raise ConfigError(
            f"scheduler OneCycleLR takes {scheduler.total_steps} steps, one an epoch here, but trainer.max_epochs={max_epochs}: "
            f"set +scheduler.total_steps={max_epochs}"
        )


def on_val_loss(scheduler: Any) -> bool:
    """Whether the scheduler steps on a metric (ReduceLROnPlateau): microtrain hands it val_loss."""
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _instantiate(cfg: Mapping[str, Any], key: str) -> Any:
    try:
        # _convert_="all": a list (betas, etas, milestones) reaches torch as a list; an OmegaConf
        # ListConfig would be saved in the checkpoint, which torch.load(weights_only=True) refuses
        return instantiate(cfg, _partial_=True, _convert_="all")
    except InstantiationException as err:
        reason = str(err).strip().splitlines()[0]
        module, _, name = str(cfg["_target_"]).rpartition(".")
        if key == "optimizer" and module == "torch.optim":  # optimizer.name=adam (a module) or Bogus: the classes there are
            from microtrain.config.overrides import did_you_mean

            names = sorted(
                n for n, c in vars(torch.optim).items() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and n != "Optimizer"
            )
            reason = f"torch.optim has no optimizer class {name}{did_you_mean(name, names)}; it has {', '.join(names)}"
        raise ConfigError(f"{key}._target_={cfg['_target_']!r} cannot be built: {reason}") from None
