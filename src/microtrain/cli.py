"""The commands: ``microtrain-train`` (also ``python -m microtrain`` and ``scripts/train.py``),
``microtrain-explain``, ``microtrain-predict`` and ``microtrain-report``. Each composes its config
from the configs shipped in the package (``pkg://microtrain.conf``; your own with
``--config-dir``), runs, and turns bad input into one line."""

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from microtrain import usage
from microtrain.console import console, error_console, one_line, print_result, print_start, quiet_libraries, start_up_collection_paused
from microtrain.run import folder as run_folder
from microtrain.config.overrides import resolve, unresolvable
from microtrain.errors import ConfigError, FolderBusy, Interrupted, MicrotrainError, TrainingDiverged, WriteFailed
from microtrain.memory import keep_freed_memory
from microtrain.sweep_summary import objective, sweeper_direction


def train_command(cfg: DictConfig) -> float:
    """Train one Hydra job; returns its objective for the sweeper (``optimize.metric``), the worst
    for ``optimize.mode`` when it failed: -inf when maximising (+inf made Optuna's best a failed trial)."""
    value = _train_job(cfg)
    maximising = OmegaConf.select(cfg, "optimize.mode", default=None, throw_on_resolution_failure=False) == "max"
    return -value if maximising and value == float("inf") else value


