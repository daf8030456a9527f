"""A TensorBoard event file that holds no open file and no thread between writes.

``SummaryWriter`` keeps its file open and a writer thread alive for the whole run. A stacked
sweep of 1,024 jobs would hold 1,024 of each (the open-file limit is often 1,024). Each job of
a stacked group writes its events here instead, in bursts (``monitor.scalars.ScalarBuffer``):
the file is opened for appending, the records written, and closed (~50 us a burst here). The
format is TensorBoard's own: ``RecordWriter``'s framing of ``Event`` protos, as ``EventFileWriter``
writes them, so TensorBoard's reader reads the file as any other.
"""

import itertools
import os
import socket
import time
from pathlib import Path
from typing import Optional

import google_crc32c
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer import record_writer
from tensorboard.summary.writer.record_writer import RecordWriter

_numbers = itertools.count()


def masked_crc32c(data: bytes) -> int:
    """TensorBoard's checksum of an event record (its ``masked_crc32c``), computed in C by
    google-crc32c. TensorBoard's own, which its writers use when TensorFlow is not installed, is
    a Python loop over the bytes: 119 us for a 1 kB histogram record against 0.4 us (measured
    here), 0.7 s of a 64-job stacked group's 4.5 s of training (cProfile, 1,000 steps).
    ``tests/test_report_and_tensorboard.py`` checks both give the same numbers."""
    x = google_crc32c.value(data)
    return (((x >> 15) | ((x << 17) & 0xFFFFFFFF)) + 0xA282EAD8) & 0xFFFFFFFF


# Every TensorBoard writer of the process uses it: this module's and SummaryWriter's (a solo run's
# logger, through Lightning), which both frame records with tensorboard's RecordWriter.
record_writer.masked_crc32c = masked_crc32c


class EventFile:
    def __init__(self, folder: Path, purge_step: Optional[int] = None):
        """A new event file in ``folder``. ``purge_step``: TensorBoard hides the points of steps
        from it on that earlier files hold (a resumed run's redone steps), as ``SummaryWriter(purge_step=...)``."""
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_numbers)}.train"
        self.path = folder / name
        first = [Event(wall_time=time.time(), file_version="brain.Event:2")]
        if purge_step is not None:
            first += [Event(step=purge_step, file_version="brain.Event:2"), Event(step=purge_step, session_log=SessionLog(status=SessionLog.START))]
        self._append(first)

    def add_summaries(self, summaries: list[tuple[Summary, int, float]]) -> None:
        """Several events with one opening of the file."""
        self._append([Event(summary=s, step=int(step), wall_time=wall) for s, step, wall in summaries])

    def flush(self) -> None:
        """As ``SummaryWriter.flush``: nothing is held, each write is in the file when it returns."""

    def close(self) -> None:
        """As ``SummaryWriter.close``: nothing stays open between writes."""

    def _append(self, events: list[Event]) -> None:
        with open(self.path, "ab") as handle:
            writer = RecordWriter(handle)
            for event in events:
                writer.write(event.SerializeToString())
