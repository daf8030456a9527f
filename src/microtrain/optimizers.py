"""Optimizers and learning-rate schedulers from config: any ``torch.optim`` class via ``_target_``."""

from collections.abc import Callable, Mapping
from typing import Any, Optional

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from microtrain import validate
from microtrain.errors import ConfigError


def optimizer_factory(cfg: Mapping[str, Any]) -> Callable[..., torch.optim.Optimizer]:
    """A function of the parameters, from ``_target_: torch.optim.X`` and ``_partial_: true``."""
    if "_target_" not in cfg:
        raise ConfigError("optimizer has no _target_; pick one with optimizer=sgd|adam|adamw")
    validate.number(cfg.get("lr"), "optimizer.lr", positive=True)
    for key in ("momentum", "weight_decay", "dampening"):
        if key in cfg:
            validate.number(cfg[key], f"optimizer.{key}", minimum=0.0)
    factory = _instantiate(cfg, "optimizer")

    def make(params: Any) -> torch.optim.Optimizer:
        try:
            return factory(params)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"optimizer {cfg['_target_']} refused its settings: {err}") from None

    return make


def scheduler_factory(cfg: Optional[Mapping[str, Any]]) -> Optional[Callable[..., Any]]:
    """A function of the optimizer, or None when no scheduler is configured; stepped once per epoch."""
    if not cfg or "_target_" not in cfg:
        return None
    return _instantiate(cfg, "scheduler")


def _instantiate(cfg: Mapping[str, Any], key: str) -> Any:
    try:
        return instantiate(cfg, _partial_=True)
    except InstantiationException as err:
        reason = str(err).strip().splitlines()[0]
        raise ConfigError(f"{key}._target_={cfg['_target_']!r} cannot be built: {reason}") from None