def _train_job(cfg: DictConfig) -> float:
    """One job trained: its objective, or +inf when it failed, diverged or was interrupted."""
    with start_up_collection_paused():
        from lightning.fabric.plugins.environments import SLURMEnvironment  # deferred: importing Lightning takes seconds

        from microtrain import device
        from microtrain.config import schema  # imports torch: inside the pause too
        from microtrain.training import train
        from microtrain.engine.trainer import trainer_arguments

    quiet_libraries()  # after the import, which sets Lightning's log level
    logging.raiseExceptions = False  # train.log on a full disk: the run's one line says so, not "--- Logging error ---"
    # TensorBoard's writer thread re-raises a failed write (a full disk) in the training thread,
    # which ends the run with one line; its own copy goes to train.log, not to the terminal.
    threading.excepthook = lambda args: logging.getLogger("microtrain").info(
        "in thread %s", args.thread.name if args.thread else "?", exc_info=cast(Any, (args.exc_type, args.exc_value, args.exc_traceback))
    )

    from microtrain.run import interrupt, lock
    from microtrain.run.resume import plan_resume

    interrupt.install()  # from here a signal ends the run with a status, never a traceback
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    overrides = cast("list[str]", OmegaConf.to_container(HydraConfig.get().overrides.task))  # as typed: list() would resolve ${...} in them
    changes: list[str] = []
    # Hydra made the folder just now (or it was empty): a run refused before training removes it again
    fresh = not multirun and run_dir.is_dir() and not any(run_dir.iterdir())
    waiting: list[bool] = []  # [True] while an earlier run there waits for begin() to replace it: nothing may touch it
    try:
        schema.check_run_mode(cfg)  # resume and overwrite decide what is read: checked first
        lock.check_free(run_dir)  # a run still going there: said first, not "a run that never finished"
        if multirun and interrupt.stop_signal() is not None:
            return _interrupted(Interrupted("not started: the sweep was interrupted", cast(int, interrupt.stop_signal())), run_dir, fresh=True)
        if cfg.resume:
            cfg, changes, finished = plan_resume(cfg, run_dir, overrides, multirun, console.print)
            if finished is not None:
                return finished
        # Outside SLURM (which starts a task per rank itself), ddp re-runs this command in each rank: each would
        # start a sweep of its own, and microtrain.api's command (argv[0] "microtrain") is no script to re-run.
        strategy = device.spawned(cfg.trainer) if (multirun or sys.argv[0] == "microtrain") and not SLURMEnvironment.detect() else None
        if strategy:
            console.print(f"note: trainer.strategy={cfg.trainer.strategy} {'inside a sweep' if multirun else 'from Python'} runs as {strategy}")
            cfg.trainer.strategy = strategy
        launcher = HydraConfig.get().runtime.choices.get("hydra/launcher")
        if not multirun and launcher not in (None, "basic"):  # Hydra itself ignores it without a word
            console.print(f"note: hydra/launcher={launcher} launches the jobs of a sweep (-m); without -m this is one run")
        resolve(cfg)  # config.yaml holds the values used, not ${...} that resume or predict would read again
        schema.check(cfg)
        trainer_arguments(cfg.trainer)  # a Trainer argument Lightning does not have: one line, before the tree
        first_rank = not int(os.environ.get("LOCAL_RANK", 0)) and not int(os.environ.get("NODE_RANK", 0))
        # (a DDP child rank joins its first rank's run, which has written into the folder already)
        earlier = None if cfg.resume or not first_rank else run_folder.earlier_run(run_dir)
        if earlier and not cfg.get("overwrite"):
            folder_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
            raise ConfigError(f"{run_dir} holds {earlier}; resume=true continues it, overwrite=true replaces it, or choose another {folder_key}")
        waiting.extend([True] if earlier else [])
        run_folder.refuse_links(run_dir)
        lock.acquire(run_dir)  # every check above ran before this folder's first byte is written

        def begin() -> None:
            """Once the run is built (its data, model, optimizer and Trainer: their checks passed),
            before its first write: an overwrite=true refused by a later check keeps the earlier run."""
            if waiting:
                waiting.clear()
                run_folder.clear_run(run_dir)  # overwrite=true: no stale checkpoint or event file stays
            if not cfg.resume and first_rank:  # the other ranks of a DDP run write nothing of their own
                run_folder.write_hydra_record(run_dir, HydraConfig.instance().cfg, cfg)
            log = logging.getLogger("microtrain")
            log.info("%s %s (pid %d)", "resumed" if cfg.resume else "started", " ".join(overrides) or "(no overrides)", os.getpid())
            for change in changes:
                log.info("resume: %s", change)

        for change in changes:
            console.print(f"resume: {change}")
        print_start(cfg)
        interrupt.check()
        result = train(cfg, run_dir, resume_changes=changes, begin=begin)
    except Interrupted as err:
        return _interrupted(err, run_dir, keep=bool(waiting))
    except KeyboardInterrupt:
        return _interrupted(Interrupted("interrupted by SIGINT", signal.SIGINT), run_dir, keep=bool(waiting))
    except MicrotrainError as err:
        return _fail(err, run_dir, overrides_record=not cfg.resume, fresh=fresh)
    except InterpolationResolutionError as err:  # optimizer.lr=${oc.env:UNSET}: bad input, one line
        resuming = OmegaConf.select(cfg, "resume", throw_on_resolution_failure=False) is True  # resume=${oc.env:UNSET} too
        return _fail(unresolvable(err), run_dir, overrides_record=not resuming, fresh=fresh)
    except Exception as err:  # noqa: BLE001 -- anything unexpected: one line here, the traceback in train.log
        # at INFO: the job log's file takes INFO, its console only warnings (hydra/job_logging=quiet)
        if not waiting:
            logging.getLogger("microtrain").info("unexpected error", exc_info=True)
        return _fail(err, run_dir, overrides_record=not cfg.resume, keep=bool(waiting))
    finally:
        lock.release(run_dir)
        if not multirun:
            interrupt.restore()  # a sweep keeps noting signals between its jobs
    metrics = result.metrics
    from microtrain.run.checksums import weights_digest

    # every rank logs its final weights' checksum: ranks that disagree show in their logs
    digest = weights_digest(result.module.model.state_dict()) if result.module is not None else "n/a"
    logging.getLogger("microtrain").info("final weights sha256 %s (rank %s)", digest, os.environ.get("NODE_RANK", "0"))
    if result.is_global_zero:
        print_result(run_dir, metrics, result.best_checkpoint, run_folder.tensorboard_command(run_dir))
    return objective(metrics, cfg.optimize.metric)[1]


