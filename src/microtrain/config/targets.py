"""Run folders are not trusted code. ``resume=true``, ``predict.py`` and ``report.py`` read a run's
``config.yaml``, and a ``_target_`` there names a callable that Hydra would import and call:
handed a folder by a stranger, that is their code (a pickled ``.npy`` loaded through
``numpy.load``, ``pathlib.Path.unlink``, ...). So every ``_target_`` of a run's config must be a
class of the allow-list (a ``torch.optim`` optimizer or scheduler, one of the Lightning
callbacks that write no file), at the top of its entry, checked before anything is imported or built;
``trust_run_config=true`` lifts the check for a folder you trust."""

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from microtrain.errors import ConfigError

ALLOWED = ("torch.optim.", "lightning.pytorch.callbacks.", "pytorch_lightning.callbacks.", "microtrain.")
SECTIONS = ("optimizer", "scheduler", "callbacks")
# Callbacks a run folder may name: those that write no file. ModelCheckpoint and its kin take
# paths (dirpath, and the paths of the checkpoints they remove), which a stranger's folder
# would choose; microtrain makes its own checkpoint callbacks.
CALLBACKS = ("EarlyStopping", "LearningRateMonitor", "Timer")
TRUST = "if you trust this folder, add trust_run_config=true"


def _targets(node: Any, key: str, depth: int) -> list[tuple[str, Any, int]]:
    """(dotted key, _target_ value, how deep below its entry) of every _target_ under ``node``."""
    found = []
    if isinstance(node, DictConfig):
        for name in node.keys():
            value = node._get_node(name)
            if name == "_target_":
                found.append((key, OmegaConf.select(node, "_target_", default=None), depth))
            elif isinstance(value, (DictConfig, ListConfig)):
                found += _targets(value, f"{key}.{name!s}", depth + 1)
    elif isinstance(node, ListConfig):
        for i, value in enumerate(node):
            found += _targets(value, f"{key}[{i}]", depth + 1)
    return found


def check_run_config(cfg: DictConfig, source: Path, trusted: bool = False) -> None:
    """ConfigError naming the first ``_target_`` of ``cfg`` (read from ``source``) that is not
    an allowed class at the top of an optimizer, scheduler or callback entry; nothing is run."""
    if trusted:
        return
    for section in SECTIONS:
        node = cfg.get(section) if isinstance(cfg, DictConfig) else None
        if not isinstance(node, (DictConfig, ListConfig)):
            continue
        top = 1 if section == "callbacks" else 0  # callbacks.<name>._target_; optimizer._target_
        for key, target, depth in _targets(node, section, 0):
            if depth != top:
                raise ConfigError(
                    f"{source}: {key}._target_={target} is nested in another entry's arguments, which a run "
                    f"folder may not do; nothing was run ({TRUST})"
                )
            if not isinstance(target, str) or not _allowed_class(target, section):
                named = "one of Lightning's " + ", ".join(CALLBACKS) if section == "callbacks" else "a class of torch.optim"
                raise ConfigError(f"{source}: {key}._target_={target} is not {named}; nothing was run ({TRUST})")


def _allowed_class(target: str, section: str) -> bool:
    """The dotted path names a public class of an allowed package: no private module (importing
    ``microtrain.__main__`` would start a run) and no attribute chain such as
    ``torch.optim.optimizer.torch.load`` that leads out of it. Only allowed packages are imported."""
    allowed = ALLOWED[1:3] if section == "callbacks" else ALLOWED[:1]
    if not target.startswith(allowed) or any(part.startswith("_") for part in target.split(".")):
        return False
    if section == "callbacks" and target.rsplit(".", 1)[-1] not in CALLBACKS:
        return False
    found = locate_class(target)
    return found is not None and f"{found.__module__}.".startswith(allowed)


def locate_class(target: str) -> Any:
    """The class a dotted path names (Hydra's own lookup), or None: not importable, or not a class."""
    import logging

    from hydra.utils import get_class

    quiet = logging.getLogger("hydra.utils")
    was, quiet.disabled = quiet.disabled, True  # get_class logs its own error before raising it
    try:
        found = get_class(target)
    except Exception:  # noqa: BLE001 -- not importable, or not a class: None either way
        return None
    finally:
        quiet.disabled = was
    return found if isinstance(found, type) else None
