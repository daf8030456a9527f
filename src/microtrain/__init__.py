"""microtrain: train a linear model or a small MLP and see what its weights and gradients do.

From Python: ``run = microtrain.train("model=mlp")``, ``microtrain.sweep(...)``,
``microtrain.load(folder)``, ``microtrain.explain_step(...)`` (``microtrain.api``).
"""

import time
from typing import Any, Optional

__version__ = "0.2.0"
STARTED = time.perf_counter()  # the command's start: its first import of microtrain (a Python call restarts it)
START_UP: Optional[float] = None  # the seconds from STARTED to this process's first run: imports, composing


def restart_clock() -> None:
    """A Python call is a command that starts now: its start-up counts from here, not from the
    import (a notebook's first call an hour after ``import microtrain``)."""
    global STARTED
    if START_UP is None:
        STARTED = time.perf_counter()


def start_up() -> float:
    """At a run's start: the seconds its process's first run waited for (imports, composing), which
    a run's inspection budget (``log.inspect_budget``) counts besides the run's own time. A
    command's single run counts its imports, so a short run still gets a dense grid; every later
    run of the process (a sweep's jobs and groups, a notebook's calls) gets the same allowance
    instead of the process's age (with which later jobs never thinned out, and a notebook's run an
    hour after its import had 180 s of budget)."""
    global START_UP
    if START_UP is None:
        START_UP = time.perf_counter() - STARTED
    return START_UP


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
