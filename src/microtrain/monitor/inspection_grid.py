"""Where ``log.inspect_every_n_steps=auto`` inspects: a grid of about INSPECT_POINTS points
over the planned run, HISTOGRAM_SLICES of them with histograms (``grid``), widened within
``log.inspect_budget`` of the run (``Budget``); a solo run's ``ParameterInspector`` and a
stacked group's ``StackedInspector`` both follow it."""

import math
import time
from typing import Optional

import microtrain

INSPECT_POINTS = 200  # auto: at least this many inspected steps over a run (250 for 500 steps)
HISTOGRAM_SLICES = 25  # auto: of which about this many also draw histograms


def grid(planned: Optional[float]) -> tuple[int, int]:
    """``auto``: (steps between inspections, steps between histogram slices) for a run of
    ``planned`` steps; the histogram interval is a multiple of the inspection one."""
    if not planned or not math.isfinite(planned):
        return 1, 1
    every = max(1, int(planned) // INSPECT_POINTS)
    return every, every * max(1, round(planned / every / HISTOGRAM_SLICES))


class Budget:
    """``log.inspect_every_n_steps=auto``'s rule: a grid is doubled until inspection, at its
    measured costs (an inspection with histograms, ~5x one without for a 64-job stack) and the
    run's measured time per step, fits ``log.inspect_budget`` of the whole run as projected (the
    start-up, the steps taken and those left); the histogram grid widens first while histograms
    cost more of what is left. The points spread over the run at a regular spacing. (A rule on
    the cost so far alone inspected a 64-job stack every 5 steps to step ~300, then every 640.)"""

    def __init__(self, budget: float, first_step: int, planned: Optional[float]):
        self.budget, self.first_step, self.planned = budget, first_step, planned
        self.spent = 0.0
        self.costs = {False: [0.0, 0], True: [0.0, 0]}  # seconds and count of inspections without and with histograms
        self.started, self.start_up = time.perf_counter(), microtrain.start_up()  # what the budget is a share of

    def add(self, seconds: float, histograms: bool) -> None:
        self.spent += seconds
        self.costs[histograms][0] += seconds

    def widened(self, step: int, every: int, histogram_every: int, histograms: bool, planned: tuple[int, int]) -> tuple[int, int]:
        """(every, histogram_every) after an inspection at ``step`` (its cost added): the
        ``planned`` grid doubled as little as fits, so it narrows again as the costs measured
        settle (the first inspections are the slowest); a run of unknown length doubles its
        grid once per inspection over the budget so far."""
        self.costs[histograms][1] += 1
        (plain, n_plain), (drawn, n_drawn) = self.costs[False], self.costs[True]
        c_plain = plain / n_plain if n_plain else drawn / n_drawn / 5
        c_drawn = drawn / n_drawn if n_drawn else c_plain
        elapsed, done = time.perf_counter() - self.started, step + 1 - self.first_step
        left = max(self.planned - step - 1, 0) if self.planned and math.isfinite(self.planned) else 0
        allowance = self.budget * (self.start_up + elapsed + left * max(elapsed - self.spent, 0.0) / max(done, 1))
        if not left:
            return (every * 2, histogram_every * 2) if self.spent > allowance else (every, histogram_every)
        every, histogram_every = planned
        while True:
            drawing, plain_left = left / histogram_every * c_drawn, max(left / every - left / histogram_every, 0.0) * c_plain
            if self.spent + drawing + plain_left <= allowance or every >= left:
                return every, histogram_every
            if drawing >= plain_left and histogram_every < left:
                histogram_every *= 2
            else:
                every *= 2
                histogram_every = every * max(1, math.ceil(histogram_every / every))
