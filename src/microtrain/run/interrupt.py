"""SIGTERM (what SLURM and most schedulers send on pre-emption), SIGINT (Ctrl-C) and SLURM's
USR1 warning: the run writes ``last.ckpt`` at the next step boundary (the end of a Lightning
call: at most ``loop.steps_per_call`` steps), records ``"status": "interrupted"`` and exits
128 + the signal (143 for SIGTERM, 130 for SIGINT). A second Ctrl-C stops at once.

Under SLURM with auto-requeue, Lightning's own SLURM environment handles USR1 (it saves and
requeues the job); these handlers are added to Lightning's, not put in their place.

A sweep's main process forwards SIGTERM to its worker processes (joblib's, submitit_local's):
``kill <pid>`` reaches only the process it names, and each worker then ends its job as a
single run does, with ``last.ckpt`` and ``interrupted``. (Ctrl-C reaches the whole process
group from the terminal already.) No Lightning here: the sweep's main process imports this."""

import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any, Optional

from microtrain.errors import Interrupted

received: Optional[int] = None  # the signal received, process-wide (a sweep stops launching after it)


_forward = False  # this process runs a sweep's workers: SIGTERM goes on to them


def _note(signum: int, frame: Optional[FrameType]) -> None:
    global received
    if signum == signal.SIGINT and received == signal.SIGINT:
        raise KeyboardInterrupt  # the second Ctrl-C
    received = signum
    if _forward and signum == signal.SIGTERM:
        for child in _children():
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass


def _children() -> list[int]:
    """This process's child processes, from /proc (Linux): a sweep's workers."""
    me, found = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(name)": state, ppid, ...
        except (OSError, IndexError):
            continue
        if fields[1] == me:
            found.append(int(stat.parent.name))
    return found


_previous: dict[int, Any] = {}


def install(forward: bool = False) -> None:
    """From the start of a run (or of a sweep, ``forward``): a signal is noted, and acted on at the next safe point."""
    global _forward
    _forward = _forward or forward
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not _note:
            _previous[signum] = signal.getsignal(signum)
            signal.signal(signum, _note)


def restore() -> None:
    """The handlers of before ``install`` (a sweep's later jobs install them again)."""
    for signum, handler in list(_previous.items()):
        signal.signal(signum, handler)
        del _previous[signum]


def check(step: Optional[int] = None) -> None:
    """Raise Interrupted if a signal came (called between start-up phases and at step boundaries)."""
    if received is not None:
        name = signal.Signals(received).name
        where = f" at step {step}" if step is not None else " during start-up"
        raise Interrupted(f"interrupted by {name}{where}", received)