def _interrupted(err: "Interrupted", run_dir: Path, fresh: bool = False, keep: bool = False) -> float:
    """A signal: one line, "status": "interrupted" in metrics.json (``keep``: an earlier run there
    not yet replaced stays as it is), exit 128 + the signal (143, 130)."""
    if keep:
        error_console.print(f"error: {err}; {run_dir} keeps its earlier run", markup=False, soft_wrap=True)
    elif run_dir.is_dir():
        if fresh:
            run_folder.write_hydra_record(run_dir, HydraConfig.instance().cfg, None)
        last = run_dir / run_folder.CHECKPOINTS / "last.ckpt"
        payload = {"status": "interrupted", "signal": signal.Signals(err.signum).name, "error": str(err)}
        if last.is_file():
            payload["resume"] = f"python scripts/train.py resume=true {run_folder.hydra_override('hydra.run.dir', run_dir)}"
        run_folder.write_json_atomic(run_dir / run_folder.METRICS, payload)
        resume = f"; resume with: {payload['resume']}" if not fresh and last.is_file() else ""
        error_console.print(f"error: {err}{resume}", markup=False, soft_wrap=True)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return float("inf")  # the sweep stops launching (interrupt.received), its summary says so
    sys.exit(128 + err.signum)


def _fail(err: Exception, run_dir: Path, overrides_record: bool = True, fresh: bool = False, keep: bool = False) -> float:
    """One line on stderr; a record in metrics.json; exit non-zero, or carry on inside a sweep.
    A single run refused before it trained (``fresh``: in a folder Hydra just made) leaves no folder;
    ``keep``: the folder's earlier run (overwrite=true, not yet replaced) stays as it is."""
    if isinstance(err, OSError) and err.errno in run_folder.DISK_ERRORS:  # a full or read-only disk: no traceback to keep
        err = run_folder.write_failed(Path(err.filename) if err.filename else run_dir, err)
    status = "diverged" if isinstance(err, TrainingDiverged) else "failed"
    where = f"{run_dir} keeps its earlier run" if keep else f"the traceback is in {run_dir / 'train.log'}"
    message = str(err) if isinstance(err, MicrotrainError) else f"{one_line(err)} (unexpected: {where})"
    refused_before_training = fresh and status == "failed" and isinstance(err, MicrotrainError) and not isinstance(err, FolderBusy)
    if refused_before_training and not (run_dir / run_folder.CONFIG).exists():
        from microtrain.run import lock

        # what is in the folder is this run's own only if it holds the lock (a run it raced keeps its files)
        if lock.holds(run_dir) or not any(run_dir.iterdir()):
            lock.release(run_dir)
            run_folder.remove_unused(run_dir, (".lock", ".hydra", "train.log"))
            root = logging.getLogger()  # its train.log handler, never opened (delay): a later line in this process would open it there
            for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler) and h.baseFilename.startswith(f"{run_dir.absolute()}/")]:
                root.removeHandler(handler)
        error_console.print(f"error: {message}", markup=False, soft_wrap=True)
        sys.exit(2)
    metrics = run_dir / run_folder.METRICS
    # A job that trained in this folder owns it; bad input must not touch an earlier run's
    # results, nor the files of a run still going in it (the lock).
    holds_a_run = metrics.exists() or (run_dir / run_folder.CONFIG).exists() or (run_dir / "multirun.yaml").exists()  # or a sweep
    owns_folder = not keep and not isinstance(err, FolderBusy) and (status == "diverged" or not isinstance(err, MicrotrainError) or not holds_a_run)
    if run_dir.is_dir() and owns_folder and not isinstance(err, WriteFailed):  # a full disk takes no more writes
        try:
            if overrides_record and not (run_dir / ".hydra").is_dir():
                run_folder.write_hydra_record(run_dir, HydraConfig.instance().cfg, None)  # so a sweep's summary lists the job
            run_folder.write_json_atomic(metrics, {"status": status, "error": message})
        except (OSError, MicrotrainError):
            pass  # the one line below still says what went wrong
    error_console.print(f"error: {message}", markup=False, soft_wrap=True)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return float("inf")  # the sweep goes on; its summary marks this job
    sys.exit(2 if status == "failed" else 3)


