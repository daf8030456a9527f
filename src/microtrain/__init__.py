"""microtrain: train a linear model or a small MLP and see what its weights and gradients do.

From Python: ``run = microtrain.train("model=mlp")``, ``microtrain.sweep(...)``,
``microtrain.load(folder)``, ``microtrain.explain_step(...)`` (``microtrain.api``).
"""

import time
from typing import Any

__version__ = "0.2.0"
# Inspection's budget (log.inspect_budget) counts from here: the command's start (its first import
# of microtrain, so a short run's budget includes the start-up it waited for), a call of the
# Python API, or the end of the run before it in this process (a sweep's next job).
STARTED = time.perf_counter()


def restart_clock() -> None:
    """The next run of this process counts its budget from now: counted from the process's start,
    a notebook's run an hour after its import had 180 s of budget, and each job of a basic or
    stacked sweep run in one process the whole sweep's time so far (inspection never thinned out)."""
    global STARTED
    STARTED = time.perf_counter()


__all__ = ["train", "sweep", "load", "explain_step", "Run", "ConfigError"]


def __getattr__(name: str) -> Any:
    """The Python API, imported when first used: ``import microtrain`` itself stays light (the
    command line imports it first, before torch)."""
    if name in ("train", "sweep", "load", "explain_step", "compose"):
        from microtrain import api

        return getattr(api, name)
    if name == "Run":
        from microtrain.runs import Run

        return Run
    if name in ("ConfigError", "MicrotrainError"):
        from microtrain import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'microtrain' has no attribute {name!r}")
