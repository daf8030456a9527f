"""What a command sets for its process, put back when it ends: ``microtrain.api`` runs the
command line's own code in the caller's process (a notebook), which must find Hydra's global
state, its loggers, signal handlers, environment, working folder, torch's switches and the
garbage collector as they were."""

import contextlib
import gc
import io
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def hydra_kept() -> Iterator[None]:
    """Hydra's process-wide state as it was: no app initialized, no job's config, the version base
    (``version_base="1.3"`` sets it for the whole process)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.version import VersionBase

    version_base, app, job = VersionBase.instance().getbase(), GlobalHydra.instance().hydra, HydraConfig.instance().cfg
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        GlobalHydra.instance().hydra = app  # a caller's own Hydra app (a @hydra.main task calling microtrain) is kept
        HydraConfig.instance().cfg = job
        VersionBase.instance().version_base = version_base


@contextlib.contextmanager
def tee_stderr(copy: io.StringIO) -> Iterator[None]:
    """What the command prints to stderr reaches the notebook and ``copy`` both."""
    shown = sys.stderr

    class Tee(io.TextIOBase):
        def write(self, text: str) -> int:
            copy.write(text)
            return shown.write(text)

        def flush(self) -> None:
            shown.flush()

    with contextlib.redirect_stderr(Tee()):
        yield


@contextlib.contextmanager
def contained() -> Iterator[None]:
    """Everything a command sets for its process, put back when it ends (the global random
    generators excepted: ``seed`` seeds them, as the command line does; and glibc's malloc
    thresholds, ``microtrain.memory``, which glibc cannot report to restore)."""
    import torch  # the command imports it anyway

    # trainer.deterministic=true switches torch's deterministic algorithms on for the process
    deterministic = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    benchmark = torch.backends.cudnn.benchmark
    signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    argv, environ, cwd, hook = sys.argv[:], dict(os.environ), os.getcwd(), threading.excepthook
    raise_exceptions, frozen, collecting = logging.raiseExceptions, gc.get_freeze_count(), gc.isenabled()
    loggers = {
        name: (lg.level, lg.handlers[:], lg.propagate, lg.disabled)
        for name, lg in [("", logging.getLogger()), *logging.Logger.manager.loggerDict.items()]
        if isinstance(lg, logging.Logger)
    }
    if not frozen:  # what the process holds (torch, Lightning, the caller's objects) stays out of the
        gc.freeze()  # command's collections, as a command's start-up leaves it: a sweep's composing took 0.45 s, not 0.11
    try:
        with hydra_kept(), warnings.catch_warnings():  # the warning filters as they were (quiet_libraries adds some)
            yield
    finally:
        from microtrain.run import interrupt

        interrupt.forget()  # a Ctrl-C during this call does not stop the next one
        for number, handler in signals.items():
            signal.signal(number, handler)
        sys.argv, threading.excepthook = argv, hook
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        logging.raiseExceptions = raise_exceptions
        _restore_loggers(loggers)
        if gc.get_freeze_count() and not frozen:
            gc.unfreeze()  # the command's start-up froze what it imported; this process goes on collecting as before
        if not collecting:
            gc.disable()  # the start-up pause turns collection back on, as it found it in a command
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark = benchmark


def _restore_loggers(saved: dict[str, tuple[int, list, bool, bool]]) -> None:
    """Hydra's job logging configured the loggers (a file handler on train.log): closed, and the old ones back."""
    current = [("", logging.getLogger()), *logging.Logger.manager.loggerDict.items()]
    for name, logger in current:
        if not isinstance(logger, logging.Logger):
            continue
        if name not in saved:  # made during the call (Lightning's, on its import): only a log file of the run goes
            for file_handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
                logger.removeHandler(file_handler)
                file_handler.close()
            continue
        level, handlers, propagate, disabled = saved[name]
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled
