"""microtrain from Python and notebooks: ``train``, ``sweep``, ``load`` and ``explain_step``.

    import microtrain as mt
    run = mt.train("model=mlp", "optimizer.lr=0.1")        # a Run: .metrics, .history, .predict(x), .plot()
    table = mt.sweep("optimizer.lr=0.01,0.1", "seed=0,1")  # one row per job, as summary.csv
    step = mt.explain_step("+experiment=mlp_3_3_1_by_hand")  # .grads, .chain (the backward pass layer by layer)

``train`` and ``sweep`` run the command line's own code in this process: Hydra composes the
shipped configs (``pkg://microtrain.conf``, plus ``config_dir=`` for your own), the same schema
checks run, the same engine trains, and the run folder is the one ``scripts/train.py`` writes
with the same overrides. So the import of torch and Lightning (~5 s here) is paid once per
process, and each later call costs about its training. What a command sets for its process
(Hydra's global state and logging, signal handlers, the thread hook, warning filters,
environment variables, the GC freeze, the working folder) is put back after each call.

Bad input raises ``ConfigError`` (a ``ValueError``) with the line the command line prints.
"""

import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import microtrain
from microtrain.errors import ConfigError, MicrotrainError, TrainingDiverged
from microtrain.process_state import contained, hydra_kept, tee_stderr
from microtrain.run.folder import hydra_value
from microtrain.runs import Run

PathLike = Union[str, os.PathLike]


def train(*overrides: str, run_dir: Optional[PathLike] = None, config_dir: Optional[PathLike] = None) -> Run:
    """Train one run, as ``python scripts/train.py <overrides>`` does, and return it.

    Without ``run_dir`` it goes where the command line's run would (``outputs/<date>/<time>``;
    a second run in the same second gets ``_1``, ``_2``, ...)."""
    extra = _search_path(config_dir)
    given = _given(_checked(overrides), "hydra.run.dir")  # resume=true, overwrite=true: the folder as named
    interpolated = given is not None and "${" in str(given)
    if interpolated:  # ${now:...}, ${model.name}: the folder Hydra names now (the run itself says why one cannot be resolved)
        given = _default_folder("run", overrides, extra) or given
    if given is not None and run_dir is not None and Path(run_dir).resolve() != given.resolve():
        raise ConfigError(f"hydra.run.dir={given} and run_dir={run_dir} name two folders: give one")
    if given is not None and run_dir is None and not interpolated:
        _run("train_main", [*overrides, *extra])
        return Run(given)
    folder = (
        Path(run_dir)
        if run_dir is not None
        else given
        if given is not None
        else _free(_default_folder("run", overrides, extra) or Path("outputs", "api"))
    )
    _run("train_main", [*(o for o in overrides if _given([o], "hydra.run.dir") is None), *extra, _set("hydra.run.dir", folder.absolute())])
    return Run(folder)


def sweep(*overrides: str, launcher: str = "stacked", sweep_dir: Optional[PathLike] = None, config_dir: Optional[PathLike] = None) -> Any:
    """A sweep (``scripts/train.py -m``): its summary as a pandas DataFrame, one row per job
    (its overrides, status, metrics and folder), best first; a job that failed is a row with its
    error (a sweep whose every job failed raises). ``launcher``: stacked (the default: jobs that
    differ only in hyper-parameters train as one model), basic, joblib, ..."""
    import pandas as pd

    extra = _search_path(config_dir)
    given = _given(_checked(overrides), "hydra.sweep.dir")
    if given is not None and "${" in str(given):  # ${now:...}: the folder Hydra names now
        given = _default_folder("sweep", [o for o in overrides if o.startswith("hydra.sweep.dir=")], extra) or given
    if given is not None and sweep_dir is not None and Path(sweep_dir).resolve() != given.resolve():
        raise ConfigError(f"hydra.sweep.dir={given} and sweep_dir={sweep_dir} name two folders: give one")
    folder = (
        Path(sweep_dir)
        if sweep_dir is not None
        else given
        if given is not None
        else _free(_default_folder("sweep", [], extra) or Path("multirun", "api"))
    )
    chosen = _given(overrides, "hydra/launcher")
    if chosen is not None and str(chosen) != launcher:
        raise ConfigError(f"hydra/launcher={chosen} and launcher={launcher!r} name two launchers: give launcher={str(chosen)!r}")
    mine = [o for o in overrides if _given([o], "hydra.sweep.dir") is None and _given([o], "hydra/launcher") is None]
    _run("train_main", ["-m", f"hydra/launcher={launcher}", *mine, *extra, _set("hydra.sweep.dir", folder.absolute())], some_failed=True)
    summary = folder / "summary.csv"
    if not summary.is_file():
        raise MicrotrainError(f"the sweep wrote no {summary}; see the jobs' train.log files in {folder}")
    return pd.read_csv(summary, keep_default_na=False, na_values=[""]).drop(columns=["best"], errors="ignore")


def load(folder: PathLike) -> Run:
    """A finished run folder (made here or by the command line)."""
    path = Path(folder)
    if not (path / "metrics.json").is_file() and not (path / "config.yaml").is_file():
        raise ConfigError(f"{path} is not a run folder (no metrics.json or config.yaml); give the folder a run wrote")
    return Run(path)


