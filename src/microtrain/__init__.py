"""microtrain: train a linear model or a small MLP and see what its weights and gradients do.

From Python: ``run = microtrain.train("model=mlp")``, ``microtrain.sweep(...)``,
``microtrain.load(folder)``, ``microtrain.explain_step(...)`` (``microtrain.api``).
"""

import time
from typing import Any

__version__ = "0.2.0"
STARTED = time.perf_counter()  # when the command started (its first import of microtrain): inspection's budget counts from here

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
