"""A run folder holds one run at a time: the run holds ``<run>/.lock`` (``fcntl.flock``, released
by the kernel when the process ends, even by SIGKILL), and a second run into it is refused."""

import fcntl
import os
from pathlib import Path
from typing import IO, Optional

from microtrain.errors import FolderBusy

_held: dict[Path, IO] = {}


def acquire(run_dir: Path) -> None:
    """Take the folder's lock for the rest of this process's run (or FolderBusy if another run holds it)."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held or int(os.environ.get("LOCAL_RANK", 0)) or int(os.environ.get("NODE_RANK", 0)):
        return  # held already, or a DDP child rank of the run that holds it
    run_dir.mkdir(parents=True, exist_ok=True)
    # O_NOFOLLOW: a .lock that is a link to a file elsewhere is never opened (nor truncated) through
    handle = os.fdopen(os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise _busy(run_dir, owner) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _held[run_dir] = handle


def check_free(run_dir: Path) -> None:
    """FolderBusy if another run holds the folder's lock; nothing is created or taken. Checked
    before anything reads the folder, so a busy folder is not called an unfinished run to resume."""
    run_dir = Path(run_dir).resolve()
    lock = run_dir / ".lock"
    if run_dir in _held or int(os.environ.get("LOCAL_RANK", 0)) or int(os.environ.get("NODE_RANK", 0)) or not lock.is_file() or lock.is_symlink():
        return
    try:
        handle = os.fdopen(os.open(lock, os.O_RDONLY | os.O_NOFOLLOW), "r")
    except OSError:
        return  # gone since, or not readable: acquire() decides
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = handle.read().strip() or "another process"
            raise _busy(run_dir, owner) from None
        fcntl.flock(handle, fcntl.LOCK_UN)


def _busy(run_dir: Path, owner: str) -> FolderBusy:
    return FolderBusy(f"{run_dir} is in use by a run still going (pid {owner}); wait for it to end or choose another hydra.run.dir")


def holds(run_dir: Path) -> bool:
    """Whether this process holds the folder's lock."""
    return Path(run_dir).resolve() in _held


def release(run_dir: Optional[Path] = None) -> None:
    for path in [Path(run_dir).resolve()] if run_dir else list(_held):
        handle = _held.pop(path, None)
        if handle is not None:
            (path / ".lock").unlink(missing_ok=True)  # a finished folder keeps no lock file; unlinked while still held
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