def explain_command(cfg: DictConfig) -> None:
    """Explain one step of the configured training and write step.json into the run folder."""
    from microtrain.explain.step import config_in_folder, explain_step
    from microtrain.explain.printing import print_report

    quiet_libraries()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        cfg = config_in_folder(cfg, run_dir, cast("dict[str, list[str]]", OmegaConf.to_container(HydraConfig.get().overrides)), console.print)
        report = explain_step(cfg, run_dir)
    except (MicrotrainError, InterpolationResolutionError) as err:
        _fail(err if isinstance(err, MicrotrainError) else unresolvable(err), run_dir)
        return
    except Exception as err:  # noqa: BLE001 -- e.g. optimizer.lr=1e300: one line here, the traceback in the job's log
        logging.getLogger("microtrain").info("unexpected error", exc_info=True)
        log = run_dir / f"{HydraConfig.get().job.name}.log"
        error_console.print(f"error: {one_line(err)} (unexpected: the traceback is in {log})", markup=False, soft_wrap=True)
        sys.exit(2)
    print_report(report, console)
    console.print(f"\nstep.json: {run_dir / 'step.json'}")
    if not all(r.holds for r in report.rules.values() if r) or not all(c.passed for c in report.gradcheck):
        sys.exit(4)


CONFIGS = "pkg://microtrain.conf"  # conf/ of the source tree, installed as the package microtrain.conf
usage.register()  # the --help page's resolver (conf/train.yaml: hydra.help.template)
if not OmegaConf.has_resolver("microtrain_direction"):  # Optuna's direction from optimize.mode (conf/hparams_search/optuna*.yaml)
    OmegaConf.register_new_resolver("microtrain_direction", sweeper_direction)


def train_main() -> None:
    """``microtrain-train [group=option ...] [key=value ...]``: train one run, or a sweep with ``-m``."""
    from hydra_plugins.microtrain_stacked import register

    keep_freed_memory()  # fewer page faults for a stacked group's activations (microtrain.memory)
    register()
    run_hydra("train", train_command)


def explain_main() -> None:
    """``microtrain-explain [the same overrides as microtrain-train]``: explain one step."""
    run_hydra("explain", explain_command)


def predict_main() -> None:
    """``microtrain-predict run=<run folder> data.path=<csv or npz>``: predict with a finished run."""
    from microtrain.predict import predict_command

    run_hydra("predict", predict_command)


def run_hydra(config_name: str, task: Callable[[DictConfig], Any]) -> None:
    """``hydra.main`` over the shipped configs, with Hydra's errors as one line and exit 2
    (a typo names the closest key or option), and quiet when its output is cut (``| head``).

    Hydra prints its own 5-10 line messages unless HYDRA_FULL_ERROR is set; with it set here,
    it raises them instead, and they are turned into one line below. A user who sets it gets
    Hydra's full traceback, as Hydra documents."""
    if config_name != "train" and {"-m", "--multirun"} & set(sys.argv[1:]):  # Hydra would look for the sweeper that train.py registers
        error_console.print("error: -m runs a sweep, which only train.py does: drop -m", markup=False)
        sys.exit(2)
    ours = "HYDRA_FULL_ERROR" not in os.environ
    if ours:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra.main(config_path=CONFIGS, config_name=config_name, version_base="1.3")(task)()
    except BrokenPipeError:  # the reader went away (| head): no traceback, and none at exit's flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as err:  # noqa: BLE001 -- every error Hydra raises outside a job: one line
        if not ours:
            raise
        from microtrain.config.overrides import outside_a_job

        message, code = outside_a_job(err, config_name)
        error_console.print(f"error: {message}", markup=False, soft_wrap=True)
        sys.exit(code)
    finally:
        if ours:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def report_main() -> None:
    """``microtrain-report <run or sweep folder>``: draw report.png from its TensorBoard logs."""
    if len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help"):
        print(cast(str, report_main.__doc__).strip("`").replace("``", ""))
        sys.exit(0)
    try:
        if len(sys.argv) != 2:
            raise ConfigError(f"give one run or sweep folder, not {len(sys.argv) - 1} arguments: microtrain-report <folder>")
        from microtrain.report import write_report

        console.print(f"report: {write_report(sys.argv[1])}")
    except MicrotrainError as err:
        error_console.print(f"error: {err}", markup=False, soft_wrap=True)
        sys.exit(2)
