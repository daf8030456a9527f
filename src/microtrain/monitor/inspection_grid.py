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
    """``log.inspect_every_n_steps=auto``'s rule: the planned grid is doubled until inspection,
    at its measured costs (one with histograms costs ~5x one without for a 64-job stack) and the
    run's time per step, fits ``log.inspect_budget`` of the whole run as projected (the start-up,
    the time so far and the steps left); the histogram grid widens first while histograms cost
    more of what is left. The time per step is the median over the last intervals between
    inspections (their inspection cost taken out), so a compile, a validation or a checkpoint
    write in one of them does not make the rest of the run look slow. The points stay on the
    planned grid's steps, spread over the run. (A rule on the cost so far alone inspected a
    64-job stack every 5 steps to step ~300, then every 640.)"""

    RECENT = 16  # intervals the time per step is the median of

    def __init__(self, budget: float, first_step: int, planned: Optional[float]):
        self.budget, self.first_step, self.planned = budget, first_step, planned
        self.spent = 0.0
        self.costs: dict[bool, list] = {False: [0.0, 0], True: [0.0, 0]}  # seconds and count of inspections without and with histograms
        self.started, self.start_up = time.perf_counter(), microtrain.start_up()  # what the budget is a share of
        self.marks: list[tuple[int, float, float]] = []  # (step, time, seconds spent) of the recent inspections

    def add(self, seconds: float, histograms: bool) -> None:
        self.spent += seconds
        self.costs[histograms][0] += seconds

    def inspections(self) -> tuple[int, int]:
        """(inspections, of which with histograms) so far."""
        return int(self.costs[False][1] + self.costs[True][1]), int(self.costs[True][1])

    def widened(self, step: int, every: int, histogram_every: int, histograms: bool, planned: tuple[int, int]) -> tuple[int, int]:
        """(every, histogram_every) after an inspection at ``step`` (its cost added): the
        ``planned`` grid doubled as little as fits, so it narrows again as the costs measured
        settle (the first inspections are the slowest); a run of unknown length doubles its
        grid once per inspection over the budget so far."""
        self.costs[histograms][1] += 1
        now = time.perf_counter()
        self.marks = [*self.marks[-self.RECENT :], (step, now, self.spent)]
        elapsed = now - self.started
        left = max(self.planned - step - 1, 0) if self.planned and math.isfinite(self.planned) else 0
        if not left:
            over = self.spent > self.budget * (self.start_up + elapsed)
            return (every * 2, histogram_every * 2) if over else (every, histogram_every)
        rates = sorted((t - t0 - (c - c0)) / (s - s0) for (s0, t0, c0), (s, t, c) in zip(self.marks, self.marks[1:]) if s > s0)
        if not rates:  # the first inspection: nothing measured yet
            return every, histogram_every
        allowance = self.budget * (self.start_up + elapsed + left * max(rates[len(rates) // 2], 0.0))
        (plain, n_plain), (drawn, n_drawn) = self.costs[False], self.costs[True]
        c_plain = plain / n_plain if n_plain else drawn / n_drawn / 5
        c_drawn = drawn / n_drawn if n_drawn else c_plain
        every, histogram_every = planned
        last = step + left  # the run's last step: the points left are the grid's steps after this one, up to it
        while True:
            drawings = last // histogram_every - step // histogram_every
            drawing, plain_left = drawings * c_drawn, (last // every - step // every - drawings) * c_plain
            if self.spent + drawing + plain_left <= allowance or last // every == step // every:  # fits, or no point is left
                return every, histogram_every
            if drawing >= plain_left and drawings:
                histogram_every *= 2
            else:
                every *= 2
                histogram_every = math.lcm(every, histogram_every)  # still a step of the planned histogram grid
