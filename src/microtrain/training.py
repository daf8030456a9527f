"""``train(cfg, run_dir)``: one run, through the one engine.

A run whose config a stack can take (``stack.groups.why_alone``: the update rule of its
optimizer, its callbacks, its trainer settings) is a stack of one (``stack.alone``): the engine
of a stacked sweep with K = 1, so a solo run and each job of a sweep are the same code. A run
that needs Lightning to run one model its own way (several devices or a strategy, a callback
other than early stopping, an optimizer without an update rule in ``engine.step.RULES``)
trains through Lightning's per-step path (``engine.fit``), which also stays the independent
reference the stack is tested against."""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from microtrain.config import schema
from microtrain.engine import fit
from microtrain.engine.fit import RunResult
from microtrain.stack.alone import train_alone
from microtrain.stack.groups import why_alone


def train(cfg: DictConfig, run_dir: Path, resume_changes: Optional[list[str]] = None, begin: Optional[Callable[[], None]] = None) -> RunResult:
    """Train one run into ``run_dir`` (``engine.fit.train``'s arguments, result and errors)."""
    schema.check(cfg)  # every key's type and range, before anything is built or written
    why = why_alone(cfg)

    def started() -> None:  # once the run is built: train.log says which engine took it (a refused run writes nothing)
        if begin is not None:
            begin()
        engine = "a stack of one (stack.alone)" if why is None else f"Lightning's per-step path (engine.fit), as a stack does not take it: {why}"
        logging.getLogger("microtrain").info("engine: %s", engine)

    if why is None:
        return train_alone(cfg, run_dir, resume_changes, started)
    return fit.train(cfg, run_dir, resume_changes, started)