def explain_step(*overrides: str, config_dir: Optional[PathLike] = None) -> Any:
    """One training step explained, as ``scripts/explain_step.py`` computes it: the loss, each
    gradient (checked against finite differences and the closed form where one exists), the
    update, and ``.chain``, the backward pass layer by layer. Nothing is written."""
    from microtrain.explain.step import explain_step as explain

    cfg = compose("explain", _checked(overrides), config_dir)
    given = _given(overrides, "hydra.run.dir")
    with contained():
        try:
            if given is not None:  # a run's folder: that run's own first step, as explain_step.py explains it
                from microtrain.explain.step import config_in_folder

                split = {"task": [o for o in overrides if not o.startswith("hydra")], "hydra": [o for o in overrides if o.startswith("hydra")]}
                cfg = config_in_folder(cfg, given, split, print)
            return explain(cfg)
        except MicrotrainError as err:
            raise _as_config_error(err) from None
        except (ArithmeticError, RuntimeError, ValueError) as err:  # optimizer.lr=1e300: torch's words, as the command line's one line
            from microtrain.console import one_line

            raise ConfigError(one_line(err)) from None


def compose(config_name: str, overrides: Sequence[str] = (), config_dir: Optional[PathLike] = None) -> Any:
    """The config ``scripts/<config_name>.py`` would run with these overrides (its ``hydra`` node left out)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from microtrain.config.overrides import outside_a_job

    try:
        with hydra_kept(), initialize_config_module("microtrain.conf", version_base="1.3"):
            return hydra_compose(config_name, overrides=[*overrides, *_search_path(config_dir)])
    except Exception as err:  # noqa: BLE001 -- Hydra's composition errors: the command line's one line
        message = outside_a_job(err, config_name)[0]
        raise ConfigError(
            _in_python(message) if config_name == "train" else message.replace("which only train.py runs: give one value", "so give one value")
        ) from None


def _as_config_error(err: MicrotrainError) -> MicrotrainError:
    return ConfigError(_in_python(str(err))) if not isinstance(err, ValueError) or _in_python(str(err)) != str(err) else err


def _in_python(message: str) -> str:
    """The command line's words for what to do, in Python's."""
    for words, python in [
        ("so add -m (or give one value)", "so call sweep() (or give one value)"),
        ("choose another hydra.sweep.dir", "choose another sweep_dir"),
        ("choose another hydra.run.dir", "choose another run_dir"),
    ]:
        message = message.replace(words, python)
    return message


def _search_path(config_dir: Optional[PathLike]) -> list[str]:
    """Your own config folder, searched before microtrain's (a group option or a recipe of yours)."""
    if config_dir is None:
        return []
    folder = Path(config_dir).absolute()
    if not folder.is_dir():
        raise ConfigError(f"config_dir={folder} is not a folder; give the folder that holds your config groups")
    return [f"hydra.searchpath=[{hydra_value('file://' + folder.as_posix())}]"]


def _default_folder(kind: str, overrides: Sequence[str], extra: list[str]) -> Optional[Path]:
    """Where the command line would put this run or sweep (``hydra.run.dir``, ``hydra.sweep.dir``,
    resolved), now; ``overrides`` may not sweep (a sweep's: only its ``hydra.sweep.dir``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    plain = [o for o in overrides if not o.startswith("hydra/")]
    try:
        with hydra_kept(), initialize_config_module("microtrain.conf", version_base="1.3"):
            cfg = hydra_compose("train", overrides=[*plain, *extra], return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.choices.model} resolves as in the run (hydra_kept puts it back)
            return Path(str(OmegaConf.select(cfg, f"hydra.{kind}.dir")))
    except Exception:  # noqa: BLE001 -- a bad override: the run itself says what is wrong, in its one line
        return None


def _checked(overrides: Sequence[Any]) -> Sequence[str]:
    """Each override a string, as one word of the command line (``"optimizer.lr=0.1"``)."""
    for override in overrides:
        if not isinstance(override, str):
            unpack = " (unpack a list with *)" if isinstance(override, (list, tuple)) else ""
            raise ConfigError(f"{override!r} is not an override: give each as a string, like train('model=mlp', 'optimizer.lr=0.1'){unpack}")
        if override.startswith("-"):
            raise ConfigError(f"{override} is a command-line flag, not an override: give overrides only (sweep() runs a sweep itself)")
    return overrides


def _given(overrides: Sequence[str], key: str) -> Optional[Path]:
    """The folder an override names for ``key`` (``hydra.run.dir=...``), quotes removed, or None."""
    for override in overrides:
        if override.startswith(f"{key}="):
            return Path(override.split("=", 1)[1].strip("'\""))
    return None


def _free(folder: Path) -> Path:
    """``folder``, or ``folder_1``, ``folder_2``, ... when a run is there already (two calls in one second)."""
    candidate, number = folder, 0
    while candidate.exists() and any(candidate.iterdir()):
        number += 1
        candidate = folder.with_name(f"{folder.name}_{number}")
    return candidate


def _set(key: str, value: Any) -> str:
    """``key=value`` as Hydra reads it from a program's arguments (no shell between)."""
    return f"{key}={hydra_value(str(value))}"


def _run(main: str, args: list[str], some_failed: bool = False) -> None:
    """The command ``microtrain.cli.<main>`` with these arguments, in this process; its error line
    raised. ``some_failed``: a sweep some of whose jobs failed (exit 1) returns, its summary says which."""
    errors = io.StringIO()
    microtrain.restart_clock()  # the command starts now, not when this process imported microtrain (its first call)
    with contained(), tee_stderr(errors):
        from microtrain import cli  # inside: its first import pauses and then freezes the garbage collector

        sys.argv = ["microtrain", *args]
        try:
            getattr(cli, main)()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    if code == 0:
        return
    lines = [line for line in errors.getvalue().splitlines() if line.startswith("error: ")]
    message = _in_python(lines[-1].removeprefix("error: ") if lines else f"the command exited with status {code}")
    if some_failed and code == 1 and "jobs failed or were refused" in message:
        return
    if code in (130, 143):
        raise KeyboardInterrupt(message)
    if code == 2:
        raise ConfigError(message)
    if "training diverged" in message:
        raise TrainingDiverged(message)
    raise MicrotrainError(message)
