"""At the end of a Hydra multirun: one row per job in summary.csv and summary.md at the sweep root.

Registered as a Hydra callback in conf/train.yaml, so it runs after every launcher and sweeper
(basic, joblib, submitit, Optuna) once all jobs have finished, failed ones included.
"""

import csv
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from microtrain.run import folder as run_folder

# rich and yaml are imported where used: Hydra builds this callback at every start, sweep or not.

COLUMNS = ["best", "overrides", "status", "train_loss", "val_loss", "test_loss", "test_r2", "test_acc", "error", "folder"]


def objective(metrics: dict[str, Any], name: str) -> tuple[str, float]:
    """(name, value) of the optimized metric ``optimize.metric``, where auto = val_loss, else train_loss."""
    if name == "auto":
        name = "val_loss" if metrics.get("val_loss") is not None else "train_loss"
    value = metrics.get(name)
    return name, float(value) if isinstance(value, (int, float)) else math.nan


def sweeper_direction(mode: str) -> str:
    """``optimize.mode`` as Optuna's study direction (``conf/hparams_search/optuna*.yaml``), so a
    search maximises val_acc when the summary ranks it highest first."""
    directions = {"min": "minimize", "max": "maximize"}
    if mode not in directions:
        raise ValueError(f"optimize.mode={mode} must be min or max")
    return directions[mode]


def collect(
    sweep_dir: Path, optimize: Any, hidden_keys: tuple[str, ...] = (), only: Optional[set[Path]] = None, refused: frozenset[Path] = frozenset()
) -> list[dict[str, Any]]:
    """A row per job folder (one with .hydra/overrides.yaml), of the folders ``only`` when given
    (this sweep's jobs: an earlier sweep into the same folder left others); ``hidden_keys`` are
    left out of its overrides. ``refused``: this sweep's jobs that ended with an infinite
    objective; one whose folder reads ok kept an earlier run there, which is not this sweep's."""
    import yaml

    rows = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        folder = overrides_file.parent.parent
        if only is not None and folder.resolve() not in only:
            continue
        overrides = [o for o in yaml.safe_load(overrides_file.read_text()) or [] if o.split("=")[0].lstrip("+~") not in hidden_keys]
        metrics_file = folder / run_folder.METRICS
        try:
            metrics = (
                json.loads(metrics_file.read_text())
                if metrics_file.exists()
                else {"status": "failed", "error": "the job ended without writing metrics.json"}
            )
        except (OSError, ValueError) as err:  # damaged (cut short, edited): the job's row says so, the others' summary is written
            metrics = {"status": "failed", "error": f"{metrics_file} cannot be read ({type(err).__name__})"}
        if folder.resolve() in refused and (metrics.get("status") == "ok" or not metrics_file.exists()):  # or a run still going there
            metrics = {"status": "refused", "error": "refused (its error line above); its folder keeps an earlier run"}
        name, value = objective(metrics, optimize.metric)
        row = {key: metrics.get(key) for key in [*COLUMNS, name] if key in metrics}
        rows.append(row | {"overrides": " ".join(overrides) or "(none)", "folder": str(folder), "objective": value, "metric": name})
    return rows


def rank(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Finished jobs by the optimized metric (best first), then diverged and failed ones."""
    sign = -1 if mode == "max" else 1
    key = lambda r: (r.get("status") != "ok" or math.isnan(r["objective"]), sign * r["objective"] if not math.isnan(r["objective"]) else 0)  # noqa: E731
    rows = sorted(rows, key=key)
    for i, row in enumerate(rows):
        row["best"] = "★" if i == 0 and row.get("status") == "ok" else ""
    return rows


def with_metric(columns: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """The columns, and the optimized metric after status when it is none of them (val_acc)."""
    metric = rows[0]["metric"] if rows else None
    if metric is None or metric in columns:
        return columns
    at = columns.index("status") + 1
    return [*columns[:at], metric, *columns[at:]]


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    columns = with_metric(COLUMNS, rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    run_folder.write_text_atomic(sweep_dir / "summary.csv", buffer.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    run_folder.write_text_atomic(sweep_dir / "summary.md", "\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def print_summary(rows: list[dict[str, Any]], sweep_dir: Path, console: Optional[Any] = None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # values as they are: rich would read 'data.exclude=[id,label]' as markup and drop it

    metric = rows[0]["metric"] if rows else "metric"
    table = Table(title=Text(f"sweep {sweep_dir}: {len(rows)} jobs, best {metric} first"))
    columns = with_metric(["best", "overrides", "status", "train_loss", "val_loss", "test_loss"], rows)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(_cell(row.get(c))) for c in columns))
    # a log file or a pipe gets a wide table rather than rich's 80 columns
    console = console or Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    console.print(table)
    for row in rows:
        if row.get("error"):
            console.print(f"{row['status']}: {row['overrides']}: {row['error']}", markup=False)
    console.print(f"summary: {sweep_dir / 'summary.csv'}, {sweep_dir / 'summary.md'}", markup=False)
    console.print(f"open TensorBoard: {run_folder.tensorboard_command(sweep_dir)}", markup=False)


started: Optional[Path] = None  # the sweep folder of this process's sweep: a sweep refused at its start removes it
# the job folders of this process's sweep, as its sweeper got them back from the launcher
# (hydra/sweeper=microtrain, the default); None: every job folder of the sweep folder (Optuna's)
launched: Optional[set[Path]] = None
refused: frozenset[Path] = frozenset()  # of those, the ones that ended with an infinite objective (ComposedSweeper)


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global started, launched, refused
        started, launched, refused = Path(config.hydra.sweep.dir), None, frozenset()
        from microtrain.run import interrupt

        interrupt.start_sweep(started)  # SIGTERM to this process reaches the launcher's worker processes too
        print(f"sweep folder: {config.hydra.sweep.dir}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global started
        started = None
        sweep_dir = Path(config.hydra.sweep.dir)
        optimize = config.optimize
        hidden = tuple(config.hydra.job.config.override_dirname.exclude_keys)
        rows = rank(collect(sweep_dir, optimize, hidden, launched, refused), optimize.mode)
        from microtrain.run import interrupt

        stop = os.environ.pop(interrupt.STOP_FILE, None)
        if stop:
            Path(stop).unlink(missing_ok=True)
        if rows and all(row["status"] == "refused" for row in rows) and interrupt.received is None:  # nothing ran: the earlier summary stays
            message = f"every job of the sweep was refused (their errors above): {sweep_dir} keeps its earlier runs and summary as they were"
            sys.exit(_failed(message, 2))
        write_summary(sweep_dir, rows)
        from microtrain.monitor.hparams import write_sweep_experiment  # imports torch: only at a sweep's end

        write_sweep_experiment([Path(row["folder"]) for row in rows])
        print_summary(rows, sweep_dir)
        if interrupt.received is not None:  # the summary is written; the sweep still ends as interrupted
            print(
                f"the sweep was interrupted; finish it with the same command and resume=true {run_folder.hydra_override('hydra.sweep.dir', sweep_dir)}",
                flush=True,
            )
            sys.exit(128 + interrupt.received)
        failed = [row for row in rows if row["status"] in ("failed", "refused")]
        if failed:  # the other jobs ran and the summary holds them; a script running the sweep learns of the rest
            sys.exit(_failed(f"{len(failed)} of {len(rows)} jobs failed or were refused (their errors above)", 2 if len(failed) == len(rows) else 1))


def _failed(message: str, code: int) -> int:
    from microtrain.console import error_console

    error_console.print(f"error: {message}", markup=False, soft_wrap=True)
    return code
