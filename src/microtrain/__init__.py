"""microtrain: train a linear model or a small MLP and see what its weights and gradients do."""

import time

__version__ = "0.2.0"
STARTED = time.perf_counter()  # when the command started (its first import of microtrain): inspection's budget counts from here
