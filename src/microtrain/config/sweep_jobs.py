"""A sweep's job configs, composed once per choice of config groups instead of twice per job.

Hydra's BasicSweeper composes every job to check it (``validate_batch_is_legal``) and its
launcher then composes it again; each composition reads and merges the config tree anew
(~0.15 s a job here: 57 % of a 64-job stacked sweep was composing). Most jobs of a sweep differ
from each other only in values (``optimizer.lr=0.01,0.1 seed=0,1``), and Hydra applies such a
``key=value`` override *after* composing, by ``OmegaConf.update(cfg, key, value, merge=True)``.
So a job whose overrides differ from an already composed job's only in plain values is that
job's config with its own values assigned, and its ``hydra.overrides.task`` and
``hydra.job.override_dirname`` written as Hydra writes them. Everything else (config groups,
``+``, ``++``, ``~``, ``hydra.*``, dict values) is composed by Hydra itself.
``tests/test_sweep_compose.py`` composes mixed sweeps both ways and requires the same configs.
"""

import copy
import pickle
import re
from collections.abc import Sequence
from typing import Any, Optional, cast

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf


class SweepConfigs:
    """``load(overrides)``: the job's config, as ``config_loader.load_sweep_config`` composes it."""

    def __init__(self, config_loader: Any, master_config: DictConfig):
        self.loader, self.master = config_loader, master_config
        self.parser = OverridesParser.create(config_loader=config_loader)
        self.templates: dict[tuple, tuple[DictConfig, list[Override]]] = {}
        self.composed = 0  # how many configs Hydra composed (the rest were derived)
        self.parsed: dict[str, Override] = {}

    def parse(self, overrides: Sequence[str]) -> list[Override]:
        """Hydra's reading of each override, once per distinct text: the jobs of a grid share most
        of theirs, and Hydra's grammar takes ~0.1 ms an override (1 ms a job of the benchmark's sweep)."""
        new = list(dict.fromkeys(o for o in overrides if o not in self.parsed))
        self.parsed.update(zip(new, self.parser.parse_overrides(new)))
        return [self.parsed[o] for o in overrides]

    def load(self, overrides: Sequence[str]) -> DictConfig:
        parsed = self.parse(overrides)
        key = self._shape(parsed)
        if key is None or key not in self.templates:
            config = self.loader.load_sweep_config(self.master, list(overrides))
            self.composed += 1
            if key is not None:
                self.templates[key] = (config, parsed)
            return _copy(config) if key is not None else config
        template, _ = self.templates[key]
        config = _copy(template)
        for override in parsed:
            if self._is_value(override):
                OmegaConf.update(config, override.key_or_group, override.value(), merge=True)  # as Hydra applies it
        task = [o for o in parsed if not o.is_hydra_override()]
        naming = config.hydra.job.config.override_dirname
        config.hydra.overrides.task = [o.input_line for o in task]
        config.hydra.job.override_dirname = overrides_dirname(task, list(naming.exclude_keys), naming.item_sep, naming.kv_sep)
        OmegaConf.copy_cache(from_config=self.master, to_config=config)
        return config

    def _shape(self, parsed: list[Override]) -> Optional[tuple]:
        """What must match for two jobs to share a composition: every override but plain values
        as written, and the keys (in order) of the plain values; None if nothing may be shared."""
        return tuple(o.key_or_group if self._is_value(o) else ("as written", o.input_line) for o in parsed)

    def _is_value(self, override: Override) -> bool:
        """A ``key=value`` of a config value: applied after composition, not part of it."""
        if override.is_delete() or override.is_add() or override.is_force_add() or override.is_hydra_override():
            return False
        if override.package is not None or "/" in override.key_or_group or isinstance(override.value(), dict):
            return False
        return not self.loader.repository.group_exists(override.key_or_group.replace(".", "/"))


def _copy(config: DictConfig) -> DictConfig:
    """A deep copy, flags and types included, through pickle (which OmegaConf supports): 1.9 ms
    against copy.deepcopy's 4.7 ms for a whole job config with its hydra node (measured here)."""
    try:
        return cast(DictConfig, pickle.loads(pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)))
    except (pickle.PicklingError, TypeError, AttributeError):  # an object node (allow_objects) that does not pickle
        return copy.deepcopy(config)


def overrides_dirname(overrides: list[Override], exclude_keys: list[str], item_sep: str, kv_sep: str) -> str:
    """``hydra.job.override_dirname``, as Hydra's ``get_overrides_dirname`` (an internal module) writes it."""
    lines = sorted(cast(str, o.input_line) for o in overrides if o.key_or_group not in exclude_keys)
    return re.sub("=", kv_sep, item_sep.join(lines))


class ComposedOnce:
    """The config loader a launcher gets from microtrain's sweeper: each job's config as the
    sweeper already composed it to check it, handed over once; anything else goes to Hydra's
    loader. Sent to another process (joblib, submitit), it goes without its held configs."""

    def __init__(self, loader: Any):
        self.loader = loader
        self.held: dict[tuple[str, ...], DictConfig] = {}

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        held = self.held.pop(tuple(sweep_overrides), None)
        return held if held is not None else self.loader.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __getstate__(self) -> dict[str, Any]:
        return {"loader": self.loader, "held": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
