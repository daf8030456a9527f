"""SIGTERM (what SLURM and most schedulers send on pre-emption), SIGINT (Ctrl-C) and SLURM's
USR1 warning: the run writes ``last.ckpt`` at the next step boundary (the end of a Lightning
call: at most ``loop.steps_per_call`` steps), records ``"status": "interrupted"`` and exits
128 + the signal (143 for SIGTERM, 130 for SIGINT). A second Ctrl-C stops at once.

Under SLURM with auto-requeue, Lightning's own SLURM environment handles USR1 (it saves and
requeues the job); these handlers are added to Lightning's, not put in their place.

A sweep's worker processes (joblib's, submitit_local's) learn of a SIGTERM to the sweep's
process through a stop file: ``kill <pid>`` reaches only the process it names, so that process
writes ``<sweep>/.stop``, and each worker ends its job at its next step boundary as a single run
does, with ``last.ckpt`` and ``interrupted``; jobs not started yet are marked so. A file, not a
forwarded signal: a worker still importing has no handler yet, and a signal would kill it.
(Ctrl-C reaches the whole process group from the terminal already.) No Lightning here: the
sweep's process imports this."""

import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any, Optional

from microtrain.errors import Interrupted

received: Optional[int] = None  # the signal received, process-wide (a sweep stops launching after it)
STOP_FILE = "MICROTRAIN_SWEEP_STOP"  # the environment variable naming a sweep's stop file, inherited by its workers


def _note(signum: int, frame: Optional[FrameType]) -> None:
    global received
    if signum == signal.SIGINT and received == signal.SIGINT:
        raise KeyboardInterrupt  # the second Ctrl-C
    received = signum
    stop = os.environ.get(STOP_FILE)
    if stop and signum == signal.SIGTERM:
        try:
            Path(stop).touch()
        except OSError:
            pass


def note(signum: int) -> None:
    """A signal learnt of otherwise than through ``install``'s handlers (Lightning's SIGTERMException)."""
    _note(signum, None)


def stop_signal() -> Optional[int]:
    """The signal this process received, or SIGTERM when its sweep's process received one (the
    stop file exists); None otherwise. A stat every Lightning call: microseconds."""
    if received is not None:
        return received
    stop = os.environ.get(STOP_FILE)
    return signal.SIGTERM if stop and os.path.exists(stop) else None


def start_sweep(folder: Path) -> None:
    """In a sweep's own process, before its workers start: they inherit where its stop file is."""
    stop = Path(folder).resolve() / ".stop"
    stop.unlink(missing_ok=True)  # one left by an interrupted sweep that is now resumed
    os.environ[STOP_FILE] = str(stop)
    install()


_previous: dict[int, Any] = {}


def install() -> None:
    """From the start of a run or a sweep: a signal is noted, and acted on at the next safe point."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not _note:
            _previous[signum] = signal.getsignal(signum)
            signal.signal(signum, _note)


def restore() -> None:
    """The handlers of before ``install`` (a sweep's later jobs install them again)."""
    for signum, handler in list(_previous.items()):
        signal.signal(signum, handler)
        del _previous[signum]


def forget() -> None:
    """The handlers of before ``install``, and no signal noted: the next run in this process (a
    notebook's next ``microtrain.train`` after a Ctrl-C) starts as if none had come."""
    global received
    restore()
    received = None


def check() -> None:
    """Raise Interrupted if a signal came during the start-up (called between its phases)."""
    signum = stop_signal()
    if signum is not None:
        raise Interrupted(f"interrupted by {signal.Signals(signum).name} during start-up", signum)
