"""What every command prints through, and what it quiets: the consoles, a finished run's lines,
Lightning's chatter, and the start-up (the garbage-collector pause while torch and Lightning
import, and the ``scipy.signal`` that torchmetrics would import with them). Here,
below both ``microtrain.cli`` and the stacked launcher, so neither imports the other."""

import gc
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from rich.console import Console

console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
error_console = Console(stderr=True, highlight=False, soft_wrap=True)


def quiet_libraries() -> None:
    """Lightning's banner lines ("GPU available: ...") and tips say nothing the run summary does not."""
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    # a run that ends before its first validation has no best.ckpt: its final weights are tested (cli says so)
    warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
    # checkpoint.every_n_steps: microtrain's step checkpoints land between steps, after an update
    # is whole, which is what the warning asks for (the note about pre-optimization state)
    warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")
    # a stacked Adam step: torch.func has no batching rule for lerp_ (the op torch.optim.Adam's
    # moments use, kept for bitwise equality) and loops over the jobs for it; nothing to act on
    warnings.filterwarnings("ignore", message=".*not yet implemented the batching rule for aten::lerp_.*")


@contextmanager
def start_up_collection_paused() -> Iterator[None]:
    """No garbage collection while torch and Lightning import (~1M objects, nearly all kept for
    good): measured here, 7 full collections took 0.56 s of a 3.5 s start-up. The survivors are
    then frozen, so the collections during training no longer walk them either."""
    if "lightning.pytorch" in sys.modules:  # a later job of a sweep, or a Python call after one: imported already
        yield
        return
    gc.disable()
    try:
        with _scipy_signal_deferred():
            yield
    finally:
        gc.freeze()
        gc.enable()


class _DeferredSignal(ModuleType):
    """``scipy.signal`` while Lightning imports. Lightning imports torchmetrics, whose
    ``__init__`` imports ``scipy.signal`` (0.6 s here, a fifth of a command's start-up) only to
    alias ``scipy.signal.hamming`` for SRMRpy, and microtrain uses nothing of it. Anything else
    read from it during the start-up loads the real module; after it, ``import scipy.signal``
    loads the real one as usual."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name != "__path__":  # probed by walks over sys.modules (__file__)
            raise AttributeError(name)  # (__path__: an import of one of its submodules, which needs the real one)
        import importlib

        if sys.modules.get(self.__name__) is self:  # not once the real one is loaded: it stays
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)

    @staticmethod
    def hamming(*args: Any, **kwargs: Any) -> Any:  # what torchmetrics checks for: scipy's own, when called
        from scipy.signal import windows

        return windows.hamming(*args, **kwargs)


@contextmanager
def _scipy_signal_deferred() -> Iterator[None]:
    if "scipy.signal" in sys.modules or importlib.util.find_spec("scipy") is None:
        yield
        return
    import scipy

    deferred = _DeferredSignal("scipy.signal")
    deferred.__spec__ = importlib.util.find_spec("scipy.signal")  # found, not run: find_spec() of it works meanwhile
    sys.modules["scipy.signal"] = scipy.signal = deferred
    try:
        yield
    finally:
        if sys.modules.get("scipy.signal") is deferred:
            del sys.modules["scipy.signal"]
        if scipy.__dict__.get("signal") is deferred:
            del scipy.signal  # scipy's own lazy attribute imports the real one when read


def print_start(cfg: Any) -> None:
    """A compact tree of what this run uses: one line per config group, and the device."""
    from rich.tree import Tree

    from microtrain.device import resolve

    plan = resolve(cfg.device)  # raises the one-line device error before anything starts
    if int(os.environ.get("LOCAL_RANK", 0)) or int(os.environ.get("NODE_RANK", 0)):
        return  # the other ranks of a DDP run stay quiet
    tree = Tree(f"[bold]microtrain[/bold] on {plan.description}, precision {plan.precision}")
    for group in ("model", "loss", "optimizer", "scheduler", "data", "trainer", "loop", "checkpoint", "log", "callbacks"):
        section = cfg[group]
        if section:
            tree.add(f"[bold]{group}[/bold] " + "  ".join(f"{k}={_short(v)}" for k, v in section.items() if k != "_partial_"))
    console.print(tree)


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def one_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else 'no message'}"


def fmt(value: object) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def print_result(run_dir: Path, metrics: dict[str, Any], best_checkpoint: Optional[str], tensorboard: str) -> None:
    """A finished run's lines: its folder, final losses, test metrics, optimum, best checkpoint and TensorBoard."""
    console.print(f"run folder: {run_dir}")
    losses = "  ".join(f"{k}={fmt(metrics[k])}" for k in ("train_loss", "val_loss") if k in metrics)
    compiled = f", {metrics['compile_seconds']:.1f} s of it compiling" if "compile_seconds" in metrics else ""
    threads = f", {metrics['threads']} thread{'s' if metrics['threads'] > 1 else ''}" if "threads" in metrics else ""
    console.print(f"final: {losses}  ({metrics['steps']} steps, {metrics['seconds']:.1f} s{compiled}{threads})")
    tested = "  ".join(f"{k}={fmt(v)}" for k, v in metrics.items() if k.startswith("test_") and isinstance(v, float))
    if tested:
        # no best.ckpt when the run ended before its first validation: the final weights are tested
        checkpoint = Path(metrics["test_checkpoint"]).name if metrics.get("test_checkpoint") else "none, the final weights"
        console.print(f"test (checkpoint {checkpoint}): {tested}")
    if "train_loss_optimum" in metrics:
        console.print(f"least-squares optimum of the training loss: {fmt(metrics['train_loss_optimum'])} (gap {fmt(metrics['optimality_gap'])})")
    if best_checkpoint:
        console.print(f"best checkpoint: {best_checkpoint}")
    console.print(f"open TensorBoard: {tensorboard}")
